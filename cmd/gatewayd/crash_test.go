package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"azyq/domain"
	"azyq/ledger"
)

// TestCrashUnderLoad protects the promise that nothing acknowledged is ever
// lost. It builds gatewayd, drives a real child process with concurrent
// redemptions and refunds over HTTP, kills it with SIGKILL at random
// moments, restarts it on the same data directory, and checks after each
// restart that:
//
//   - every acknowledged (2xx) redemption and refund is there, with its
//     amount and its redemption's refunded sum;
//   - no voucher is overspent: its balance lies within what the
//     acknowledged requests and those in flight at the kill allow;
//   - replaying each request that was in flight with its Idempotency-Key
//     gives its original answer or executes it exactly once, after which
//     every voucher's balance is exact;
//   - idempotent replays of acknowledged requests return their original
//     status and body byte for byte;
//
// and, once the gateway has stopped, that the offline audit of the data
// directory finds no violation and counts exactly the acknowledged money.
//
// The seed is printed; AZYQ_CRASH_SEED=<seed> replays the same kill
// schedule and workload choices (timing still varies). AZYQ_CRASH_ROUNDS
// sets the number of kills.
func TestCrashUnderLoad(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("AZYQ_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("cannot parse AZYQ_CRASH_SEED=%q: %v", s, err)
		}
	}
	rounds := 5
	if testing.Short() {
		rounds = 2
	}
	if s := os.Getenv("AZYQ_CRASH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			t.Fatalf("cannot use AZYQ_CRASH_ROUNDS=%q: want 1-1000", s)
		}
		rounds = n
	}
	t.Logf("seed %d (replay with AZYQ_CRASH_SEED=%d), %d kills", seed, seed, rounds)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	c := newCrashRig(t, rng)
	c.start()
	c.setup()
	for round := range rounds {
		c.load(round, time.Duration(200+rng.IntN(1300))*time.Millisecond) // ends in SIGKILL
		c.start()
		c.checkBounds(round)
		c.resolve(round)
		c.checkExact(round)
		c.checkReplays(round)
	}
	c.stop()
	c.audit()
}

const (
	crashAdmin       = "crash-admin-token"
	crashWallet      = "crash-wallet-token"
	crashSettlement  = "crash-settlement-token"
	crashWorkers     = 8
	crashVouchers    = 24
	crashTerminals   = 3
	crashReplayMax   = 300    // acknowledged requests replayed per round
	crashRequestsMax = 20_000 // requests sent per round at most
)

// crashRig is the child process and the model of what it acknowledged.
type crashRig struct {
	t      *testing.T
	rng    *rand.Rand
	bin    string
	dir    string
	prog   string
	cmd    *exec.Cmd
	exited chan error
	base   string
	client *http.Client

	terminals []string // API keys
	vouchers  []crashVoucher

	mu struct {
		sync.Mutex
		sent        int
		redemptions map[string]*crashRedemption // by id, acknowledged
		order       []string                    // redemption ids in acknowledgement order
		acked       []*crashRequest             // every acknowledged request
		pending     []*crashRequest             // in flight at a kill
	}
}

type crashVoucher struct {
	id   string
	face int64
}

type crashRedemption struct {
	id       string
	voucher  int // index into vouchers
	approved int64
	refunded int64 // acknowledged refunds
	pending  int64 // refunds in flight at a kill
}

// crashRequest is one money request, kept to replay it.
type crashRequest struct {
	refund   bool
	voucher  int    // redemptions: index into vouchers
	redID    string // refunds: the redemption refunded
	amount   int64  // requested (redemptions) or refunded (refunds)
	terminal string
	path     string
	idem     string
	body     []byte
	status   int
	answer   []byte
}

