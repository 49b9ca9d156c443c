package settlement

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"

	"azyq/domain"
	"azyq/ledger"
)

// clock is a settable clock shared by the ledger and the settlement.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// fixture is a ledger and a settlement over one data directory, with shops
// and a clock.
type fixture struct {
	t     testing.TB
	dir   string
	fs    vfs.FS
	prog  *domain.Programme
	clock *clock
	l     *ledger.Ledger
	s     *Settlement
}

func newFixture(t testing.TB) *fixture {
	f := &fixture{t: t, dir: t.TempDir(), prog: domain.DefaultProgramme(),
		clock: &clock{t: mustTime("2026-12-03T10:00:00+05:00")}}
	f.open()
	return f
}

func (f *fixture) open() {
	f.t.Helper()
	l, err := ledger.Open(ledger.Config{Dir: f.dir, FS: f.fs, Programme: f.prog, Now: f.clock.Now})
	if err != nil {
		f.t.Fatal(err)
	}
	f.l = l
	f.t.Cleanup(func() { l.Close() })
	s, err := Open(Config{Ledger: l})
	if err != nil {
		f.t.Fatal(err)
	}
	f.s = s
}

func (f *fixture) reopen() {
	f.t.Helper()
	f.l.Close()
	f.open()
}

// shop adds a shop with valid identifiers at the given bank.
func (f *fixture) shop(id, bic string) {
	f.t.Helper()
	n := uint64(0)
	for _, c := range id {
		n = n*31 + uint64(c)
	}
	bin, ok := "", false
	for i := 0; !ok; i++ {
		bin, ok = domain.BINWithCheck(fmt.Sprintf("%011d", (n+uint64(i))%100_000_000_000))
	}
	st := ledger.Store{
		ID: id, Name: "Shop " + id + " & Sons <Ltd>", BIN: bin, City: "Pavlodar", BankBIC: bic,
		IBAN: domain.IBANWithCheck("125", fmt.Sprintf("KZT%010d", n%10_000_000_000)), DiscountBP: 1000,
	}
	if _, err := f.l.PutStore(st); err != nil {
		f.t.Fatal(err)
	}
}

// vouchers issues and activates n vouchers worth 30 MRP each.
func (f *fixture) vouchers(prefix string, n int) []ledger.VoucherID {
	f.t.Helper()
	m := domain.MonthOf(f.clock.Now(), f.prog.Location)
	fams := make([]ledger.Family, n)
	for i := range fams {
		fams[i] = ledger.Family{FamilyID: fmt.Sprintf("%s-%d", prefix, i), Members: 30, City: "Pavlodar"}
	}
	out, err := f.l.Issue(m, fams)
	if err != nil {
		f.t.Fatal(err)
	}
	ids := make([]ledger.VoucherID, n)
	for i, o := range out {
		ids[i] = o.Voucher.ID
		if _, err := f.l.Activate(o.Voucher.ID); err != nil {
			f.t.Fatal(err)
		}
	}
	return ids
}

var nonce atomic.Uint64

func (f *fixture) redeem(v ledger.VoucherID, store string, amount domain.Tiyn) *ledger.Redemption {
	f.t.Helper()
	r, err := f.l.Redeem(&ledger.RedeemRequest{
		Token:   ledger.Token{Voucher: v, Nonce: nonce.Add(1), Expires: f.clock.Now().Add(time.Minute)},
		StoreID: store, TerminalID: "T-" + store, Amount: amount,
	})
	if err != nil {
		f.t.Fatalf("redeem %d at %s: %v", amount, store, err)
	}
	return r
}

func (f *fixture) refund(red *ledger.Redemption, amount domain.Tiyn) *ledger.Refund {
	f.t.Helper()
	r, err := f.l.Refund(&ledger.RefundRequest{Redemption: red.Seq, StoreID: red.StoreID,
		TerminalID: "T-" + red.StoreID, Amount: amount})
	if err != nil {
		f.t.Fatalf("refund %d of %s: %v", amount, red.ID(), err)
	}
	return r
}

