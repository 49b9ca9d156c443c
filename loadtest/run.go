package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/valyala/fastjson"

	"azyq/domain"
)

// Run limits: every run stops by itself.
const (
	durationMax  = time.Hour
	workersMax   = 4096
	vouchersMax  = 2_000_000
	rateMax      = 1_000_000
	storesMax    = 10_000
	qrPerVoucher = 16
	// retriesMax is how often a request whose answer was lost is resent
	// with the same idempotency key before the voucher is marked uncertain.
	retriesMax = 3
	// retryRingMax and refundRingMax bound the memory of earlier requests
	// that retries and refunds draw from.
	retryRingMax  = 4096
	refundRingMax = 16384
	// drainMax is how long the timed phase waits for requests in flight
	// after its end before it gives up on them.
	drainMax = 30 * time.Second
)

// Config is one run. The zero value of each field is explained beside it;
// Defaults fills the ones a caller may leave out.
type Config struct {
	Addr        string // gateway API address, loopback only
	AdminToken  string
	WalletToken string
	Label       string // free text carried into the report

	Mode     string        // "closed" (default) or "open"
	Shape    string        // "flat" (default) or "surge": a month-start peak
	Workers  int           // concurrent terminals sending; default 64
	Rate     float64       // open loop: peak POS operations per second; required
	Duration time.Duration // timed phase; default 30 s, at most an hour
	Count    int64         // stop after this many POS operations; 0: no limit

	Stores            int // default 20
	TerminalsPerStore int // default 8
	Vouchers          int // default 20,000
	HotVouchers       int // vouchers receiving HotShare; default 0
	HotShare          float64
	Mix               Mix // default DefaultMix
	Seed              uint64
	QRPerVoucher      int           // tokens minted per voucher in set-up; default 2
	Wallets           int           // goroutines refilling the QR pool; default 2
	SetupWorkers      int           // concurrency of set-up and check; default 32
	Timeout           time.Duration // per request; default 10 s
	Check             bool          // read balances back and check the books

	Progress io.Writer // progress bar destination; nil: none
	Logger   *slog.Logger
	Now      func() time.Time // default time.Now
}

// Defaults fills the fields left at zero and validates the rest.
func (c *Config) Defaults() error {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.Workers, 64)
	def(&c.Stores, 20)
	def(&c.TerminalsPerStore, 8)
	def(&c.Vouchers, 20_000)
	def(&c.QRPerVoucher, 2)
	def(&c.Wallets, 2)
	def(&c.SetupWorkers, 32)
	if c.Mode == "" {
		c.Mode = "closed"
	}
	if c.Shape == "" {
		c.Shape = "flat"
	}
	if c.Duration == 0 {
		c.Duration = 30 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Mix.total() == 0 {
		c.Mix = DefaultMix
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}

	switch {
	case c.Mode != "closed" && c.Mode != "open":
		return fmt.Errorf("cannot use mode %q (--mode): want closed or open", c.Mode)
	case c.Shape != "flat" && c.Shape != "surge":
		return fmt.Errorf("cannot use shape %q (--shape): want flat or surge", c.Shape)
	case c.Mode == "open" && (c.Rate <= 0 || c.Rate > rateMax):
		return fmt.Errorf("cannot run open loop at rate %g (--rate): want 1-%d per second", c.Rate, rateMax)
	case c.Duration < 0 || c.Duration > durationMax:
		return fmt.Errorf("cannot run for %s (--duration): at most %s", c.Duration, durationMax)
	case c.Workers < 1 || c.Workers > workersMax:
		return fmt.Errorf("cannot use %d workers (--workers): want 1-%d", c.Workers, workersMax)
	case c.Vouchers < 1 || c.Vouchers > vouchersMax:
		return fmt.Errorf("cannot issue %d vouchers (--vouchers): want 1-%d", c.Vouchers, vouchersMax)
	case c.Stores < 1 || c.Stores > storesMax:
		return fmt.Errorf("cannot create %d shops (--stores): want 1-%d", c.Stores, storesMax)
	case c.QRPerVoucher < 1 || c.QRPerVoucher > qrPerVoucher:
		return fmt.Errorf("cannot mint %d tokens per voucher (--qr-per-voucher): want 1-%d",
			c.QRPerVoucher, qrPerVoucher)
	case c.HotShare < 0 || c.HotShare > 1:
		return fmt.Errorf("cannot aim %g of operations at hot vouchers (--hot-share): want 0-1", c.HotShare)
	case c.AdminToken == "" || c.WalletToken == "":
		return errors.New("cannot run without the admin and wallet tokens (--admin-token, --wallet-token); " +
			"gatewayd prints them at first start and keeps them in its data directory")
	}
	return CheckLoopback(c.Addr)
}