func newCrashRig(t *testing.T, rng *rand.Rand) *crashRig {
	c := &crashRig{t: t, rng: rng, dir: t.TempDir()}
	c.mu.redemptions = make(map[string]*crashRedemption)

	c.bin = filepath.Join(t.TempDir(), "gatewayd")
	build := exec.Command("go", "build", "-o", c.bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cannot build gatewayd: %v\n%s", err, out)
	}

	// Tokens stay valid across every restart of the test, and the current
	// year has an MRP whatever the date.
	year := time.Now().Year()
	c.prog = filepath.Join(t.TempDir(), "programme.json")
	prog := fmt.Sprintf(`{"qr_lifetime": "30m", "mrp": {"%d": 4325, "%d": 4325}}`, year, year+1)
	if err := os.WriteFile(c.prog, []byte(prog), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// start runs gatewayd on the data directory and waits for its ready line.
func (c *crashRig) start() {
	c.t.Helper()
	c.cmd = exec.Command(c.bin, "--data", c.dir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
		"--program", c.prog, "--admin-token", crashAdmin, "--wallet-token", crashWallet,
		"--settlement-token", crashSettlement,
		// Three tills at full speed exceed any sane per-terminal rate; the
		// limit is tested on its own.
		"--terminal-rate", "0")
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	c.cmd.Stdout = io.Discard
	if err := c.cmd.Start(); err != nil {
		c.t.Fatalf("cannot start gatewayd: %v", err)
	}
	c.exited = make(chan error, 1)
	proc := c.cmd.Process
	c.t.Cleanup(func() { proc.Kill() }) // a failed check must not leave it running

	addr := make(chan string, 1)
	var lines bytes.Buffer
	var linesMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var ev struct {
				Msg    string `json:"msg"`
				Listen string `json:"listen"`
			}
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Msg == "gateway ready" {
				addr <- ev.Listen
			}
			linesMu.Lock()
			if lines.Len() < 64<<10 {
				lines.Write(sc.Bytes())
				lines.WriteByte('\n')
			}
			linesMu.Unlock()
		}
		c.exited <- c.cmd.Wait()
	}()
	select {
	case a := <-addr:
		c.base = "http://" + a
	case err := <-c.exited:
		linesMu.Lock()
		defer linesMu.Unlock()
		c.t.Fatalf("gatewayd exited before it was ready: %v\n%s", err, lines.String())
	case <-time.After(60 * time.Second):
		c.cmd.Process.Kill()
		c.t.Fatal("gatewayd was not ready within a minute")
	}
	c.client = &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: crashWorkers * 2},
		Timeout:   30 * time.Second,
	}
}

// kill stops the child with SIGKILL: no shutdown, no flush.
func (c *crashRig) kill() {
	c.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatalf("cannot kill gatewayd: %v", err)
	}
	<-c.exited
	c.client.CloseIdleConnections()
}

// stop stops the child cleanly with SIGTERM; it must exit 0.
func (c *crashRig) stop() {
	c.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		c.t.Fatalf("cannot stop gatewayd: %v", err)
	}
	select {
	case err := <-c.exited:
		if err != nil {
			c.t.Fatalf("gatewayd did not stop cleanly: %v", err)
		}
	case <-time.After(60 * time.Second):
		c.cmd.Process.Kill()
		c.t.Fatal("gatewayd did not stop within a minute of SIGTERM")
	}
}

// call sends one request; err is a transport failure (no answer).
func (c *crashRig) call(method, path, bearer, idem string, body []byte) (int, []byte, http.Header, error) {
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Content-Type", "application/json")
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, err
	}
	return resp.StatusCode, data, resp.Header, nil
}

// must sends a request that has to succeed with want.
func (c *crashRig) must(want int, method, path, bearer string, body []byte, out any) {
	c.t.Helper()
	status, data, _, err := c.call(method, path, bearer, "", body)
	if err != nil || status != want {
		c.t.Fatalf("%s %s: %d %s %v, want %d", method, path, status, data, err, want)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			c.t.Fatalf("%s %s: cannot decode %s: %v", method, path, data, err)
		}
	}
}

// setup registers a shop with terminals and issues and activates vouchers.
func (c *crashRig) setup() {
	c.t.Helper()
	bin, _ := domain.BINWithCheck("26014000123")
	store := fmt.Sprintf(`{"name":"Crash shop","bin":%q,"city":"Pavlodar","bank_bic":"HSBKKZKX","iban":%q,"discount_bp":1000}`,
		bin, domain.IBANWithCheck("601", "KZT0000012345"))
	c.must(200, "PUT", "/v1/stores/S1", crashAdmin, []byte(store), nil)
	for i := range crashTerminals {
		var term struct {
			Key string `json:"api_key"`
		}
		c.must(201, "POST", "/v1/stores/S1/terminals", crashAdmin, fmt.Appendf(nil, `{"terminal_id":"T%d"}`, i), &term)
		c.terminals = append(c.terminals, term.Key)
	}

	month := time.Now().In(mustLocation(c.t)).Format("2006-01")
	var fams []string
	for i := range crashVouchers {
		fams = append(fams, fmt.Sprintf(`{"family_id":"F-%03d","members":%d}`, i, 1+i%5))
	}
	var issued struct {
		Vouchers []struct {
			ID   string `json:"voucher_id"`
			Face int64  `json:"face_value"`
		} `json:"vouchers"`
	}
	body := fmt.Sprintf(`{"month":%q,"families":[%s]}`, month, strings.Join(fams, ","))
	c.must(200, "POST", "/v1/issuances", crashAdmin, []byte(body), &issued)
	for _, v := range issued.Vouchers {
		c.must(200, "POST", "/v1/vouchers/"+v.ID+"/activation", crashWallet, []byte(`{"consent":true}`), nil)
		c.vouchers = append(c.vouchers, crashVoucher{id: v.ID, face: v.Face})
	}
}

