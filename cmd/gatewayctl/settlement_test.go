package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"azyq/domain"
	"azyq/ledger"
	"azyq/settlement"
)

// TestPullHelperProcess is not a test: TestSettlementPullCrash runs the
// test binary through it as a gatewayctl that its crash hook can kill.
func TestPullHelperProcess(t *testing.T) {
	if os.Getenv("GATEWAYCTL_HELPER") != "1" {
		t.Skip("helper process for TestSettlementPullCrash")
	}
	args := strings.Split(os.Getenv("GATEWAYCTL_HELPER_ARGS"), "\x1f")
	os.Exit(run(args, os.Stdout, os.Stderr, false))
}

var settleNonce atomic.Uint64

// settlementSeed adds two shops at two banks and an active voucher.
func (g *testGateway) settlementSeed() ledger.VoucherID {
	g.t.Helper()
	for i, bic := range []string{"HSBKKZKX", "KCJBKZKX"} {
		bin, _ := domain.BINWithCheck(fmt.Sprintf("2601400012%d", i))
		_, err := g.led.PutStore(ledger.Store{ID: fmt.Sprintf("S%d", i+1), Name: "Shop", BIN: bin, City: "Pavlodar",
			BankBIC: bic, IBAN: domain.IBANWithCheck("125", "KZT0000012345"), DiscountBP: 1000})
		if err != nil {
			g.t.Fatal(err)
		}
	}
	out, err := g.led.Issue(domain.MakeMonth(2026, 12), []ledger.Family{{FamilyID: "F-1", Members: 30, City: "Pavlodar"}})
	if err != nil {
		g.t.Fatal(err)
	}
	if _, err := g.led.Activate(out[0].Voucher.ID); err != nil {
		g.t.Fatal(err)
	}
	return out[0].Voucher.ID
}

// twoBatches redeems at both shops and cuts off: one batch per bank.
func (g *testGateway) twoBatches(v ledger.VoucherID) []string {
	g.t.Helper()
	for _, store := range []string{"S1", "S2"} {
		for range 3 {
			_, err := g.led.Redeem(&ledger.RedeemRequest{
				Token:   ledger.Token{Voucher: v, Nonce: settleNonce.Add(1), Expires: testNow.Add(time.Minute)},
				StoreID: store, TerminalID: "T1", Amount: 1_000,
			})
			if err != nil {
				g.t.Fatal(err)
			}
		}
	}
	c, err := g.srv.Settlement().Cutoff()
	if err != nil || len(c.Batches) != 2 {
		g.t.Fatalf("cut-off %+v: %v", c, err)
	}
	return c.Batches
}