// run is the state of one load test.
//
// Workers share the books, the QR pool, the recorder and two rings of
// earlier requests (for retries and refunds); each is guarded by its own
// lock so that no request waits on another's bookkeeping for long. The
// generator is never shared: the open loop's scheduler owns one, each
// closed-loop worker owns one.
type run struct {
	cfg    Config
	id     string // prefix of every id the run creates
	loc    *time.Location
	client *Client
	books  *Books
	rec    *Recorder
	pool   *qrPool
	pop    Population

	lowQR       chan int // vouchers whose QR pool runs low
	inlineMints atomic.Int64
	posOps      atomic.Int64

	mu struct {
		sync.Mutex
		retries  []earlier // ring of answered money-moving requests
		retryAt  int
		refunds  []refundable
		refundAt int
	}
}

// earlier is a money-moving request and its first answer, kept to retry.
type earlier struct {
	terminal int
	path     string
	key      string
	body     []byte
	status   int
	answer   []byte
}

// refundable is an approved redemption that may still be refunded.
type refundable struct {
	id        string
	voucher   string
	store     int
	remaining domain.Tiyn
}

// Run sets up a population, runs the timed phase and checks the books. The
// error is for a run that could not be carried out; a run that found
// violations returns a report whose OK is false.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Defaults(); err != nil {
		return nil, err
	}
	client, err := NewClient(cfg.Addr, cfg.Workers+cfg.SetupWorkers+cfg.Wallets+8, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	loc, err := time.LoadLocation("Asia/Almaty")
	if err != nil {
		return nil, fmt.Errorf("cannot load the programme's time zone: %w", err)
	}
	started := cfg.Now()
	r := &run{
		cfg: cfg, loc: loc, client: client, books: NewBooks(),
		id:    "lt" + strconv.FormatInt(started.UnixMilli()%1e10, 36),
		lowQR: make(chan int, 4096),
	}
	rep := &Report{Target: cfg.Addr, Label: cfg.Label, Mode: cfg.Mode, Shape: cfg.Shape,
		Seed: cfg.Seed, Started: started, Workers: cfg.Workers, Vouchers: cfg.Vouchers,
		Stores: cfg.Stores, Terms: cfg.Stores * cfg.TerminalsPerStore}
	if cfg.Mode == "open" {
		rep.Rate = cfg.Rate
	}

	// Set-up, untimed.
	if err := r.setup(ctx); err != nil {
		return nil, fmt.Errorf("cannot set up the load test: %w", err)
	}
	rep.Setup = cfg.Now().Sub(started).Seconds()
	cfg.Logger.Info("set up", "stores", cfg.Stores, "terminals", rep.Terms,
		"vouchers", cfg.Vouchers, "seconds", rep.Setup)

	// The timed phase.
	rep.CPUs = runtime.NumCPU()
	rep.Load[0] = loadAverage()
	cpu0 := sampleCPU()
	elapsed := r.timed(ctx)
	cpu1 := sampleCPU()
	rep.Load[1] = loadAverage()
	rep.Summarize(r.rec, elapsed)
	if total := cpu1.total - cpu0.total; total > 0 {
		rep.MachineBusy = float64(cpu1.busy-cpu0.busy) / float64(total)
		rep.LoadTestCPU = float64(cpu1.self-cpu0.self) / float64(total)
	}
	// The load average counts this run's own threads and the server's, so
	// only well above the core count does it say that other work ran.
	if busy := max(rep.Load[0], rep.Load[1]); busy > float64(2*rep.CPUs) {
		rep.Notes = append(rep.Notes, fmt.Sprintf("the machine was busy: load average %.1f on %d "+
			"cores around the timed phase; other work may have competed for the CPU",
			busy, rep.CPUs))
	}
	if n := r.inlineMints.Load(); n > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d QR tokens were minted inline because the "+
			"pool was empty; their time is in qr_mint, not in the POS latency", n))
	}
	cfg.Logger.Info("timed phase done", "seconds", elapsed.Seconds(),
		"redemptions_per_second", rep.RedemptionsPerSecond)

	// The book check, through the API.
	if cfg.Check {
		actual, err := r.readBalances(ctx)
		if err != nil {
			return rep, fmt.Errorf("cannot check the books: %w", err)
		}
		bc := Check(r.books.Snapshot(), actual)
		rep.Books = &bc
	}
	rep.judge()
	return rep, nil
}

