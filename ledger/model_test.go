package ledger

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"azyq/domain"
)

// The randomized test runs long sequences of operations against the ledger
// and against a plain reference model written from the contract, comparing
// every answer, and restarts the ledger between them. A failure prints the
// seed; replay it with
//
//	go test ./ledger -run TestModel -seed N
//
// AZYQ_SOAK_OPS sets the number of operations (make soak runs a million).
var seedFlag = flag.Uint64("seed", 0, "seed of TestModel (0: random)")

// modelVoucher is the model's voucher.
type modelVoucher struct {
	id          VoucherID
	family      string
	month       domain.Month
	members     int
	face        domain.Tiyn
	balance     domain.Tiyn
	spent       domain.Tiyn
	lapsed      domain.Tiyn
	state       voucherState
	activatedAt time.Time
}

type modelRedemption struct {
	seq      uint64
	voucher  VoucherID
	store    string
	approved domain.Tiyn
	refunded domain.Tiyn
}

type modelMovement struct {
	kind    Kind
	seq     uint64
	voucher VoucherID
	store   string
	amount  domain.Tiyn
}

type modelIdem struct {
	fp      [32]byte
	resp    Response
	created time.Time
}

// model is the reference: no locks, no disk, no cleverness.
type model struct {
	prog        *domain.Programme
	vouchers    []*modelVoucher // by id − 1
	families    map[domain.Month]map[string]VoucherID
	redemptions map[uint64]*modelRedemption
	used        map[usedToken]bool
	accounts    map[string]domain.Tiyn
	seq         uint64
	period      uint64
	movements   map[uint64][]modelMovement // by period
	idem        map[string]modelIdem
	discounts   map[string]int64
}

func (m *model) status(v *modelVoucher, now time.Time) Status {
	switch v.state {
	case stateIssued:
		if now.Before(v.month.End(m.prog.Location)) {
			return StatusIssued
		}
	case stateActive:
		if now.Before(m.prog.SpendUntil(v.month)) {
			return StatusActive
		}
	}
	return StatusExpired
}

func (m *model) voucher(id VoucherID) *modelVoucher {
	if id == 0 || int(id) > len(m.vouchers) {
		return nil
	}
	return m.vouchers[id-1]
}

// issue applies an issuance and returns the voucher ids per row with their
// created flags, or the refusal code.
func (m *model) issue(month domain.Month, fams []Family) ([]VoucherID, []bool, Code) {
	if _, ok := m.prog.MRP[month.Year()]; !ok {
		return nil, nil, CodeMRPUnknown
	}
	for _, f := range fams {
		if f.Members < 1 || f.Members > 30 || !ValidID(f.FamilyID) {
			return nil, nil, CodeInvalid
		}
	}
	if m.families[month] == nil {
		m.families[month] = map[string]VoucherID{}
	}
	ids, created := make([]VoucherID, len(fams)), make([]bool, len(fams))
	for i, f := range fams {
		if id, ok := m.families[month][f.FamilyID]; ok {
			ids[i] = id
			continue
		}
		face := domain.Tiyn(m.prog.MRP[month.Year()] * 100 * int64(f.Members))
		v := &modelVoucher{id: VoucherID(len(m.vouchers) + 1), family: f.FamilyID, month: month,
			members: f.Members, face: face, balance: face}
		m.vouchers = append(m.vouchers, v)
		m.families[month][f.FamilyID] = v.id
		m.accounts[AccountProgramme] -= face
		ids[i], created[i] = v.id, true
	}
	return ids, created, CodeNone
}

func (m *model) activate(id VoucherID, now time.Time) Code {
	v := m.voucher(id)
	switch {
	case v == nil:
		return CodeNotFound
	case v.state == stateActive:
		return CodeNone
	case v.state == stateLapsed || !now.Before(v.month.End(m.prog.Location)):
		return CodeActivationWindowClosed
	case now.Before(v.month.Start(m.prog.Location)):
		return CodeActivationWindowNotOpen
	}
	v.state, v.activatedAt = stateActive, now
	return CodeNone
}