func (f *fixture) cutoff() *Cutoff {
	f.t.Helper()
	c, err := f.s.Cutoff()
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

func (f *fixture) batch(id string) *Batch {
	f.t.Helper()
	b, err := f.s.Batch(id)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// lines reads a batch's lines.csv back as rows of fields.
func (f *fixture) lines(b *Batch) [][]string {
	f.t.Helper()
	var buf bytes.Buffer
	if err := f.s.WriteLines(&buf, b); err != nil {
		f.t.Fatal(err)
	}
	sc := bufio.NewScanner(&buf)
	if !sc.Scan() || sc.Text()+"\n" != LinesHeader {
		f.t.Fatalf("lines.csv of %s: header %q", b.ID, sc.Text())
	}
	var rows [][]string
	for sc.Scan() {
		rows = append(rows, strings.Split(sc.Text(), ","))
	}
	return rows
}

// checkBatch verifies a batch's arithmetic (invariant 5 and the carry
// rule) and that its lines add up to its shops' totals.
func (f *fixture) checkBatch(b *Batch) {
	f.t.Helper()
	var gross, refunds, net domain.Tiyn
	var reds, refs int64
	byStore := map[string]*StoreTotal{}
	for i := range b.Stores {
		st := &b.Stores[i]
		if st.Net != st.CarriedIn+st.Gross-st.Refunds || st.Paid != max(st.Net, 0) || st.CarriedIn > 0 {
			f.t.Fatalf("batch %s store %s: %+v", b.ID, st.StoreID, st)
		}
		gross, refunds, net = gross+st.Gross, refunds+st.Refunds, net+st.Paid
		reds, refs = reds+st.RedemptionCount, refs+st.RefundCount
		byStore[st.StoreID] = &StoreTotal{}
	}
	if b.Gross != gross || b.Refunds != refunds || b.Net != net || b.RedemptionCount != reds ||
		b.RefundCount != refs || b.StoreCount != len(b.Stores) {
		f.t.Fatalf("batch %s totals disagree with its shops: %+v", b.ID, b)
	}
	for _, row := range f.lines(b) {
		amount, _ := strconv.ParseInt(row[6], 10, 64)
		t := byStore[row[3]]
		if t == nil {
			f.t.Fatalf("batch %s has a line of store %s it does not list", b.ID, row[3])
		}
		if row[0] == "redemption" {
			t.RedemptionCount++
			t.Gross += domain.Tiyn(amount)
		} else {
			t.RefundCount++
			t.Refunds += domain.Tiyn(amount)
		}
	}
	for _, st := range b.Stores {
		got := byStore[st.StoreID]
		if got.Gross != st.Gross || got.Refunds != st.Refunds ||
			got.RedemptionCount != st.RedemptionCount || got.RefundCount != st.RefundCount {
			f.t.Fatalf("batch %s store %s: lines give %+v, batch says %+v", b.ID, st.StoreID, got, st)
		}
	}
}

// TestCutoffOneBatchPerBank protects the shape of a cut-off: one batch per
// bank that had movements, only shops with movements listed, totals per
// the contract, and no batch at all when nothing moved.
func TestCutoffOneBatchPerBank(t *testing.T) {
	f := newFixture(t)
	f.shop("S1", "HSBKKZKX")
	f.shop("S2", "HSBKKZKX")
	f.shop("S3", "KCJBKZKX")
	f.shop("S4", "CASPKZKA") // no movements: no batch for its bank
	f.shop("S5", "HSBKKZKX") // no movements: not listed
	v := f.vouchers("F", 2)

	r1 := f.redeem(v[0], "S1", 100_000)
	f.redeem(v[1], "S1", 50_000)
	f.refund(r1, 30_000)
	f.redeem(v[0], "S2", 7_000)
	f.redeem(v[1], "S3", 1_234_567)

	c := f.cutoff()
	if len(c.Batches) != 2 {
		t.Fatalf("cut-off %+v: want 2 batches", c)
	}
	hsbk, kcjb := f.batch(c.Batches[0]), f.batch(c.Batches[1])
	if hsbk.BankBIC != "HSBKKZKX" || kcjb.BankBIC != "KCJBKZKX" {
		t.Fatalf("banks %s %s", hsbk.BankBIC, kcjb.BankBIC)
	}
	want := []StoreTotal{
		{StoreID: "S1", RedemptionCount: 2, RefundCount: 1, Gross: 150_000, Refunds: 30_000, Net: 120_000, Paid: 120_000},
		{StoreID: "S2", RedemptionCount: 1, Gross: 7_000, Net: 7_000, Paid: 7_000},
	}
	if len(hsbk.Stores) != len(want) {
		t.Fatalf("HSBK stores: %+v", hsbk.Stores)
	}
	for i, w := range want {
		got := hsbk.Stores[i]
		got.Name, got.BIN, got.IBAN = "", "", ""
		if got != w {
			t.Errorf("store line %d: got %+v, want %+v", i, got, w)
		}
	}
	if hsbk.Gross != 157_000 || hsbk.Refunds != 30_000 || hsbk.Net != 127_000 || hsbk.Status != StatusReady {
		t.Errorf("HSBK batch: %+v", hsbk)
	}
	f.checkBatch(hsbk)
	f.checkBatch(kcjb)
	if err := f.s.CheckCarries(); err != nil {
		t.Fatal(err)
	}
	accounts := f.l.Accounts()
	if accounts[ledger.AccountBank("HSBKKZKX")] != 127_000 || accounts[ledger.AccountBank("KCJBKZKX")] != 1_234_567 {
		t.Errorf("bank accounts: %v", accounts)
	}

	// Nothing moved since: a cut-off with no batch.
	if c := f.cutoff(); len(c.Batches) != 0 {
		t.Fatalf("empty cut-off made batches %v", c.Batches)
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestCarryOver protects the rule that a shop is never paid a negative
// amount: its negative net carries into its next batch as carried_in, the
// payable account holds exactly the carry, and it survives a restart.
func TestCarryOver(t *testing.T) {
	f := newFixture(t)
	f.shop("S1", "HSBKKZKX")
	v := f.vouchers("F", 1)

	red := f.redeem(v[0], "S1", 1_000)
	b1 := f.batch(f.cutoff().Batches[0])
	if b1.Stores[0].Paid != 1_000 {
		t.Fatalf("first batch: %+v", b1.Stores[0])
	}

	// Period 2: goods back, more than sold in it.
	f.refund(red, 600)
	b2 := f.batch(f.cutoff().Batches[0])
	if s := b2.Stores[0]; s.CarriedIn != 0 || s.Net != -600 || s.Paid != 0 || b2.Net != 0 {
		t.Fatalf("second batch: %+v", b2)
	}
	if err := f.s.CheckCarries(); err != nil {
		t.Fatal(err)
	}
	f.reopen()

	// Period 3: not enough to cover the carry; period 4: covers it.
	f.redeem(v[0], "S1", 400)
	b3 := f.batch(f.cutoff().Batches[0])
	if s := b3.Stores[0]; s.CarriedIn != -600 || s.Net != -200 || s.Paid != 0 {
		t.Fatalf("third batch: %+v", s)
	}
	f.redeem(v[0], "S1", 500)
	b4 := f.batch(f.cutoff().Batches[0])
	if s := b4.Stores[0]; s.CarriedIn != -200 || s.Net != 300 || s.Paid != 300 {
		t.Fatalf("fourth batch: %+v", s)
	}
	for _, b := range []*Batch{b1, b2, b3, b4} {
		f.checkBatch(b)
	}
	if err := f.s.CheckCarries(); err != nil {
		t.Fatal(err)
	}
	if got := f.l.Accounts()[ledger.AccountBank("HSBKKZKX")]; got != 1_300 {
		t.Fatalf("bank paid %d, want 1300 = 1000 + 400 + 500 - 600", got)
	}

	// A batch that pays nobody has a payment file without transactions.
	doc := parsePayments(t, f.prog, b2)
	if doc.Init.GroupHeader.NumberOfTxs != 0 || len(doc.Init.Payments) != 0 ||
		doc.Init.GroupHeader.ControlSum != "0.00" {
		t.Fatalf("payments of a batch paying nobody: %+v", doc.Init)
	}
}

// TestConcurrentCutoffs protects invariant 1: redemptions and refunds
// racing repeated cut-offs each land in exactly one batch, and the batch
// sums equal the movements.
func TestConcurrentCutoffs(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SETTLEMENT_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (replay with SETTLEMENT_SEED=%d)", seed, seed)

	f := newFixture(t)
	banks := []string{"HSBKKZKX", "KCJBKZKX", "CASPKZKA"}
	for i := range 6 {
		f.shop(fmt.Sprintf("S%d", i), banks[i%len(banks)])
	}
	const workers, perWorker = 8, 150
	v := f.vouchers("F", workers)

	// Every approved movement, by id, with its amount.
	var mu sync.Mutex
	want := map[string]domain.Tiyn{}
	record := func(id string, amount domain.Tiyn) {
		mu.Lock()
		want[id] = amount
		mu.Unlock()
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	var cutoffs []*Cutoff
	cutErr := make(chan error, 1)
	go func() {
		defer close(cutErr)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := f.s.Cutoff()
			if err != nil {
				cutErr <- err
				return
			}
			cutoffs = append(cutoffs, c)
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			var reds []*ledger.Redemption
			for range perWorker {
				store := fmt.Sprintf("S%d", rng.IntN(6))
				if len(reds) > 0 && rng.IntN(4) == 0 {
					red := reds[rng.IntN(len(reds))]
					ref, err := f.l.Refund(&ledger.RefundRequest{Redemption: red.Seq, StoreID: red.StoreID,
						TerminalID: "T", Amount: domain.Tiyn(1 + rng.IntN(50))})
					if err == nil {
						record(ref.ID(), ref.Amount)
					} else if ledger.AsRefusal(err) == nil {
						t.Error(err)
						return
					}
					continue
				}
				red, err := f.l.Redeem(&ledger.RedeemRequest{
					Token:   ledger.Token{Voucher: v[w], Nonce: nonce.Add(1), Expires: f.clock.Now().Add(time.Minute)},
					StoreID: store, TerminalID: "T", Amount: domain.Tiyn(50 + rng.IntN(1000)),
				})
				if err != nil {
					t.Error(err)
					return
				}
				record(red.ID(), red.Approved)
				reds = append(reds, red)
			}
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-cutErr; err != nil {
		t.Fatal(err)
	}
	cutoffs = append(cutoffs, f.cutoff())
	t.Logf("%d movements, %d cut-offs", len(want), len(cutoffs))

	// Every movement exactly once, in a batch of its shop's bank.
	seen := map[string]int{}
	for _, c := range cutoffs {
		for _, id := range c.Batches {
			b := f.batch(id)
			f.checkBatch(b)
			for _, row := range f.lines(b) {
				seen[row[1]]++
				amount, _ := strconv.ParseInt(row[6], 10, 64)
				if want[row[1]] != domain.Tiyn(amount) {
					t.Fatalf("line %v: approved amount was %d", row, want[row[1]])
				}
				n, _ := strconv.Atoi(row[3][1:])
				if banks[n%len(banks)] != b.BankBIC {
					t.Fatalf("line %v in batch of bank %s", row, b.BankBIC)
				}
			}
		}
	}
	for id := range want {
		if seen[id] != 1 {
			t.Fatalf("movement %s is in %d batches", id, seen[id])
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("batches hold %d movements, %d were approved", len(seen), len(want))
	}
	if err := f.s.CheckCarries(); err != nil {
		t.Fatal(err)
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestRestartBetweenCutAndBatches protects invariant 2: periods cut but
// never settled (a crash between ledger.Cut and the batches' commit) are
// covered by the next cut-off after a restart, and batches survive
// restarts unchanged.
func TestRestartBetweenCutAndBatches(t *testing.T) {
	f := newFixture(t)
	f.shop("S1", "HSBKKZKX")
	v := f.vouchers("F", 1)

	f.redeem(v[0], "S1", 100)
	first := f.batch(f.cutoff().Batches[0])
	before, _ := json.Marshal(first)

	r := f.redeem(v[0], "S1", 200)
	if _, err := f.l.Cut(); err != nil { // the crash comes right after this
		t.Fatal(err)
	}
	f.redeem(v[0], "S1", 300)
	f.reopen()
	f.refund(r, 50)

	c := f.cutoff()
	b := f.batch(c.Batches[0])
	if b.RedemptionCount != 2 || b.RefundCount != 1 || b.Gross != 500 || b.Refunds != 50 || b.Net != 450 {
		t.Fatalf("batch after restart: %+v", b)
	}
	if c.FromPeriod != first.ToPeriod+1 || c.ToPeriod != c.FromPeriod+1 {
		t.Fatalf("cut-off periods %d-%d after batch of %d-%d", c.FromPeriod, c.ToPeriod, first.FromPeriod, first.ToPeriod)
	}
	if !b.PeriodStart.Equal(first.PeriodEnd) {
		t.Fatalf("period start %s, previous end %s", b.PeriodStart, first.PeriodEnd)
	}
	f.checkBatch(b)

	f.reopen()
	after, _ := json.Marshal(f.batch(first.ID))
	if !bytes.Equal(before, after) {
		t.Fatalf("batch changed across restarts:\n%s\n%s", before, after)
	}
	if err := f.s.CheckCarries(); err != nil {
		t.Fatal(err)
	}
}

// TestSchedule protects scheduled cut-offs in the programme's zone with an
// injected clock: due exactly at the local time of day, not twice for one
// slot, and one make-up cut-off for slots missed while the gateway was down.
func TestSchedule(t *testing.T) {
	f := newFixture(t)
	var err error
	f.prog, err = domain.ParseProgramme([]byte(`{"time_zone": "Asia/Almaty", "cutoff_schedule": ["12:00:00", "23:59:59"]}`))
	if err != nil {
		t.Fatal(err)
	}
	f.reopen()
	f.clock.Set(mustTime("2026-12-03T10:00:00+05:00"))
	f.s.cut.meta.LastCutoffAt = f.clock.Now() // as if the last cut-off ran now
	f.shop("S1", "HSBKKZKX")
	v := f.vouchers("F", 1)
	f.redeem(v[0], "S1", 100)

	if got := f.s.NextDue(); !got.Equal(mustTime("2026-12-03T07:00:00Z")) {
		t.Fatalf("next due %s, want 12:00 Almaty", got)
	}
	step := func(at string, wantRun bool) *Cutoff {
		t.Helper()
		f.clock.Set(mustTime(at))
		c, err := f.s.RunDue()
		if err != nil {
			t.Fatal(err)
		}
		if (c != nil) != wantRun {
			t.Fatalf("at %s: ran %v, want %v", at, c != nil, wantRun)
		}
		return c
	}
	step("2026-12-03T11:59:59+05:00", false)
	if c := step("2026-12-03T12:00:00+05:00", true); len(c.Batches) != 1 {
		t.Fatalf("noon cut-off: %+v", c)
	}
	step("2026-12-03T12:00:00+05:00", false)
	step("2026-12-03T23:59:58+05:00", false)
	step("2026-12-03T18:59:59Z", true) // 23:59:59 in Almaty

	// Down for two days: one cut-off at start-up covers the missed slots.
	f.redeem(v[0], "S1", 200)
	f.reopen()
	c := step("2026-12-06T09:00:00+05:00", true)
	if b := f.batch(c.Batches[0]); b.Gross != 200 {
		t.Fatalf("make-up batch: %+v", b)
	}
	step("2026-12-06T09:00:01+05:00", false)
	if got := f.s.NextDue(); !got.Equal(mustTime("2026-12-06T12:00:00+05:00")) {
		t.Fatalf("next due after make-up %s", got)
	}
}

func parsePayments(t *testing.T, p *domain.Programme, b *Batch) *Document {
	t.Helper()
	var buf bytes.Buffer
	if err := WritePayments(&buf, p, b); err != nil {
		t.Fatal(err)
	}
	var doc Document
	if err := xml.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatalf("payments.xml does not parse: %v\n%s", err, buf.Bytes())
	}
	if doc.XMLName.Space != PainNamespace || doc.XMLName.Local != "Document" {
		t.Fatalf("root element %v", doc.XMLName)
	}
	return &doc
}

// TestPayments protects payments.xml: it parses back, and its counts,
// control sums, amounts, accounts and end-to-end ids agree with the batch.
func TestPayments(t *testing.T) {
	f := newFixture(t)
	long := strings.Repeat("x", 64)
	for _, id := range []string{"S1", "S2", "S3", long} {
		f.shop(id, "HSBKKZKX")
	}
	v := f.vouchers("F", 1)
	f.redeem(v[0], "S1", 123_456)
	f.redeem(v[0], "S2", 1)
	r := f.redeem(v[0], "S3", 500)
	f.refund(r, 500) // net 0: no transfer
	f.redeem(v[0], long, 99_999_99)
	b := f.batch(f.cutoff().Batches[0])

	doc := parsePayments(t, f.prog, b)
	gh := doc.Init.GroupHeader
	if gh.NumberOfTxs != 3 || gh.ControlSum != FormatKZT(b.Net) || gh.MsgID != b.ID {
		t.Fatalf("group header %+v, batch net %d", gh, b.Net)
	}
	if len(doc.Init.Payments) != 1 {
		t.Fatalf("%d payment blocks", len(doc.Init.Payments))
	}
	pay := doc.Init.Payments[0]
	if pay.DebtorAccount.IBAN != f.prog.Payer.IBAN || pay.DebtorAgent.BIC != f.prog.Payer.BIC ||
		pay.NumberOfTxs != 3 || pay.ControlSum != gh.ControlSum {
		t.Fatalf("payment block %+v", pay)
	}
	var sum domain.Tiyn
	ids := map[string]bool{}
	paid := map[string]StoreTotal{}
	for _, st := range b.Stores {
		paid[st.IBAN] = st
	}
	for _, tx := range pay.Transfers {
		amount, err := ParseKZT(tx.Amount.Value)
		if err != nil || tx.Amount.Currency != "KZT" {
			t.Fatalf("amount %+v: %v", tx.Amount, err)
		}
		st := paid[tx.CreditorAccount.IBAN]
		if amount != st.Paid || tx.Creditor.Name != st.Name || tx.Creditor.ID.OrgID.Other.ID != st.BIN ||
			tx.CreditorAgent.BIC != b.BankBIC {
			t.Fatalf("transfer %+v for store %+v", tx, st)
		}
		if len(tx.EndToEndID) > 35 || ids[tx.EndToEndID] || tx.EndToEndID != EndToEndID(b.ID, st.StoreID) {
			t.Fatalf("end-to-end id %q", tx.EndToEndID)
		}
		ids[tx.EndToEndID] = true
		sum += amount
	}
	if sum != b.Net {
		t.Fatalf("transfers sum to %d, batch net %d", sum, b.Net)
	}
}

// TestFormatKZT protects the tiyn-to-tenge rendering, which never goes
// through a float.
func TestFormatKZT(t *testing.T) {
	for _, c := range []struct {
		in   domain.Tiyn
		want string
	}{
		{0, "0.00"}, {1, "0.01"}, {10, "0.10"}, {123456, "1234.56"},
		{domain.AmountMax, "10000000000000.00"}, {9_007_199_254_740_993, "90071992547409.93"},
	} {
		if got := FormatKZT(c.in); got != c.want {
			t.Errorf("FormatKZT(%d) = %q, want %q", c.in, got, c.want)
		}
		if back, err := ParseKZT(c.want); err != nil || back != c.in && c.in <= domain.AmountMax {
			t.Errorf("ParseKZT(%q) = %d, %v", c.want, back, err)
		}
	}
}

// TestAcknowledge protects acknowledgement semantics: the same reference
// returns the same batch, another is a conflict, bad input changes
// nothing, and the acknowledgement survives a restart.
func TestAcknowledge(t *testing.T) {
	f := newFixture(t)
	f.shop("S1", "HSBKKZKX")
	v := f.vouchers("F", 1)
	f.redeem(v[0], "S1", 100)
	id := f.cutoff().Batches[0]

	for _, ref := range []string{"", strings.Repeat("r", 141), "tab\there", "кириллица"} {
		if _, err := f.s.Acknowledge(id, ref); ledger.AsRefusal(err) == nil || ledger.AsRefusal(err).Code != ledger.CodeInvalid {
			t.Fatalf("reference %q: %v", ref, err)
		}
	}
	if _, err := f.s.Acknowledge("B9999999999", "REF-1"); ledger.AsRefusal(err).Code != ledger.CodeNotFound {
		t.Fatalf("unknown batch: %v", err)
	}
	if b := f.batch(id); b.Status != StatusReady || b.Reference != "" {
		t.Fatalf("batch changed by bad input: %+v", b)
	}
	first, err := f.s.Acknowledge(id, "REF-1")
	if err != nil || first.Status != StatusAcknowledged || first.Reference != "REF-1" {
		t.Fatalf("acknowledge: %+v, %v", first, err)
	}
	f.clock.Set(f.clock.Now().Add(time.Hour))
	again, err := f.s.Acknowledge(id, "REF-1")
	a, _ := json.Marshal(first)
	b, _ := json.Marshal(again)
	if err != nil || !bytes.Equal(a, b) {
		t.Fatalf("repeat: %s vs %s, %v", a, b, err)
	}
	if _, err := f.s.Acknowledge(id, "REF-2"); ledger.AsRefusal(err).Code != ledger.CodeConflict {
		t.Fatalf("another reference: %v", err)
	}
	f.reopen()
	if b := f.batch(id); b.Reference != "REF-1" || b.Status != StatusAcknowledged {
		t.Fatalf("after restart: %+v", b)
	}
	if list, _, _ := f.s.List(StatusReady, "", 0); len(list) != 0 {
		t.Fatalf("ready list: %+v", list)
	}
}

// TestListPages protects listing: oldest first, the status filter, the
// after cursor, limits, and an empty next at the end.
func TestListPages(t *testing.T) {
	f := newFixture(t)
	f.shop("S1", "HSBKKZKX")
	f.shop("S2", "KCJBKZKX")
	v := f.vouchers("F", 1)
	var all []string
	for range 4 {
		f.redeem(v[0], "S1", 100)
		f.redeem(v[0], "S2", 100)
		all = append(all, f.cutoff().Batches...)
	}
	if _, err := f.s.Acknowledge(all[1], "R"); err != nil {
		t.Fatal(err)
	}

	var got []string
	after := ""
	for pages := 0; ; pages++ {
		list, next, err := f.s.List("", after, 3)
		if err != nil || pages > 4 {
			t.Fatal(err, pages)
		}
		for _, b := range list {
			got = append(got, b.ID)
		}
		if next == "" {
			break
		}
		after = next
	}
	if strings.Join(got, ",") != strings.Join(all, ",") {
		t.Fatalf("pages give %v, want %v", got, all)
	}
	ready, next, _ := f.s.List(StatusReady, "", 0)
	if len(ready) != 7 || next != "" {
		t.Fatalf("ready: %d, next %q", len(ready), next)
	}
	acked, _, _ := f.s.List(StatusAcknowledged, "", 0)
	if len(acked) != 1 || acked[0].ID != all[1] || acked[0].Stores != nil {
		t.Fatalf("acknowledged: %+v", acked)
	}
	for _, bad := range []struct {
		status, after string
		limit         int
	}{{"done", "", 0}, {"", "nope", 0}, {"", "", -1}, {"", "", listLimitMax + 1}} {
		if _, _, err := f.s.List(bad.status, bad.after, bad.limit); ledger.AsRefusal(err) == nil {
			t.Errorf("List(%+v) accepted", bad)
		}
	}
}

// TestLateBatchMetrics protects the alerting gauges: a batch left
// unacknowledged past the programme's ack_deadline shows as late with its
// age, and stops counting once acknowledged.
func TestLateBatchMetrics(t *testing.T) {
	f := newFixture(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(f.s.Collectors()...)
	f.shop("S1", "HSBKKZKX")
	v := f.vouchers("F", 1)
	f.redeem(v[0], "S1", 100)
	id := f.cutoff().Batches[0]

	f.clock.Set(f.clock.Now().Add(f.prog.AckDeadline + time.Hour))
	want := func(unacked, late float64, age time.Duration) {
		t.Helper()
		got := map[string]float64{}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if m := mf.GetMetric(); len(m) == 1 && m[0].GetGauge() != nil {
				got[mf.GetName()] = m[0].GetGauge().GetValue()
			}
		}
		if got["azyq_settlement_unacknowledged_batches"] != unacked || got["azyq_settlement_late_batches"] != late ||
			got["azyq_settlement_oldest_unacknowledged_age_seconds"] != age.Seconds() {
			t.Fatalf("gauges %v", got)
		}
		if got["azyq_settlement_unsettled_tiyn"] != 0 || got["azyq_settlement_last_cutoff_timestamp_seconds"] == 0 {
			t.Fatalf("gauges %v", got)
		}
	}
	want(1, 1, f.prog.AckDeadline+time.Hour)
	if _, err := f.s.Acknowledge(id, "R"); err != nil {
		t.Fatal(err)
	}
	want(0, 0, 0)
}
