package main

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"azyq/domain"
	"azyq/ledger"
)

// seed puts a shop, a terminal and an active voucher with one redemption
// by basket and one refund into the gateway's ledger.
func (g *testGateway) seed() (ledger.VoucherID, *ledger.Redemption) {
	t := g.t
	t.Helper()
	bin, _ := domain.BINWithCheck("26014000123")
	_, err := g.led.PutStore(ledger.Store{ID: "S1", Name: "Shop", BIN: bin, City: "Pavlodar",
		BankBIC: "HSBKKZKX", IBAN: domain.IBANWithCheck("125", "KZT0000012345"), DiscountBP: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.led.AddTerminal("S1", "T1", sha256.Sum256([]byte("key"))); err != nil {
		t.Fatal(err)
	}
	out, err := g.led.Issue(domain.MakeMonth(2026, 12), []ledger.Family{{FamilyID: "F-1", Members: 4, City: "Pavlodar"}})
	if err != nil {
		t.Fatal(err)
	}
	id := out[0].Voucher.ID
	if _, err := g.led.Activate(id); err != nil {
		t.Fatal(err)
	}
	red, err := g.led.Redeem(&ledger.RedeemRequest{
		Token:   ledger.Token{Voucher: id, Nonce: 1, Expires: testNow.Add(time.Minute)},
		StoreID: "S1", TerminalID: "T1",
		Lines: []ledger.Line{{SKU: "4870001234567", Category: "sugar", Amount: 98_000},
			{SKU: "4870009999999", Amount: 55_000}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.led.Refund(&ledger.RefundRequest{Redemption: red.Seq, StoreID: "S1", TerminalID: "T1", Amount: 8_200}); err != nil {
		t.Fatal(err)
	}
	return id, red
}

// TestShow protects the inspection commands: a voucher and a redemption
// are printed with the values the gateway holds, --json passes the
// gateway's answer through, and unknown or malformed ids fail clearly.
func TestShow(t *testing.T) {
	g := startGateway(t, nil)
	id, red := g.seed()

	status, stdout, stderr := g.ctl(nil, "voucher", id.String())
	if status != exitOK {
		t.Fatalf("voucher: %d %s", status, stderr)
	}
	for _, want := range []string{id.String(), "F-1", "2026-12", "active",
		"1730000 tiyn = 17,300.00 KZT", "1650000 tiyn = 16,500.00 KZT", "2027-01-01T00:00:00+05:00"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("voucher output lacks %q:\n%s", want, stdout)
		}
	}

	status, stdout, _ = g.ctl(nil, "voucher", id.String(), "--json")
	var v voucherView
	if status != exitOK || json.Unmarshal([]byte(stdout), &v) != nil || v.Balance != 1_730_000-88_200+8_200 {
		t.Fatalf("voucher --json: %d %q", status, stdout)
	}

	rid := ledger.RedemptionID(red.Seq)
	status, stdout, stderr = g.ctl(nil, "redemption", rid)
	if status != exitOK {
		t.Fatalf("redemption: %d %s", status, stderr)
	}
	for _, want := range []string{rid, "S1", "T1", "approved", "88200 tiyn", "8200 tiyn",
		"lines (2)", "4870001234567", "sugar", "9800", "4870009999999"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("redemption output lacks %q:\n%s", want, stdout)
		}
	}

	for _, c := range []struct {
		args   []string
		status int
		msg    string
	}{
		{[]string{"voucher", "V0000009"}, exitProblem, "404 not_found"},
		{[]string{"redemption", ledger.RedemptionID(99)}, exitProblem, "404 not_found"},
		{[]string{"voucher", "nonsense"}, exitUsage, "not a voucher id"},
		{[]string{"redemption", "R1"}, exitUsage, "not a redemption id"},
		{[]string{"voucher"}, exitUsage, "exactly one id"},
		{[]string{"--token", "wrong", "voucher", id.String()}, exitProblem, "401 unauthenticated"},
		{[]string{"--addr", "http://127.0.0.1:1", "voucher", id.String()}, exitUsage, "cannot reach the gateway"},
		{[]string{"frobnicate"}, exitUsage, "unknown command"},
	} {
		status, _, stderr := g.ctl(nil, c.args...)
		if status != c.status || !strings.Contains(stderr, c.msg) {
			t.Errorf("%q: status %d, stderr %q; want %d with %q", c.args, status, stderr, c.status, c.msg)
		}
	}
}

// TestAuditCommand protects the offline audit as an operator runs it: on
// a stopped gateway's data directory (named as DATA or DATA/ledger) it
// prints the totals and exits 0; with a programme whose MRP differs from
// the one the vouchers were issued under it reports each voucher and
// exits 1; on a running gateway it refuses.
func TestAuditCommand(t *testing.T) {
	prog, err := domain.ParseProgramme([]byte(`{"mrp": {"2026": 5000}}`))
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, prog)
	g.seed()

	status, _, stderr := g.ctl(nil, "audit")
	if status != exitUsage || !strings.Contains(stderr, "still running") {
		t.Fatalf("audit of a running gateway: %d %q", status, stderr)
	}
	g.stop()

	progFile := filepath.Join(t.TempDir(), "programme.json")
	if err := os.WriteFile(progFile, []byte(`{"mrp": {"2026": 5000}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{g.data, filepath.Join(g.data, "ledger")} {
		status, stdout, stderr := g.ctl(nil, "audit", "--data", dir, "--program", progFile)
		if status != exitOK {
			t.Fatalf("audit --data %s: %d\n%s%s", dir, status, stdout, stderr)
		}
		if !strings.Contains(stdout, "OK: no violations") {
			t.Errorf("audit output lacks OK:\n%s", stdout)
		}
		for _, want := range [][2]string{{"vouchers", "1"}, {"redemptions", "1, 88200 tiyn"},
			{"refunds", "1, 8200 tiyn"}, {"store/S1", "80000 tiyn"}, {"programme", "-2000000 tiyn"},
			{"sum", "0 tiyn"}, {"issued (face values)", "2000000 tiyn"}} {
			if !hasRow(stdout, want[0], want[1]) {
				t.Errorf("audit output lacks the row %q %q:\n%s", want[0], want[1], stdout)
			}
		}
	}

	status, stdout, _ := g.ctl(nil, "audit")
	if status != exitProblem || !strings.Contains(stdout, "voucher.face: voucher V0000001") {
		t.Fatalf("audit under the wrong MRP: %d\n%s", status, stdout)
	}
	status, stdout, _ = g.ctl(nil, "audit", "--json")
	var rep struct {
		Vouchers   int
		Violations []struct{ Check string }
	}
	if status != exitProblem || json.Unmarshal([]byte(stdout), &rep) != nil || rep.Vouchers != 1 ||
		len(rep.Violations) != 1 || rep.Violations[0].Check != ledger.AuditVoucherFace {
		t.Fatalf("audit --json: %d %s", status, stdout)
	}
	if status, _, stderr := g.ctl(nil, "audit", "--data", filepath.Join(t.TempDir(), "none")); status != exitUsage || stderr == "" {
		t.Fatalf("audit of a missing directory: %d %q", status, stderr)
	}
}

// hasRow reports whether a table in out has a row whose first column is
// key and whose value starts with value.
func hasRow(out, key, value string) bool {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), key+"  ")
		if ok && strings.HasPrefix(strings.TrimSpace(rest), value) {
			return true
		}
	}
	return false
}