// redeem decides a redemption as the contract says and applies it.
func (m *model) redeem(req *RedeemRequest, now time.Time) (approved, balance domain.Tiyn, c Code) {
	if req.Amount < 0 || (req.Amount > 0) == (len(req.Lines) > 0) {
		return 0, 0, CodeInvalid
	}
	bp, ok := m.discounts[req.StoreID]
	if !ok {
		return 0, 0, CodeForbidden
	}
	requested := req.Amount
	if len(req.Lines) > 0 {
		eligible := false
		for _, ln := range req.Lines {
			if m.prog.Eligible(ln.Category) {
				eligible = true
				requested += ln.Amount - ln.Amount*domain.Tiyn(bp)/10_000
			}
		}
		if !eligible {
			return 0, 0, CodeNoEligibleItems
		}
		if requested == 0 {
			return 0, 0, CodeInvalid
		}
	}
	v := m.voucher(req.Token.Voucher)
	switch {
	case v == nil:
		return 0, 0, CodeQRInvalid
	case !now.Before(req.Token.Expires):
		return 0, 0, CodeQRExpired
	case m.used[usedToken{req.Token.Voucher, req.Token.Nonce}]:
		return 0, 0, CodeQRUsed
	}
	switch m.status(v, now) {
	case StatusIssued:
		return 0, 0, CodeVoucherNotActive
	case StatusExpired:
		return 0, 0, CodeVoucherExpired
	}
	approved = requested
	if v.balance < requested {
		if !req.Partial || v.balance == 0 {
			return 0, v.balance, CodeInsufficientFunds
		}
		approved = v.balance
	}
	v.balance -= approved
	v.spent += approved
	m.used[usedToken{req.Token.Voucher, req.Token.Nonce}] = true
	m.accounts[AccountStore(req.StoreID)] += approved
	m.seq++
	m.redemptions[m.seq] = &modelRedemption{seq: m.seq, voucher: v.id, store: req.StoreID, approved: approved}
	m.movements[m.period] = append(m.movements[m.period],
		modelMovement{KindRedemption, m.seq, v.id, req.StoreID, approved})
	return approved, v.balance, CodeNone
}

func (m *model) refund(seq uint64, store string, amount domain.Tiyn, now time.Time) (Credit, domain.Tiyn, Code) {
	if amount <= 0 || amount > domain.AmountMax {
		return 0, 0, CodeInvalid
	}
	if _, ok := m.discounts[store]; !ok {
		return 0, 0, CodeForbidden
	}
	r, ok := m.redemptions[seq]
	switch {
	case !ok:
		return 0, 0, CodeNotFound
	case r.store != store:
		return 0, 0, CodeForbidden
	case amount > r.approved-r.refunded:
		return 0, 0, CodeRefundExceedsRedemption
	}
	v := m.voucher(r.voucher)
	credit := CreditProgramme
	if m.status(v, now) == StatusActive {
		credit = CreditVoucher
		v.balance += amount
		v.spent -= amount
	} else {
		m.accounts[AccountProgramme] += amount
	}
	r.refunded += amount
	m.accounts[AccountStore(store)] -= amount
	m.seq++
	m.movements[m.period] = append(m.movements[m.period], modelMovement{KindRefund, m.seq, v.id, store, amount})
	return credit, v.balance, CodeNone
}

// lapseDue lapses every voucher of every month whose spending has ended.
func (m *model) lapseDue(now time.Time) {
	for _, v := range m.vouchers {
		if v.state != stateLapsed && !now.Before(m.prog.SpendUntil(v.month)) {
			m.accounts[AccountLapsed] += v.balance
			v.lapsed, v.balance, v.state = v.balance, 0, stateLapsed
		}
	}
}

// modelRun drives one randomized run.
type modelRun struct {
	t     *testing.T
	rng   *rand.Rand
	f     *fixture
	m     *model
	nonce uint64
	used  []Token // tokens the ledger approved, for reuse
	step  int
	op    string
	stats map[string]int // outcomes by operation, logged at the end
}

// count records an outcome for the run's summary.
func (r *modelRun) count(c Code) { r.stats[r.op+" "+c.String()]++ }

func (r *modelRun) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("step %d (%s) at %s: %s", r.step, r.op, r.f.clock.Now().Format(time.RFC3339), fmt.Sprintf(format, args...))
}