// loadAverage returns the one-minute load average, or 0 where
// /proc/loadavg does not exist.
func loadAverage() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _, _ := strings.Cut(string(data), " ")
	v, _ := strconv.ParseFloat(f, 64)
	return v
}

// judge lists what makes the run fail.
func (rep *Report) judge() {
	if rep.ReplayMismatches > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf(
			"%d idempotent retries did not return the first answer byte for byte", rep.ReplayMismatches))
	}
	var transport int64
	for _, o := range rep.Ops {
		transport += o.Outcomes[outcomeTransport]
	}
	if hard := rep.Failures - transport - rep.ReplayMismatches; hard > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf(
			"%d requests failed with 5xx, 400, 401, 403 or an unexpected status", hard))
	}
	if transport > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d requests lost their answer (timeout or "+
			"connection error); a money-moving one was resent with its idempotency key", transport))
	}
	if rep.Books != nil && rep.Books.Uncertain > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf(
			"%d vouchers could not be checked: an answer was lost for good", rep.Books.Uncertain))
	}
}

// shapeFactor is the load at fraction f of the run, between 0 and 1. The
// month-start surge climbs from 30 % to the peak in the first tenth of the
// run, as recipients activate and shop on the first morning, then decays
// back towards 30 %.
func shapeFactor(shape string, f float64) float64 {
	if shape != "surge" {
		return 1
	}
	if f < 0.1 {
		return 0.3 + 0.7*f/0.1
	}
	return 0.3 + 0.7*math.Exp(-(f-0.1)/0.25)
}

// timed runs the timed phase and returns its length.
func (r *run) timed(ctx context.Context) time.Duration {
	cfg := r.cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration+drainMax)
	defer cancel()
	start := cfg.Now()
	r.rec = NewRecorder(start)
	deadline := start.Add(cfg.Duration)

	// The wallet refills QR pools in the background.
	var wallets sync.WaitGroup
	walletCtx, stopWallets := context.WithCancel(ctx)
	for range cfg.Wallets {
		wallets.Go(func() { r.wallet(walletCtx) })
	}
	stopProgress := r.progress(start)

	var workers sync.WaitGroup
	if cfg.Mode == "open" {
		queue := make(chan scheduled, cfg.Workers*4)
		for w := range cfg.Workers {
			workers.Go(func() {
				for s := range queue {
					r.rec.RecordStartLag(cfg.Now().Sub(s.at))
					r.execute(ctx, w, s.op, s.at)
				}
			})
		}
		r.schedule(ctx, start, deadline, queue)
		close(queue)
	} else {
		for w := range cfg.Workers {
			workers.Go(func() { r.closedLoop(ctx, w, start, deadline) })
		}
	}
	workers.Wait()
	elapsed := cfg.Now().Sub(start)
	stopWallets()
	wallets.Wait()
	stopProgress()
	return elapsed
}

// scheduled is an operation and the moment it was meant to start.
type scheduled struct {
	op Op
	at time.Time
}