// get downloads a path with the settlement token.
func (g *testGateway) get(path string) []byte {
	g.t.Helper()
	req, _ := http.NewRequest("GET", g.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+testSettlementToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		g.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

// TestSettlementPullCrash protects settlement pull's crash safety: killed
// after each of its steps (a file written, a batch acknowledged) and run
// again, it ends with every batch's three files complete, each batch
// acknowledged once under the reference its files give, and nothing lost
// or written twice.
func TestSettlementPullCrash(t *testing.T) {
	g := startGateway(t, nil)
	v := g.settlementSeed()
	dir := t.TempDir()
	var all []string
	for k := 1; k <= 8; k++ {
		all = append(all, g.twoBatches(v)...)

		// Killed right after step k of this run.
		args := []string{"--addr", g.addr, "--token", testSettlementToken, "settlement", "pull", "--dir", dir}
		cmd := exec.Command(os.Args[0], "-test.run=^TestPullHelperProcess$")
		cmd.Env = append(os.Environ(), "GATEWAYCTL_HELPER=1", "GATEWAYCTL_HELPER_ARGS="+strings.Join(args, "\x1f"),
			fmt.Sprintf("%s=%d", pullCrashEnv, k))
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 75 {
			t.Fatalf("run killed after step %d: %v\n%s", k, err, out)
		}
		// What a kill in the middle of a write leaves behind.
		os.WriteFile(filepath.Join(dir, "."+all[len(all)-1]+".json.tmp-1"), []byte(`{"batch_`), 0o644)

		status, stdout, stderr := g.ctl(nil, "--token", testSettlementToken, "settlement", "pull", "--dir", dir)
		if status != exitOK {
			t.Fatalf("rerun after step %d: %d\n%s%s", k, status, stdout, stderr)
		}
	}

	// Nothing is left ready, and every batch is on disk once, whole, and
	// acknowledged under the reference of its files.
	status, stdout, _ := g.ctl(nil, "--token", testSettlementToken, "settlement", "pull", "--dir", dir)
	if status != exitOK || !strings.Contains(stdout, "pulled 0 of 0") {
		t.Fatalf("final run: %d %s", status, stdout)
	}
	for _, id := range all {
		h := sha256.New()
		for _, f := range pullFiles {
			data, err := os.ReadFile(filepath.Join(dir, id+f.suffix))
			if err != nil {
				t.Fatal(err)
			}
			h.Write(data)
			if f.path != "" && !bytes.Equal(data, g.get("/v1/settlement/batches/"+id+f.path)) {
				t.Fatalf("%s%s differs from the gateway's", id, f.suffix)
			}
		}
		var b settlement.Batch
		json.Unmarshal(g.get("/v1/settlement/batches/"+id), &b)
		want := fmt.Sprintf("%s-sha256-%x", id, h.Sum(nil)[:16])
		if b.Status != settlement.StatusAcknowledged || b.Reference != want {
			t.Fatalf("batch %s: %s %q, want reference %q", id, b.Status, b.Reference, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	files := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			files++
		}
	}
	if files != 3*len(all) {
		t.Fatalf("%d files for %d batches", files, len(all))
	}
}

// TestReconcile protects gatewayctl reconcile: it prints the totals and
// exits 0 when the books agree, and exits 1 naming the problem when a
// batch record disagrees with the ledger's journal.
func TestReconcile(t *testing.T) {
	g := startGateway(t, nil)
	v := g.settlementSeed()
	ids := g.twoBatches(v)

	status, stdout, stderr := g.ctl(nil, "reconcile", "--from", "2026-12-01", "--to", "2027-01-01")
	if status != exitOK || !strings.Contains(stdout, "books agree") || !strings.Contains(stdout, "store S2") {
		t.Fatalf("reconcile: %d\n%s%s", status, stdout, stderr)
	}
	status, stdout, _ = g.ctl(nil, "reconcile", "--from", "2026-12-01", "--to", "2027-01-01", "--json")
	var r settlement.Reconciliation
	if err := json.Unmarshal([]byte(stdout), &r); status != exitOK || err != nil || r.Total.Redeemed != 6_000 ||
		r.Total.Settled != 6_000 || r.Total.Issued != 12_975_000 {
		t.Fatalf("reconcile --json: %d %v\n%s", status, err, stdout)
	}
	if status, _, _ := g.ctl(nil, "reconcile", "--from", "2026-12-01"); status != exitUsage {
		t.Fatalf("missing --to: %d", status)
	}

	// Tamper with a batch record behind the settlement's back.
	seq, _ := settlement.ParseBatchID(ids[0])
	key := binary.BigEndian.AppendUint64([]byte("s/b/"), seq)
	raw, _, _ := g.led.GetAux(key)
	raw = bytes.Replace(raw, []byte(`"gross":3000`), []byte(`"gross":3100`), -1)
	if err := g.led.CommitAux([]ledger.AuxWrite{{Key: key, Value: raw}}, nil); err != nil {
		t.Fatal(err)
	}
	status, _, stderr = g.ctl(nil, "reconcile", "--from", "2026-12-01", "--to", "2027-01-01")
	if status != exitProblem || !strings.Contains(stderr, "books disagree") {
		t.Fatalf("tampered books: %d %s", status, stderr)
	}
}

// TestSettlementPullBatchPayingNobody protects pull on a batch that pays no
// shop: it has no payment file, so pull stores its JSON and lines.csv only
// and still acknowledges it.
func TestSettlementPullBatchPayingNobody(t *testing.T) {
	g := startGateway(t, nil)
	v := g.settlementSeed()
	red, err := g.led.Redeem(&ledger.RedeemRequest{
		Token:   ledger.Token{Voucher: v, Nonce: settleNonce.Add(1), Expires: testNow.Add(time.Minute)},
		StoreID: "S1", TerminalID: "T1", Amount: 1_000,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.srv.Settlement().Cutoff(); err != nil {
		t.Fatal(err)
	}
	if _, err := g.led.Refund(&ledger.RefundRequest{Redemption: red.Seq, StoreID: "S1", TerminalID: "T1", Amount: 1_000}); err != nil {
		t.Fatal(err)
	}
	c, err := g.srv.Settlement().Cutoff()
	if err != nil || len(c.Batches) != 1 {
		t.Fatalf("cut-off %+v: %v", c, err)
	}
	empty := c.Batches[0]

	dir := t.TempDir()
	status, stdout, stderr := g.ctl(nil, "--token", testSettlementToken, "settlement", "pull", "--dir", dir)
	if status != exitOK || !strings.Contains(stdout, "pulled 2 of 2") {
		t.Fatalf("pull: %d\n%s%s", status, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, empty+".payments.xml")); !os.IsNotExist(err) {
		t.Fatalf("a payment file for batch %s, which pays nobody: %v", empty, err)
	}
	var b settlement.Batch
	json.Unmarshal(g.get("/v1/settlement/batches/"+empty), &b)
	if b.Net != 0 || b.Status != settlement.StatusAcknowledged {
		t.Fatalf("batch %s: net %d, %s", empty, b.Net, b.Status)
	}
}