func mustLocation(t *testing.T) *time.Location {
	loc, err := time.LoadLocation("Asia/Almaty")
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// load runs the workers until the round's time is up and the process is
// killed: each request in flight at the kill becomes pending.
func (c *crashRig) load(round int, d time.Duration) {
	var killing atomic.Bool
	var wg sync.WaitGroup
	c.mu.Lock()
	c.mu.sent = 0
	c.mu.Unlock()
	seeds := make([]uint64, crashWorkers)
	for i := range seeds {
		seeds[i] = c.rng.Uint64()
	}
	for w := range crashWorkers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seeds[w], uint64(round)))
			for n := 0; !killing.Load(); n++ {
				req := c.next(rng, fmt.Sprintf("r%d-w%d-%d", round, w, n))
				if req == nil {
					continue
				}
				status, data, _, err := c.call("POST", req.path, req.terminal, req.idem, req.body)
				c.record(req, status, data, err)
			}
		})
	}
	time.Sleep(d)
	killing.Store(true)
	// The kill lands while requests are in flight; workers stop sending.
	c.kill()
	wg.Wait()
	c.mu.Lock()
	c.t.Logf("round %d: killed after %v; %d acknowledged so far, %d in flight at the kill",
		round, d, len(c.mu.acked), len(c.mu.pending))
	c.mu.Unlock()
}

// next prepares a redemption (mostly) or a refund of an acknowledged
// redemption, or nil when none can be made.
func (c *crashRig) next(rng *rand.Rand, idem string) *crashRequest {
	c.mu.Lock()
	c.mu.sent++
	if c.mu.sent > crashRequestsMax {
		// The round's budget is spent: wait for the kill without sending.
		c.mu.Unlock()
		time.Sleep(time.Millisecond)
		return nil
	}
	var red *crashRedemption
	if len(c.mu.order) > 0 && rng.IntN(10) < 3 {
		red = c.mu.redemptions[c.mu.order[rng.IntN(len(c.mu.order))]]
		if left := red.approved - red.refunded - red.pending; left > 0 {
			amount := 1 + rng.Int64N(left)
			red.pending += amount
			c.mu.Unlock()
			return &crashRequest{refund: true, redID: red.id, amount: amount,
				terminal: c.terminals[rng.IntN(len(c.terminals))], idem: idem,
				path: "/v1/redemptions/" + red.id + "/refunds", body: fmt.Appendf(nil, `{"amount":%d}`, amount)}
		}
	}
	c.mu.Unlock()

	v := rng.IntN(len(c.vouchers))
	var qr struct {
		QR string `json:"qr"`
	}
	status, data, _, err := c.call("POST", "/v1/vouchers/"+c.vouchers[v].id+"/qr", crashWallet, "", nil)
	if err != nil || status != 201 || json.Unmarshal(data, &qr) != nil {
		return nil // the gateway is being killed
	}
	req := &crashRequest{voucher: v, terminal: c.terminals[rng.IntN(len(c.terminals))], idem: idem, path: "/v1/redemptions"}
	if rng.IntN(3) == 0 {
		a, b := 1+rng.Int64N(60_000), 1+rng.Int64N(60_000)
		req.body = fmt.Appendf(nil, `{"qr":%q,"partial":%t,"lines":[{"sku":"1","category":"sugar","amount":%d},`+
			`{"sku":"2","category":"","amount":%d},{"sku":"3","category":"bread","amount":%d}]}`,
			qr.QR, rng.IntN(2) == 0, a, 999, b)
	} else {
		req.amount = 1 + rng.Int64N(150_000)
		req.body = fmt.Appendf(nil, `{"qr":%q,"amount":%d}`, qr.QR, req.amount)
	}
	return req
}

