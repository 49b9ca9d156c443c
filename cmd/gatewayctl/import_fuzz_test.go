package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2/vfs"

	"azyq/domain"
	"azyq/gateway"
	"azyq/ledger"
)

// FuzzReadRegistry protects the registry import against whatever a
// spreadsheet export holds: readRegistry never panics or fails on readable
// input, every row it accepts meets the issuance rules with no family
// twice, and — checked against a real gateway — the rows it accepts are
// exactly what POST /v1/issuances accepts, so a file that passes the
// check never fails a whole chunk at the gateway. Seeds are under
// testdata/fuzz/FuzzReadRegistry: headers, BOM and CRLF, quoting,
// duplicates, limits, control characters and malformed CSV.
func FuzzReadRegistry(f *testing.F) {
	gw := newFzIssuer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		rows, rejected, err := readRegistry(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("cannot read %q: %v", data, err)
		}
		seen := map[string]bool{}
		for _, r := range rows {
			if !ledger.ValidID(r.FamilyID) || r.Members < 1 || r.Members > 30 || len(r.City) > 64 ||
				!utf8.ValidString(r.City) || seen[r.FamilyID] || r.line < 1 {
				t.Fatalf("accepted an invalid or repeated row %+v from %q", r, data)
			}
			seen[r.FamilyID] = true
		}
		for _, r := range rejected {
			if r.reason == "" {
				t.Fatalf("rejection without a reason on line %d of %q", r.line, data)
			}
		}
		if len(rows) > 0 {
			gw.issue(t, rows)
		}
	})
}

// fzIssuer is a real gateway over an in-memory ledger, to post accepted
// rows to.
type fzIssuer struct {
	base   string
	client *http.Client
	month  domain.Month
}

const fzIssuerAdmin = "fuzz-import-admin"

func newFzIssuer(f *testing.F) *fzIssuer {
	now := func() time.Time { return time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC) }
	led, err := ledger.Open(ledger.Config{Dir: "fuzz", FS: vfs.NewMem(), Programme: domain.DefaultProgramme(), Now: now})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { led.Close() })
	secret := sha256.Sum256([]byte("fuzz import"))
	qr, err := gateway.NewQRKeys([]gateway.QRKey{{ID: 1, Secret: secret[:], Created: now()}}, time.Minute, now)
	if err != nil {
		f.Fatal(err)
	}
	srv, err := gateway.New(gateway.Config{Ledger: led, QR: qr, AdminToken: fzIssuerAdmin})
	if err != nil {
		f.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go srv.Serve(ln)
	srv.SetReady(true)
	f.Cleanup(func() { srv.Shutdown(f.Context()) })
	return &fzIssuer{base: "http://" + ln.Addr().String(), client: &http.Client{Timeout: 30 * time.Second},
		month: domain.MakeMonth(2026, time.December)}
}

// issue posts rows as the importer does and requires the gateway to
// accept every one of them.
func (g *fzIssuer) issue(t *testing.T, rows []registryRow) {
	req := struct {
		Month    string   `json:"month"`
		Families []family `json:"families"`
	}{Month: g.month.String()}
	for _, r := range rows {
		req.Families = append(req.Families, r.family)
	}
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	hr, err := http.NewRequest("POST", g.base+"/v1/issuances", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	hr.Header.Set("Authorization", "Bearer "+fzIssuerAdmin)
	resp, err := g.client.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("the gateway refused rows the import accepted: %d %s\nbody %s", resp.StatusCode, data, body)
	}
	if _, err := checkIssuance(data, rows); err != nil {
		t.Fatalf("issuance answer does not match the rows: %v", err)
	}
}