// schedule feeds the open loop: operation i is due at the instant the
// shaped rate says, whatever happened to operation i−1. When every worker is
// busy and the queue is full, the scheduler blocks, but the due times it
// hands out keep following the schedule, so the wait shows up as latency.
func (r *run) schedule(ctx context.Context, start, deadline time.Time, queue chan<- scheduled) {
	cfg := r.cfg
	gen := NewGenerator(cfg.Seed, r.genConfig())
	at := start
	for n := int64(0); cfg.Count == 0 || n < cfg.Count; n++ {
		frac := float64(at.Sub(start)) / float64(cfg.Duration)
		at = at.Add(time.Duration(float64(time.Second) / (cfg.Rate * shapeFactor(cfg.Shape, frac))))
		if !at.Before(deadline) {
			return
		}
		if d := at.Sub(cfg.Now()); d > 0 {
			// A plain sleep, not a timer and a select: the run's
			// context is checked on the send below.
			preciseSleep(d)
		}
		select {
		case queue <- scheduled{gen.Next(), at}:
		case <-ctx.Done():
			return
		}
	}
}

func (r *run) genConfig() GeneratorConfig {
	return GeneratorConfig{Mix: r.cfg.Mix, Vouchers: len(r.pop.Vouchers),
		Terminals: len(r.pop.Terminals), HotVouchers: r.cfg.HotVouchers, HotShare: r.cfg.HotShare}
}

// closedLoop is one terminal of the closed loop: it sends, waits for the
// answer, sends the next. Under the surge shape, worker w only works while
// it is among the share of workers the shape calls for.
func (r *run) closedLoop(ctx context.Context, w int, start, deadline time.Time) {
	cfg := r.cfg
	gen := NewGenerator(cfg.Seed+uint64(w)*0x100000001, r.genConfig())
	for ctx.Err() == nil {
		now := cfg.Now()
		if !now.Before(deadline) {
			return
		}
		frac := float64(now.Sub(start)) / float64(cfg.Duration)
		if float64(w) >= math.Ceil(float64(cfg.Workers)*shapeFactor(cfg.Shape, frac)) {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if cfg.Count > 0 && r.posOps.Add(1) > cfg.Count {
			return
		}
		op := gen.Next()
		r.execute(ctx, w, op, cfg.Now())
	}
}

// progress shows a bar over the timed phase until the returned function is
// called.
func (r *run) progress(start time.Time) func() {
	if r.cfg.Progress == nil {
		return func() {}
	}
	total := int64(r.cfg.Duration / time.Second)
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(r.cfg.Progress),
		progressbar.OptionSetDescription("timed phase"),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionSetPredictTime(false))
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				el := r.cfg.Now().Sub(start)
				ops := r.posDone()
				bar.Describe(fmt.Sprintf("%7.0f POS ops/s", float64(ops)/el.Seconds()))
				bar.Set64(min(int64(el/time.Second), total))
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
		bar.Finish()
		fmt.Fprintln(r.cfg.Progress)
	}
}

func (r *run) posDone() int64 {
	r.rec.mu.Lock()
	defer r.rec.mu.Unlock()
	var n int64
	for k := range kindCount {
		if k != KindQRMint {
			n += r.rec.mu.latency[k].TotalCount()
		}
	}
	return n
}

// wallet mints tokens for vouchers whose pool ran low.
func (r *run) wallet(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case v := <-r.lowQR:
			if tok, err := r.mint(v); err == nil {
				r.pool.put(v, tok)
			}
		}
	}
}

// token returns a QR token for voucher v from the pool, or mints one inline
// when the pool is empty, and how long that took.
func (r *run) token(v int) (qrToken, time.Duration, bool) {
	tok, left, ok := r.pool.take(v, r.cfg.Now())
	if left == 0 {
		select {
		case r.lowQR <- v:
		default:
		}
	}
	if ok {
		return tok, 0, true
	}
	r.inlineMints.Add(1)
	start := r.cfg.Now()
	tok, err := r.mint(v)
	return tok, r.cfg.Now().Sub(start), err == nil
}

// execute carries out one operation and records it. due is when it was
// meant to start: its scheduled instant in the open loop, now in the
// closed loop.
//
// A QR token minted inline, because the pool was empty, is the wallet's
// work, not the till's: its time is recorded under qr_mint and taken out of
// the operation's latency.
func (r *run) execute(ctx context.Context, w int, op Op, due time.Time) {
	kind, outcome, minting := r.perform(w, op)
	end := r.cfg.Now()
	r.rec.Record(kind, end, end.Sub(due)-minting, outcome)
}