// record files the outcome of a request sent under load.
func (c *crashRig) record(req *crashRequest, status int, data []byte, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err != nil || status == 503:
		c.mu.pending = append(c.mu.pending, req)
	case status >= 500:
		c.t.Errorf("%s %s: %d %s", req.path, req.body, status, data)
	default:
		c.ackLocked(req, status, data)
	}
}

// ackLocked files an answered request: an approved redemption or refund
// enters the model; a decline is kept only to replay it.
func (c *crashRig) ackLocked(req *crashRequest, status int, data []byte) {
	req.status, req.answer = status, data
	c.mu.acked = append(c.mu.acked, req)
	if req.refund {
		red := c.mu.redemptions[req.redID]
		red.pending -= req.amount
		if status == 201 {
			red.refunded += req.amount
		} else if status != 422 && status != 409 {
			c.t.Errorf("refund %s of %d: unexpected %d %s", req.redID, req.amount, status, data)
		}
		return
	}
	if status != 201 {
		if status != 402 && status != 409 {
			c.t.Errorf("redemption %s: unexpected %d %s", req.body, status, data)
		}
		return
	}
	var r struct {
		ID       string `json:"redemption_id"`
		Voucher  string `json:"voucher_id"`
		Approved int64  `json:"approved"`
	}
	if err := json.Unmarshal(data, &r); err != nil || r.ID == "" || r.Voucher != c.vouchers[req.voucher].id {
		c.t.Errorf("redemption answer %s for voucher %s: %v", data, c.vouchers[req.voucher].id, err)
		return
	}
	if _, dup := c.mu.redemptions[r.ID]; dup {
		c.t.Errorf("redemption %s acknowledged twice", r.ID)
		return
	}
	c.mu.redemptions[r.ID] = &crashRedemption{id: r.ID, voucher: req.voucher, approved: r.Approved}
	c.mu.order = append(c.mu.order, r.ID)
}

// spentLocked returns, per voucher, what the acknowledged requests took
// (approved − refunded) and the most that pending requests may add to or
// take from it.
func (c *crashRig) spentLocked() (spent, pendingDebit, pendingCredit []int64) {
	n := len(c.vouchers)
	spent, pendingDebit, pendingCredit = make([]int64, n), make([]int64, n), make([]int64, n)
	for _, r := range c.mu.redemptions {
		spent[r.voucher] += r.approved - r.refunded
	}
	for _, p := range c.mu.pending {
		if p.refund {
			pendingCredit[c.mu.redemptions[p.redID].voucher] += p.amount
		} else {
			// A partial or basket redemption approves at most the face.
			pendingDebit[p.voucher] += c.vouchers[p.voucher].face
		}
	}
	return spent, pendingDebit, pendingCredit
}

type crashVoucherView struct {
	Balance   int64 `json:"balance"`
	FaceValue int64 `json:"face_value"`
}

func (c *crashRig) voucher(i int) crashVoucherView {
	var v crashVoucherView
	c.must(200, "GET", "/v1/vouchers/"+c.vouchers[i].id, crashWallet, nil, &v)
	return v
}

// checkBounds runs right after a restart, before the pending requests are
// resolved: each balance must lie within what the acknowledged requests
// leave, widened only by the requests in flight at the kill.
func (c *crashRig) checkBounds(round int) {
	c.t.Helper()
	c.mu.Lock()
	spent, debit, credit := c.spentLocked()
	c.mu.Unlock()
	for i, cv := range c.vouchers {
		v := c.voucher(i)
		want := cv.face - spent[i]
		if v.FaceValue != cv.face || v.Balance < 0 || v.Balance > want+credit[i] || v.Balance < want-debit[i] {
			c.t.Fatalf("round %d: voucher %s balance %d outside [%d, %d] (face %d, acknowledged spending %d)",
				round, cv.id, v.Balance, want-debit[i], want+credit[i], cv.face, spent[i])
		}
	}
}

// resolve replays every request that was in flight at the kill with its
// Idempotency-Key: each gets its original answer (it had committed) or
// runs now, exactly once.
func (c *crashRig) resolve(round int) {
	c.t.Helper()
	c.mu.Lock()
	pending := c.mu.pending
	c.mu.pending = nil
	c.mu.Unlock()
	replayed := 0
	for _, req := range pending {
		status, data, h, err := c.call("POST", req.path, req.terminal, req.idem, req.body)
		if err != nil || status >= 500 || status == 409 && bytes.Contains(data, []byte("request_in_progress")) {
			c.t.Fatalf("round %d: resolving %s %s: %d %s %v", round, req.path, req.body, status, data, err)
		}
		if h.Get("Idempotent-Replayed") == "true" {
			replayed++
		}
		c.mu.Lock()
		c.ackLocked(req, status, data)
		c.mu.Unlock()
	}
	c.t.Logf("round %d: %d requests in flight at the kill: %d had committed, %d ran on replay",
		round, len(pending), replayed, len(pending)-replayed)
}

