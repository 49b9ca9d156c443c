package loadtest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReportFromRecordedLatencies feeds known latencies through the
// recorder and checks the percentiles, rates and the three renderings: the
// table names every operation, the JSON reads back equal, the HTML is one
// self-contained page with its two plots and no external reference.
func TestReportFromRecordedLatencies(t *testing.T) {
	start := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	rec := NewRecorder(start)
	// 1000 redemptions over 10 s: 1..1000 µs, so p50 ≈ 500 µs, p99 ≈ 990 µs.
	for i := 1; i <= 1000; i++ {
		end := start.Add(time.Duration(i) * 10 * time.Millisecond)
		outcome := outcomeApproved
		if i%10 == 0 {
			outcome = "insufficient_funds"
		}
		rec.Record(KindRedeemAmount, end, time.Duration(i)*time.Microsecond, outcome)
	}
	rec.Record(KindBalance, start.Add(time.Second), 2*time.Millisecond, "unavailable")

	rep := &Report{Target: "127.0.0.1:1", Mode: "closed", Shape: "flat", Started: start}
	rep.Summarize(rec, 10*time.Second)
	rep.judge()

	if rep.Redemptions != 1000 || rep.RedemptionsPerSecond != 100 || rep.ApprovedPerSecond != 90 {
		t.Errorf("redemptions %d at %.1f/s, approved %.1f/s; want 1000, 100, 90",
			rep.Redemptions, rep.RedemptionsPerSecond, rep.ApprovedPerSecond)
	}
	if p := rep.Redemption.P50; p < 495 || p > 505 {
		t.Errorf("p50 %d µs, want about 500", p)
	}
	if p := rep.Redemption.P99; p < 985 || p > 995 {
		t.Errorf("p99 %d µs, want about 990", p)
	}
	if rep.Failures != 1 || rep.OK() {
		t.Errorf("failures %d, OK %t: the 503 must fail the run", rep.Failures, rep.OK())
	}
	if len(rep.Series) < 10 {
		t.Errorf("series of %d seconds, want at least 10", len(rep.Series))
	}

	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"redeem_amount", "balance_inquiry", "insufficient_funds=100", "PROBLEM"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}

	dir := t.TempDir()
	if err := rep.WriteJSON(filepath.Join(dir, "r.json")); err != nil {
		t.Fatal(err)
	}
	back, err := ReadReport(filepath.Join(dir, "r.json"))
	if err != nil {
		t.Fatal(err)
	}
	if back.Redemption.P99 != rep.Redemption.P99 || len(back.Series) != len(rep.Series) {
		t.Errorf("JSON round trip changed the report")
	}

	if err := rep.WriteHTML(filepath.Join(dir, "r.html")); err != nil {
		t.Fatal(err)
	}
	page, _ := os.ReadFile(filepath.Join(dir, "r.html"))
	html := strings.ReplaceAll(string(page), `xmlns="http://www.w3.org/2000/svg"`, "")
	if n := strings.Count(html, "<svg"); n != 2 || strings.Count(html, "</svg>") != 2 {
		t.Errorf("HTML has %d plots, want 2", n)
	}
	if strings.Contains(html, "http://") || strings.Contains(html, "https://") || strings.Contains(html, "<script") {
		t.Errorf("HTML refers outside itself")
	}
}

// TestShapeSurge pins the month-start shape: it peaks early and never
// drops to nothing.
func TestShapeSurge(t *testing.T) {
	if shapeFactor("flat", 0.5) != 1 {
		t.Errorf("flat shape is not flat")
	}
	peak := shapeFactor("surge", 0.1)
	if peak < 0.99 || shapeFactor("surge", 0) > 0.31 || shapeFactor("surge", 1) > 0.35 {
		t.Errorf("surge: start %.2f, peak %.2f, end %.2f", shapeFactor("surge", 0), peak, shapeFactor("surge", 1))
	}
}

// TestCheckLoopback keeps the load test off anything but this machine.
func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:8080": true, "localhost:80": true, "[::1]:8080": true,
		"10.0.0.1:8080": false, "example.com:80": false, "8080": false,
	} {
		if err := CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok %t", addr, err, ok)
		}
	}
}