// TestModel compares the ledger with the reference model over a seeded
// random sequence of issuances, activations, redemptions by amount and by
// basket (partial or not, idempotent or not), refunds, balance inquiries,
// clock moves across month ends, lapses, cut-offs, prunes and restarts.
func TestModel(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = rand.Uint64()
	}
	ops := 3_000
	if testing.Short() || raceEnabled {
		ops = 1_000
	}
	if s := os.Getenv("AZYQ_SOAK_OPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("AZYQ_SOAK_OPS=%q: %v", s, err)
		}
		ops = n
	}
	t.Logf("seed %d, %d operations (replay: go test ./ledger -run 'TestModel$' -seed %d)", seed, ops, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FAILED with seed %d: replay with go test ./ledger -run 'TestModel$' -seed %d", seed, seed)
		}
	})
	runModel(t, seed, ops)
}

func runModel(t *testing.T, seed uint64, ops int) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	prog := domain.DefaultProgramme()
	for y := 2027; y <= 2999; y++ { // long soaks run the clock for decades
		prog.MRP[y] = 4_325 + int64(y-2026)*200
	}
	if rng.IntN(2) == 0 {
		prog.Grace = 48 * time.Hour
	}
	f := newFixtureWith(t, prog, nil)
	f.clock.Set("2026-10-29T12:00:00+05:00")
	if _, err := f.l.PutStore(testShop("S2", 0)); err != nil {
		t.Fatal(err)
	}
	m := &model{
		prog: prog, families: map[domain.Month]map[string]VoucherID{},
		redemptions: map[uint64]*modelRedemption{}, used: map[usedToken]bool{},
		accounts: map[string]domain.Tiyn{}, movements: map[uint64][]modelMovement{},
		idem: map[string]modelIdem{}, discounts: map[string]int64{testStore: 1000, "S2": 0},
		seq: f.l.seq.Load(), period: f.l.OpenPeriod(),
	}
	r := &modelRun{t: t, rng: rng, f: f, m: m, stats: map[string]int{}}

	type weighted struct {
		w  int
		op string
		fn func()
	}
	table := []weighted{
		{6, "issue", r.issue},
		{6, "activate", r.activate},
		{30, "redeem", r.redeem},
		{8, "refund", r.refund},
		{5, "balance", r.balance},
		{5, "voucher", r.checkVoucher},
		{6, "clock", r.advance},
		{2, "lapse", r.lapse},
		{2, "cut", r.cut},
		{1, "prune", r.prune},
		{1, "restart", r.restart},
		{2, "books", r.checkBooks},
	}
	total := 0
	for _, w := range table {
		total += w.w
	}
	for r.step = 0; r.step < ops; r.step++ {
		n := rng.IntN(total)
		for _, w := range table {
			if n < w.w {
				r.op = w.op
				w.fn()
				break
			}
			n -= w.w
		}
	}
	r.op = "final"
	r.restart()
	r.checkBooks()
	for id := range m.vouchers {
		r.compareVoucher(VoucherID(id + 1))
	}
	keys := slices.Sorted(maps.Keys(r.stats))
	summary := make([]string, len(keys))
	for i, k := range keys {
		summary[i] = fmt.Sprintf("%s=%d", k, r.stats[k])
	}
	t.Logf("%d vouchers, %d movements, %d periods; outcomes: %s",
		len(m.vouchers), m.seq, m.period, strings.Join(summary, " "))
}

func (r *modelRun) now() time.Time { return r.f.clock.Now() }

func (r *modelRun) pickVoucher() VoucherID {
	if len(r.m.vouchers) == 0 || r.rng.IntN(30) == 0 {
		return VoucherID(len(r.m.vouchers) + 1 + r.rng.IntN(3)) // not issued
	}
	// Favour recent vouchers: they are the ones that can still be spent.
	n := len(r.m.vouchers)
	lo := max(0, n-12)
	if r.rng.IntN(4) == 0 {
		lo = 0
	}
	return VoucherID(lo + r.rng.IntN(n-lo) + 1)
}

// pickActive returns a random voucher that is active now, or id if none is.
func (r *modelRun) pickActive(id VoucherID) VoucherID {
	var active []VoucherID
	for _, v := range r.m.vouchers[max(0, len(r.m.vouchers)-50):] {
		if r.m.status(v, r.now()) == StatusActive {
			active = append(active, v.id)
		}
	}
	if len(active) == 0 {
		return id
	}
	return active[r.rng.IntN(len(active))]
}