// perform sends the operation and returns what kind it ended up as (a
// refund or retry with nothing earlier to draw from becomes a redemption
// by amount), its outcome and the time spent minting a token inline.
func (r *run) perform(w int, op Op) (Kind, string, time.Duration) {
	switch op.Kind {
	case KindRefund:
		if out, ok := r.refund(w, op); ok {
			return KindRefund, out, 0
		}
	case KindRetry:
		if out, ok := r.retry(op); ok {
			return KindRetry, out, 0
		}
	case KindBalance:
		out, minting := r.balance(op)
		return KindBalance, out, minting
	case KindRedeemBasket:
		out, minting := r.redeem(w, op)
		return KindRedeemBasket, out, minting
	}
	op.Kind = KindRedeemAmount
	if op.Amount == 0 {
		op.Amount = amountMin
	}
	out, minting := r.redeem(w, op)
	return KindRedeemAmount, out, minting
}

// send posts a money-moving request, resending it with the same key when
// the answer is lost.
func (r *run) send(path, token, key string, body []byte) (Response, error) {
	var resp Response
	var err error
	for range retriesMax + 1 {
		resp, err = r.client.Do("POST", path, token, key, body)
		if err == nil && resp.Status != 409 {
			return resp, nil
		}
		if err == nil && resp.ErrorCode() != "request_in_progress" {
			return resp, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return resp, err
}

func (r *run) key(w int, op Op) string {
	return r.id + "-w" + strconv.Itoa(w) + "-" + strconv.FormatUint(op.Seq, 10)
}

func (r *run) redeem(w int, op Op) (string, time.Duration) {
	tok, minting, ok := r.token(op.Voucher)
	if !ok {
		return "qr_mint_failed", minting
	}
	return r.redeemWith(w, op, r.pop.Vouchers[op.Voucher], tok), minting
}

func (r *run) redeemWith(w int, op Op, v Voucher, tok qrToken) string {
	term := r.pop.Terminals[op.Terminal]
	body := RedemptionBody(tok.qr, &op)
	key := r.key(w, op)

	resp, err := r.send("/v1/redemptions", term.Key, key, body)
	if err != nil {
		r.books.MarkUncertain(v.ID)
		return outcomeTransport
	}
	if stored(resp.Status) {
		r.remember(earlier{op.Terminal, "/v1/redemptions", key, body, resp.Status, resp.Body})
	}
	if resp.Status != 201 {
		code := outcomeOf(resp, nil, 201)
		unused := !stored(resp.Status) ||
			resp.Status == 402 && code != "qr_used" && code != "qr_expired" && code != "qr_invalid"
		if unused {
			r.pool.put(op.Voucher, tok)
		}
		return code
	}

	j, perr := fastjson.ParseBytes(resp.Body)
	if perr != nil {
		r.books.MarkUncertain(v.ID)
		return "unexpected"
	}
	approved := domain.Tiyn(j.GetInt64("approved"))
	if got := string(j.GetStringBytes("voucher_id")); got != v.ID {
		r.books.MarkUncertain(v.ID)
		return "unexpected"
	}
	r.books.Approve(v.ID, approved)
	if approved > 0 {
		r.addRefundable(refundable{id: string(j.GetStringBytes("redemption_id")),
			voucher: v.ID, store: term.Store, remaining: approved})
	}
	return outcomeApproved
}

func (r *run) balance(op Op) (string, time.Duration) {
	tok, minting, ok := r.token(op.Voucher)
	if !ok {
		return "qr_mint_failed", minting
	}
	term := r.pop.Terminals[op.Terminal]
	body := appendJSONString(append(make([]byte, 0, 120), `{"qr":`...), tok.qr)
	resp, err := r.client.Do("POST", "/v1/balance-inquiries", term.Key, "", append(body, '}'))
	if err == nil && resp.Status != 402 || err == nil && resp.ErrorCode() == "voucher_not_active" {
		r.pool.put(op.Voucher, tok)
	}
	return outcomeOf(resp, err, 200), minting
}

// refund returns part of an earlier approved redemption from a terminal of
// the same shop. ok is false when there is nothing to refund yet.
func (r *run) refund(w int, op Op) (string, bool) {
	red, amount, ok := r.reserveRefund(op.Pick, op.Amount)
	if !ok {
		return "", false
	}
	perStore := r.cfg.TerminalsPerStore
	termIdx := red.store*perStore + op.Terminal%perStore
	term := r.pop.Terminals[termIdx]
	body := []byte(`{"amount":` + strconv.FormatInt(int64(amount), 10) + `}`)
	key := r.key(w, op)
	path := "/v1/redemptions/" + red.id + "/refunds"

	resp, err := r.send(path, term.Key, key, body)
	if err != nil {
		r.books.MarkUncertain(red.voucher)
		return outcomeTransport, true
	}
	if stored(resp.Status) {
		r.remember(earlier{termIdx, path, key, body, resp.Status, resp.Body})
	}
	if resp.Status != 201 {
		r.releaseRefund(red, amount)
		return outcomeOf(resp, nil, 201), true
	}
	if string(fastjson.GetBytes(resp.Body, "credited_to")) == "voucher" {
		r.books.Refund(red.voucher, domain.Tiyn(fastjson.GetInt(resp.Body, "amount")))
	}
	return outcomeOK, true
}

// retry resends an earlier money-moving request with its key and body; the
// answer must be the first one, byte for byte, marked as replayed.
func (r *run) retry(op Op) (string, bool) {
	r.mu.Lock()
	if len(r.mu.retries) == 0 {
		r.mu.Unlock()
		return "", false
	}
	e := r.mu.retries[op.Pick%uint64(len(r.mu.retries))]
	r.mu.Unlock()

	resp, err := r.client.Do("POST", e.path, r.pop.Terminals[e.terminal].Key, e.key, e.body)
	switch {
	case err != nil:
		return outcomeTransport, true
	case !stored(resp.Status):
		// Shed before the key was looked at (rate limit, overload): not
		// an answer to compare.
		return outcomeOf(resp, nil, e.status), true
	case resp.Status != e.status || string(resp.Body) != string(e.answer) || !resp.Replayed:
		r.cfg.Logger.Warn("replay differs", "path", e.path, "key", e.key,
			"status", resp.Status, "first_status", e.status, "replayed", resp.Replayed)
		return outcomeReplayWrong, true
	}
	return outcomeOK, true
}

// stored reports whether the gateway keeps an answer of this status under
// its idempotency key: approvals and the declines of the money path. A
// request shed with 429 or 503, or refused as malformed, is not executed and
// not kept, so a retry of it runs afresh and is not a replay.
func stored(status int) bool {
	return status == 201 || status == 402 || status == 422
}

func (r *run) remember(e earlier) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.mu.retries) < retryRingMax {
		r.mu.retries = append(r.mu.retries, e)
		return
	}
	r.mu.retries[r.mu.retryAt] = e
	r.mu.retryAt = (r.mu.retryAt + 1) % retryRingMax
}

func (r *run) addRefundable(f refundable) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.mu.refunds) < refundRingMax {
		r.mu.refunds = append(r.mu.refunds, f)
		return
	}
	r.mu.refunds[r.mu.refundAt] = f
	r.mu.refundAt = (r.mu.refundAt + 1) % refundRingMax
}

// reserveRefund picks an earlier redemption and takes up to want of what
// remains refundable, so that concurrent refunds never ask for more than
// was approved.
func (r *run) reserveRefund(pick uint64, want domain.Tiyn) (refundable, domain.Tiyn, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.mu.refunds)
	for i := range min(n, 8) {
		f := &r.mu.refunds[(pick+uint64(i))%uint64(n)]
		if f.remaining > 0 {
			amount := min(want, f.remaining)
			f.remaining -= amount
			return *f, amount, true
		}
	}
	return refundable{}, 0, false
}

func (r *run) releaseRefund(red refundable, amount domain.Tiyn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.mu.refunds {
		if r.mu.refunds[i].id == red.id {
			r.mu.refunds[i].remaining += amount
			return
		}
	}
}
