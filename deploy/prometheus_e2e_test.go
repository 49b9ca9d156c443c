package deploy_test

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// e2eLoad bounds the end-to-end test's load: it runs for loadDuration or
// until each worker has sent loadPerWorkerMax redemptions.
const (
	loadWorkers      = 4
	loadDuration     = 12 * time.Second
	loadPerWorkerMax = 5000
	promWaitMax      = 30 * time.Second
)

// TestPrometheusScrapesGateway protects the whole metrics path end to end:
// a real Prometheus (loopback, random port, temporary storage) loads the
// alert rules, scrapes a real gateway's operations listener every second
// while tills redeem, and answers through its HTTP API with a request rate,
// a p99 latency from the classic buckets, and a count of approved
// redemptions equal to what the clients saw.
func TestPrometheusScrapesGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Prometheus and drives load for ~20 s; skipped with -short")
	}
	prom := needTool(t, "prometheus")
	g := startGateway(t)
	g.setup()
	vouchers := g.vouchers(0, loadWorkers*4)

	addr := startPrometheus(t, prom, g.ops)
	waitFor(t, "Prometheus to scrape the gateway", func() bool {
		v, ok := promQuery(t, addr, `up{job="azyq"}`, time.Time{})
		return ok && v == 1
	})

	// Drive redemptions of 1 tenge from several tills at once.
	var approved atomic.Int64
	deadline := time.Now().Add(loadDuration)
	var wg sync.WaitGroup
	for w := range loadWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < loadPerWorkerMax && time.Now().Before(deadline); i++ {
				if g.redeem(vouchers[(w*4+i)%len(vouchers)], 100) == 201 {
					approved.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	loadEnd := time.Now()
	if approved.Load() == 0 {
		t.Fatal("no redemption approved under load")
	}

	// The scrape after the load must carry exactly the approvals the
	// clients saw (replays answer 201 too but are not decided again).
	const approvedQuery = `sum(azyq_redemptions_total{job="azyq", outcome="approved"})`
	var seen float64
	waitFor(t, "Prometheus to see every approval", func() bool {
		seen, _ = promQuery(t, addr, approvedQuery, time.Time{})
		return seen == float64(approved.Load())
	}, func() string { return fmt.Sprintf("Prometheus has %g, clients saw %d", seen, approved.Load()) })

	// Rate and p99 over the last seconds of the load.
	at := loadEnd.Add(-time.Second)
	rate, ok := promQuery(t, addr,
		`sum(rate(azyq_http_requests_total{job="azyq", route="/v1/redemptions"}[8s]))`, at)
	if !ok || rate <= 0 {
		t.Fatalf("redemption rate from Prometheus = %g (%v), want > 0", rate, ok)
	}
	p99, ok := promQuery(t, addr, `histogram_quantile(0.99, sum by (le) (rate(`+
		`azyq_http_request_duration_seconds_bucket{job="azyq", route="/v1/redemptions"}[8s])))`, at)
	if !ok || math.IsNaN(p99) || p99 <= 0 || p99 > 2.5 {
		t.Fatalf("redemption p99 from Prometheus = %g (%v), want a latency within the buckets", p99, ok)
	}
	fsyncs, _ := promQuery(t, addr, `sum(rate(azyq_pebble_wal_fsync_duration_seconds_count{job="azyq"}[8s]))`, at)
	t.Logf("approved %d; Prometheus: %.0f redemption requests/s (approvals and replays), p99 %.2f ms, %.0f WAL fsyncs/s",
		approved.Load(), rate, p99*1000, fsyncs)
}

// startPrometheus runs Prometheus on a free loopback port with a generated
// configuration that scrapes ops every second and loads the alert rules.
func startPrometheus(t *testing.T, bin, ops string) string {
	t.Helper()
	dir := t.TempDir()
	rules, err := filepath.Abs(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	target := ops[len("http://"):]
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: azyq
    static_configs:
      - targets: [%q]
`, rules, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	logFile, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logFile.Name())
			t.Logf("prometheus log:\n%s", out)
		}
	})
	waitFor(t, "Prometheus to be ready", func() bool {
		res, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	})
	return addr
}

// promQuery evaluates an instant query (at the given time, or now) and
// returns the value of its single sample; ok is false without one.
func promQuery(t *testing.T, addr, q string, at time.Time) (float64, bool) {
	t.Helper()
	params := url.Values{"query": {q}}
	if !at.IsZero() {
		params.Set("time", strconv.FormatFloat(float64(at.UnixNano())/1e9, 'f', 3, 64))
	}
	res, err := http.Get("http://" + addr + "/api/v1/query?" + params.Encode())
	if err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	defer res.Body.Close()
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		t.Fatalf("query %q: cannot decode the answer: %v", q, err)
	}
	if out.Status != "success" {
		t.Fatalf("query %q: %s", q, out.Error)
	}
	if len(out.Data.Result) != 1 {
		return 0, false
	}
	s, _ := out.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// waitFor polls cond until it holds, failing after promWaitMax with what
// and, when given, the last state.
func waitFor(t *testing.T, what string, cond func() bool, state ...func() string) {
	t.Helper()
	for end := time.Now().Add(promWaitMax); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if cond() {
			return
		}
	}
	last := ""
	for _, s := range state {
		last = ": " + s()
	}
	t.Fatalf("timed out after %v waiting for %s%s", promWaitMax, what, last)
}