func (r *modelRun) issue() {
	month := domain.MonthOf(r.now(), r.m.prog.Location)
	switch r.rng.IntN(8) {
	case 0:
		month--
	case 1:
		month++
	}
	fams := make([]Family, 1+r.rng.IntN(3))
	for i := range fams {
		fams[i] = Family{FamilyID: fmt.Sprintf("F%d", r.rng.IntN(25)), Members: 1 + r.rng.IntN(30), City: "Pavlodar"}
		if r.rng.IntN(40) == 0 {
			fams[i].Members = 31
		}
	}
	got, err := r.f.l.Issue(month, fams)
	ids, created, c := r.m.issue(month, fams)
	if code(err) != c {
		r.fatalf("issue %s %+v: got %v, want %v", month, fams, err, c)
	}
	r.count(c)
	for i := range got {
		if got[i].Voucher.ID != ids[i] || got[i].Created != created[i] {
			r.fatalf("issue row %d: got %s created %v, want %s created %v", i, got[i].Voucher.ID, got[i].Created, ids[i], created[i])
		}
		r.compareView(got[i].Voucher)
	}
}

func (r *modelRun) activate() {
	id := r.pickVoucher()
	got, err := r.f.l.Activate(id)
	c := r.m.activate(id, r.now())
	if code(err) != c {
		r.fatalf("activate %s: got %v, want %v", id, err, c)
	}
	r.count(c)
	if err == nil {
		r.compareView(got)
	}
}

func (r *modelRun) token(id VoucherID) Token {
	switch n := r.rng.IntN(40); {
	case n == 0 && len(r.used) > 0:
		return r.used[r.rng.IntN(len(r.used))]
	case n == 1:
		r.nonce++
		return Token{Voucher: id, Nonce: r.nonce, Expires: r.now()}
	}
	r.nonce++
	return Token{Voucher: id, Nonce: r.nonce, Expires: r.now().Add(r.m.prog.QRLifetime)}
}

var modelCategories = []string{"bread", "milk", "sugar", "eggs", "", "vodka", "toys"}

func (r *modelRun) redeem() {
	id := r.pickVoucher()
	if r.rng.IntN(3) != 0 {
		id = r.pickActive(id)
	}
	req := &RedeemRequest{Token: r.token(id), StoreID: testStore, TerminalID: testTerminal, Partial: r.rng.IntN(3) == 0}
	if r.rng.IntN(3) == 0 {
		req.StoreID = "S2"
	}
	if r.rng.IntN(2) == 0 {
		req.Amount = domain.Tiyn(r.rng.IntN(200_000))
	} else {
		for range 1 + r.rng.IntN(4) {
			req.Lines = append(req.Lines, Line{SKU: "sku", Category: modelCategories[r.rng.IntN(len(modelCategories))],
				Amount: domain.Tiyn(r.rng.IntN(100_000))})
		}
	}
	if r.rng.IntN(50) == 0 {
		req.StoreID = "S9"
	}

	// Some requests carry an idempotency key from a small pool, so keys
	// come back with the same request and with another one.
	idem := len(req.Lines) > 0 || req.Amount > 0
	idem = idem && req.StoreID != "S9" && r.rng.IntN(3) == 0
	if idem {
		key := fmt.Sprintf("k%d", r.rng.IntN(40))
		fp := sha256.Sum256(fmt.Appendf(nil, "%v %s %d %v %v", req.Token, req.StoreID, req.Amount, req.Lines, req.Partial))
		if r.rng.IntN(4) == 0 {
			if prev, ok := r.m.idem[key]; ok {
				fp = prev.fp // the same request again
			}
		}
		if r.redeemIdempotent(req, key, fp) {
			return
		}
	}

	red, err := r.f.l.Redeem(req)
	r.checkRedemption(req, red, err)
}