// checkExact verifies every acknowledged redemption and every balance.
func (c *crashRig) checkExact(round int) {
	c.t.Helper()
	c.mu.Lock()
	spent, _, _ := c.spentLocked()
	reds := make([]crashRedemption, 0, len(c.mu.redemptions))
	for _, r := range c.mu.redemptions {
		reds = append(reds, *r)
	}
	c.mu.Unlock()

	for _, r := range reds {
		var got struct {
			Approved int64 `json:"approved"`
			Refunded int64 `json:"refunded"`
		}
		c.must(200, "GET", "/v1/redemptions/"+r.id, c.terminals[0], nil, &got)
		if got.Approved != r.approved || got.Refunded != r.refunded {
			c.t.Fatalf("round %d: redemption %s: approved %d refunded %d, acknowledged %d and %d",
				round, r.id, got.Approved, got.Refunded, r.approved, r.refunded)
		}
	}
	for i, cv := range c.vouchers {
		if v := c.voucher(i); v.Balance != cv.face-spent[i] {
			c.t.Fatalf("round %d: voucher %s balance %d, acknowledged requests leave %d",
				round, cv.id, v.Balance, cv.face-spent[i])
		}
	}
}

// checkReplays replays acknowledged requests (all of the latest, a sample
// of older ones) and compares the answers byte for byte.
func (c *crashRig) checkReplays(round int) {
	c.t.Helper()
	c.mu.Lock()
	acked := append([]*crashRequest(nil), c.mu.acked...)
	c.mu.Unlock()
	if len(acked) > crashReplayMax {
		recent := acked[len(acked)-crashReplayMax/2:]
		older := acked[:len(acked)-crashReplayMax/2]
		c.rng.Shuffle(len(older), func(i, j int) { older[i], older[j] = older[j], older[i] })
		acked = append(older[:crashReplayMax/2], recent...)
	}
	for _, req := range acked {
		status, data, h, err := c.call("POST", req.path, req.terminal, req.idem, req.body)
		if err != nil || status != req.status || !bytes.Equal(data, req.answer) || h.Get("Idempotent-Replayed") != "true" {
			c.t.Fatalf("round %d: replay of %s %s (key %s): %d %s %v, replayed %q; first answer %d %s",
				round, req.path, req.body, req.idem, status, data, err, h.Get("Idempotent-Replayed"), req.status, req.answer)
		}
	}
}

// audit runs the offline audit on the stopped data directory and compares
// its totals with the acknowledged money.
func (c *crashRig) audit() {
	c.t.Helper()
	prog, err := domain.LoadProgramme(c.prog)
	if err != nil {
		c.t.Fatal(err)
	}
	rep, err := ledger.Audit(ledger.Config{Dir: filepath.Join(c.dir, "ledger"), Programme: prog})
	if err != nil {
		c.t.Fatalf("cannot audit: %v", err)
	}
	for _, v := range rep.Violations {
		c.t.Errorf("audit: %s", v)
	}
	if !rep.OK() {
		c.t.Fatalf("audit failed with %d violations", len(rep.Violations))
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	var approved, refunded int64
	refunds := 0
	for _, r := range c.mu.redemptions {
		approved += r.approved
		refunded += r.refunded
	}
	for _, req := range c.mu.acked {
		if req.refund && req.status == 201 {
			refunds++
		}
	}
	if rep.Redemptions.Count != len(c.mu.redemptions) || int64(rep.Redemptions.Amount) != approved ||
		rep.Refunds.Count != refunds || int64(rep.Refunds.Amount) != refunded {
		c.t.Fatalf("audit counts %d redemptions of %d and %d refunds of %d; acknowledged %d of %d and %d of %d",
			rep.Redemptions.Count, rep.Redemptions.Amount, rep.Refunds.Count, rep.Refunds.Amount,
			len(c.mu.redemptions), approved, refunds, refunded)
	}
	c.t.Logf("audit: %d redemptions of %d tiyn and %d refunds of %d tiyn, all acknowledged, no violation",
		len(c.mu.redemptions), approved, refunds, refunded)
}