// redeemIdempotent runs a request under an idempotency key and reports
// whether it was answered from the key's record.
func (r *modelRun) redeemIdempotent(req *RedeemRequest, key string, fp [32]byte) bool {
	res, resp, err := r.f.l.Reserve(testTerminal, key, fp)
	prev, known := r.m.idem[key]
	switch {
	case known && prev.fp != fp:
		if code(err) != CodeIdempotencyKeyReused {
			r.fatalf("key %s with another request: %v %v %v", key, res, resp, err)
		}
		r.count(CodeIdempotencyKeyReused)
		return true
	case known:
		if err != nil || resp == nil || resp.Status != prev.resp.Status || !bytes.Equal(resp.Body, prev.resp.Body) {
			r.fatalf("replay of %s: %+v %v, want %q", key, resp, err, prev.resp.Body)
		}
		r.stats["redeem replayed"]++
		return true
	case err != nil || res == nil:
		r.fatalf("reserve new key %s: %v %v", key, resp, err)
	}
	defer res.Release()
	var rendered Response
	req.Idem = res
	req.Render = func(red *Redemption, ref *Refusal) Response {
		if ref != nil {
			rendered = Response{Status: 402, Body: fmt.Appendf(nil, "%s %d", ref.Code, ref.Balance)}
		} else {
			rendered = Response{Status: 201, Body: fmt.Appendf(nil, "%s %d %d", red.ID(), red.Approved, red.Balance)}
		}
		return rendered
	}
	red, err := r.f.l.Redeem(req)
	r.checkRedemption(req, red, err)
	if rendered.Status == 0 {
		r.fatalf("idempotent request %s answered without a stored response: %v", key, err)
	}
	r.m.idem[key] = modelIdem{fp: fp, resp: rendered, created: r.now()}
	return true
}

func (r *modelRun) checkRedemption(req *RedeemRequest, red *Redemption, err error) {
	approved, balance, c := r.m.redeem(req, r.now())
	if code(err) != c {
		r.fatalf("redeem %+v: got %v, want %v", req, err, c)
	}
	r.count(c)
	if c == CodeInsufficientFunds && AsRefusal(err).Balance != balance {
		r.fatalf("insufficient_funds carries %d, want %d", AsRefusal(err).Balance, balance)
	}
	if c != CodeNone {
		return
	}
	if red.Approved != approved || red.Balance != balance || red.Seq != r.m.seq || red.Period != r.m.period {
		r.fatalf("redemption %+v, want approved %d balance %d seq %d period %d", red, approved, balance, r.m.seq, r.m.period)
	}
	if req.Lines != nil {
		var covered domain.Tiyn
		for _, pl := range red.Lines {
			covered += pl.Covered
		}
		if covered != approved {
			r.fatalf("lines cover %d of approved %d", covered, approved)
		}
	}
	r.used = append(r.used, req.Token)
}

func (r *modelRun) refund() {
	var seq uint64
	if len(r.m.redemptions) > 0 && r.rng.IntN(20) != 0 {
		// Mostly recent redemptions, which still have something to refund.
		seq = max(1, r.m.seq-uint64(r.rng.IntN(10)))
	} else {
		seq = r.m.seq + 1 + uint64(r.rng.IntN(3))
	}
	store := testStore
	if red, ok := r.m.redemptions[seq]; ok && r.rng.IntN(10) != 0 {
		store = red.store
	} else if r.rng.IntN(2) == 0 {
		store = "S2"
	}
	amount := domain.Tiyn(r.rng.IntN(60_000))
	got, err := r.f.l.Refund(&RefundRequest{Redemption: seq, StoreID: store, TerminalID: testTerminal, Amount: amount})
	credit, balance, c := r.m.refund(seq, store, amount, r.now())
	if code(err) != c {
		r.fatalf("refund %d of %s by %s: got %v, want %v", amount, RedemptionID(seq), store, err, c)
	}
	r.count(c)
	if c == CodeNone && (got.CreditedTo != credit || got.Balance != balance || got.Seq != r.m.seq || got.Period != r.m.period) {
		r.fatalf("refund %+v, want credit %s balance %d seq %d", got, credit, balance, r.m.seq)
	}
}

func (r *modelRun) balance() {
	tok := r.token(r.pickVoucher())
	id := tok.Voucher
	got, err := r.f.l.Balance(tok)
	want := CodeNone
	switch {
	case r.m.voucher(id) == nil:
		want = CodeQRInvalid
	case !r.now().Before(tok.Expires):
		want = CodeQRExpired
	case r.m.used[usedToken{tok.Voucher, tok.Nonce}]:
		want = CodeQRUsed
	}
	if code(err) != want {
		r.fatalf("balance %s: got %v, want %v (ledger has %d vouchers, model %d)", id, err, want, r.f.l.vouchers.len(), len(r.m.vouchers))
	}
	r.count(want)
	if err == nil {
		r.compareView(got)
	}
}

func (r *modelRun) checkVoucher() {
	id := r.pickVoucher()
	if r.m.voucher(id) == nil {
		if _, err := r.f.l.Voucher(id); code(err) != CodeNotFound {
			r.fatalf("voucher %s: %v, want not_found", id, err)
		}
		return
	}
	r.compareVoucher(id)
	if red, ok := r.m.redemptions[r.m.seq]; ok {
		got, err := r.f.l.Redemption(red.seq)
		if err != nil || got.Approved != red.approved || got.Refunded != red.refunded || got.Voucher != red.voucher || got.StoreID != red.store {
			r.fatalf("redemption %d: %+v %v, want %+v", red.seq, got, err, red)
		}
	}
}

func (r *modelRun) compareVoucher(id VoucherID) {
	got, err := r.f.l.Voucher(id)
	if err != nil {
		r.fatalf("voucher %s: %v", id, err)
	}
	r.compareView(got)
}

func (r *modelRun) compareView(got Voucher) {
	r.t.Helper()
	v := r.m.voucher(got.ID)
	if v == nil {
		r.fatalf("ledger has voucher %s, the model does not", got.ID)
	}
	if got.FamilyID != v.family || got.Month != v.month || got.Members != v.members || got.FaceValue != v.face ||
		got.Balance != v.balance || got.Spent != v.spent || got.Lapsed != v.lapsed ||
		got.Status != r.m.status(v, r.now()) || !got.ActivatedAt.Equal(v.activatedAt) {
		r.fatalf("voucher %+v, model %+v (status %s)", got, *v, r.m.status(v, r.now()))
	}
}

// advance moves the clock, often to just before or just after a month's end.
func (r *modelRun) advance() {
	now := r.now()
	end := domain.MonthOf(now, r.m.prog.Location).End(r.m.prog.Location)
	switch n := r.rng.IntN(40); {
	case n == 0:
		r.f.clock.SetTime(end.Add(-time.Second))
	case n == 1:
		r.f.clock.SetTime(end)
	case n == 2:
		r.f.clock.SetTime(end.Add(r.m.prog.Grace))
	case n < 10:
		r.f.clock.Add(time.Duration(1+r.rng.IntN(12)) * time.Hour)
	default:
		r.f.clock.Add(time.Duration(1+r.rng.IntN(600)) * time.Second)
	}
	if !r.now().After(now) {
		r.f.clock.SetTime(now.Add(time.Second))
	}
}

func (r *modelRun) lapse() {
	if err := r.f.l.LapseDue(); err != nil {
		r.fatalf("LapseDue: %v", err)
	}
	r.m.lapseDue(r.now())
}

func (r *modelRun) cut() {
	p, err := r.f.l.Cut()
	if err != nil || p != r.m.period {
		r.fatalf("cut: %d, %v, want %d", p, err, r.m.period)
	}
	var got []modelMovement
	err = r.f.l.Movements(p, p, func(mv *Movement) error {
		if mv.Period != p {
			r.fatalf("movement %s of period %d in period %d", mv.ID(), mv.Period, p)
		}
		got = append(got, modelMovement{mv.Kind, mv.Seq, mv.Voucher, mv.StoreID, mv.Amount})
		return nil
	})
	if err != nil {
		r.fatalf("movements: %v", err)
	}
	if want := r.m.movements[p]; !slices.Equal(got, want) {
		r.fatalf("period %d holds %v, want %v", p, got, want)
	}
	r.m.period++
}

func (r *modelRun) prune() {
	if _, err := r.f.l.Prune(); err != nil {
		r.fatalf("prune: %v", err)
	}
	cutoff := r.now().Add(-r.m.prog.IdempotencyRetention)
	for k, rec := range r.m.idem {
		if rec.created.Before(cutoff) {
			delete(r.m.idem, k)
		}
	}
}

func (r *modelRun) restart() {
	r.f.reopen()
	if got := r.f.l.seq.Load(); got != r.m.seq {
		r.fatalf("sequence %d after restart, want %d", got, r.m.seq)
	}
	if got := r.f.l.OpenPeriod(); got != r.m.period {
		r.fatalf("open period %d after restart, want %d", got, r.m.period)
	}
}

func (r *modelRun) checkBooks() {
	if err := r.f.l.CheckBooks(); err != nil {
		r.fatalf("%v", err)
	}
	books := r.f.l.Books()
	for name, want := range r.m.accounts {
		if got := books.Accounts[name]; got != want {
			r.fatalf("account %s = %d, want %d", name, got, want)
		}
	}
	if books.VoucherCount != len(r.m.vouchers) {
		r.fatalf("%d vouchers, want %d", books.VoucherCount, len(r.m.vouchers))
	}
}
