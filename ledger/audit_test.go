package ledger

import (
	"crypto/sha256"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"azyq/domain"
)

// auditHistory is what auditFixture did, for tests that corrupt it.
type auditHistory struct {
	voucher    VoucherID // active, redeemed twice, refunded once
	lapsed     VoucherID // issued for last month and lapsed
	redemption *Redemption
	refund     *Refund
	basket     *Redemption // the idempotent redemption by basket
}

// auditFixture builds a ledger that has been through every kind of write:
// issuance (this month and a lapsed past month), activation, redemptions
// by amount and by basket with an idempotency key, a refund, a decline
// stored under a key, a cut-off and a settlement payment.
func auditFixture(t *testing.T) (*fixture, *auditHistory) {
	t.Helper()
	f := newFixture(t)
	h := &auditHistory{voucher: f.active("F-1", 4)}

	past := domain.MakeMonth(2026, 11)
	out, err := f.l.Issue(past, []Family{{FamilyID: "F-2", Members: 2, City: "Kokshetau"}})
	if err != nil {
		t.Fatal(err)
	}
	h.lapsed = out[0].Voucher.ID
	if n, _, err := f.l.Lapse(past); err != nil || n != 1 {
		t.Fatalf("lapse: %d, %v", n, err)
	}

	if h.redemption, err = f.redeem(h.voucher, 180_000); err != nil {
		t.Fatal(err)
	}
	h.refund, err = f.l.Refund(&RefundRequest{Redemption: h.redemption.Seq, StoreID: testStore,
		TerminalID: testTerminal, Amount: 50_000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.l.Cut(); err != nil {
		t.Fatal(err)
	}

	render := func(r *Redemption, ref *Refusal) Response {
		if ref != nil {
			return Response{Status: 402, Body: []byte(ref.Code.String())}
		}
		return Response{Status: 201, Body: []byte(r.ID())}
	}
	res, _, err := f.l.Reserve(testTerminal, "key-1", sha256.Sum256([]byte("basket")))
	if err != nil || res == nil {
		t.Fatalf("reserve: %v, %v", res, err)
	}
	h.basket, err = f.l.Redeem(&RedeemRequest{Token: f.token(h.voucher), StoreID: testStore,
		TerminalID: testTerminal, Partial: true, Idem: res, Render: render,
		Lines: []Line{{SKU: "1", Category: "sugar", Amount: 98_000}, {SKU: "2", Amount: 55_000}}})
	res.Release()
	if err != nil {
		t.Fatal(err)
	}
	res, _, err = f.l.Reserve(testTerminal, "key-2", sha256.Sum256([]byte("too much")))
	if err != nil || res == nil {
		t.Fatalf("reserve: %v, %v", res, err)
	}
	_, err = f.l.Redeem(&RedeemRequest{Token: f.token(h.voucher), StoreID: testStore,
		TerminalID: testTerminal, Amount: 9_000_000, Idem: res, Render: render})
	res.Release()
	if code(err) != CodeInsufficientFunds {
		t.Fatalf("over-redemption: %v", err)
	}

	// Settlement pays the shop what it was owed at the cut-off.
	paid := []Posting{{From: AccountStore(testStore), To: AccountBank("HSBKKZKX"), Amount: 130_000}}
	if err := f.l.CommitAux([]AuxWrite{{Key: []byte("batch/1"), Value: []byte("{}")}}, paid); err != nil {
		t.Fatal(err)
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
	return f, h
}

func (f *fixture) audit(t *testing.T) *AuditReport {
	t.Helper()
	if err := f.l.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Audit(Config{Dir: f.dir, Programme: domain.DefaultProgramme(), Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestAuditClean protects against false alarms: a ledger that has been
// through every kind of write audits clean, and the totals the operator
// reads add up to what was done.
func TestAuditClean(t *testing.T) {
	f, h := auditFixture(t)
	rep := f.audit(t)
	for _, v := range rep.Violations {
		t.Errorf("violation in a clean ledger: %s", v)
	}

	const face1, face2 = 4 * 4325 * 100, 2 * 4325 * 100
	basket := h.basket.Approved
	checks := []struct {
		name      string
		got, want int64
	}{
		{"vouchers", int64(rep.Vouchers), 2},
		{"active", int64(rep.ByStatus["active"]), 1},
		{"expired", int64(rep.ByStatus["expired"]), 1},
		{"lapsed state", int64(rep.ByState["lapsed"]), 1},
		{"issued", int64(rep.Issued), face1 + face2},
		{"lapsed", int64(rep.Lapsed), face2},
		{"spent", int64(rep.Spent), 130_000 + int64(basket)},
		{"balances", int64(rep.Balances), face1 - 130_000 - int64(basket)},
		{"redemptions", int64(rep.Redemptions.Count), 2},
		{"redeemed", int64(rep.Redemptions.Amount), 180_000 + int64(basket)},
		{"refunds", int64(rep.Refunds.Amount), 50_000},
		{"refunds to voucher", int64(rep.RefundsVoucher.Amount), 50_000},
		{"periods", int64(rep.Periods), 2},
		{"open period", int64(rep.OpenPeriod), 2},
		{"idempotency records", int64(rep.Idempotency), 2},
		{"used tokens", int64(rep.UsedTokens), 2},
		{"paid to banks", int64(rep.PaidToBanks), 130_000},
		{"programme rest", int64(rep.ProgrammeRest), 0},
		{"account sum", int64(rep.AccountSum), 0},
		{"terminals", int64(rep.Terminals), 1},
		{"aux records", int64(rep.AuxRecords), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if len(rep.Stores) != 1 || rep.Stores[0].Paid != 130_000 ||
		rep.Stores[0].Payable != 180_000+basket-50_000-130_000 {
		t.Errorf("stores: %+v", rep.Stores)
	}
	if basket != 98_000-9_800 {
		t.Errorf("basket approved %d, want %d", basket, 98_000-9_800)
	}
}

// TestAuditFindsCorruption protects the audit's purpose: each planted
// corruption, written straight into Pebble behind the ledger's back, is
// reported under the check that names it.
func TestAuditFindsCorruption(t *testing.T) {
	cases := []struct {
		name  string
		plant func(f *fixture, h *auditHistory, b *pebble.Batch)
		want  []string // checks that must be reported
	}{
		{"balance off", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			f.rewriteVoucher(b, h.voucher, func(r *voucherRecord) { r.balance += 100 })
		}, []string{AuditVoucherSum, AuditBooks}},
		{"negative balance", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			f.rewriteVoucher(b, h.voucher, func(r *voucherRecord) { r.spent += r.balance + 1; r.balance = -1 })
		}, []string{AuditVoucherNegative, AuditVoucherSpent, AuditBooks}},
		{"face not members x MRP", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			f.rewriteVoucher(b, h.voucher, func(r *voucherRecord) { r.face += 100; r.balance += 100 })
		}, []string{AuditVoucherFace, AuditBooks}},
		{"spent without a redemption", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			f.rewriteVoucher(b, h.voucher, func(r *voucherRecord) { r.balance -= 7; r.spent += 7 })
			postAccount(b, AccountProgramme, 7)
		}, []string{AuditVoucherSpent}},
		{"lapsed money on a live voucher", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			f.rewriteVoucher(b, h.voucher, func(r *voucherRecord) { r.balance -= 5; r.lapsed += 5 })
		}, []string{AuditVoucherState, AuditBooks, AuditLapsedAccount}},
		{"duplicate family", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			f.rewriteVoucher(b, h.lapsed, func(r *voucherRecord) { r.month = domain.MakeMonth(2026, 12); r.familyID = "F-1" })
		}, []string{AuditVoucherFamily}},
		{"voucher id gap", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			rec := f.readVoucher(h.lapsed)
			b.Set(voucherKey(nil, h.lapsed+5), rec.encode(nil), nil)
		}, []string{AuditVoucherIDs}},
		{"garbled voucher", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			b.Set(voucherKey(nil, h.voucher), []byte{voucherRecordV1, 0xff}, nil)
		}, []string{AuditDecode}},
		{"store payable inflated", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			postAccount(b, AccountStore(testStore), 1_000_000)
		}, []string{AuditStorePayable, AuditBooks, AuditSettlementPaid}},
		{"paid to a bank without leaving the shop", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			postAccount(b, AccountBank("HSBKKZKX"), 10)
			postAccount(b, AccountProgramme, -10)
		}, []string{AuditSettlementPaid}},
		{"period entry missing", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			b.Delete(periodKey(nil, h.redemption.Period, h.redemption.Seq), nil)
		}, []string{AuditMovementIndex}},
		{"period entry without movement", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			mv := Movement{Kind: KindRedemption, Redemption: 99, Voucher: h.voucher, Amount: 1, StoreID: testStore}
			b.Set(periodKey(nil, 1, 99), encodeSummary(nil, &mv), nil)
		}, []string{AuditMovementIndex}},
		{"period entry disagrees", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			mv := Movement{Kind: KindRedemption, Redemption: h.redemption.Seq, Voucher: h.voucher,
				Amount: h.redemption.Approved + 1, StoreID: testStore, TerminalID: testTerminal,
				CreatedAt: h.redemption.CreatedAt}
			b.Set(periodKey(nil, h.redemption.Period, h.redemption.Seq), encodeSummary(nil, &mv), nil)
		}, []string{AuditMovementIndex}},
		{"refunded field off", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			red := *h.redemption
			red.Refunded = 10_000
			b.Set(movementKey(nil, red.Seq), encodeRedemption(nil, &red), nil)
		}, []string{AuditRedemptionRefund}},
		{"refunded above approved", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			red := *h.redemption
			red.Refunded = red.Approved + 1
			b.Set(movementKey(nil, red.Seq), encodeRedemption(nil, &red), nil)
		}, []string{AuditRedemptionRefund}},
		{"refund index missing", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			b.Delete(refundIndexKey(nil, h.redemption.Seq, h.refund.Seq), nil)
		}, []string{AuditRefundIndex}},
		{"refund of a missing redemption", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			b.Delete(movementKey(nil, h.redemption.Seq), nil)
		}, []string{AuditRefund, AuditMovementIndex, AuditVoucherSpent}},
		{"garbled used token", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			b.Set([]byte{tableUsedToken, 1, 2, 3}, nil, nil)
		}, []string{AuditUsedToken}},
		{"garbled idempotency record", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			b.Set(idemKey(nil, testTerminal, "key-1"), []byte{idemRecordV1, 1, 2}, nil)
		}, []string{AuditDecode}},
		{"idempotency record Prune cannot see", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			rec := idemRecord{created: f.clock.Now(), resp: Response{Status: 201, Body: []byte("x")}}
			b.Set(idemKey(nil, testTerminal, "orphan"), rec.encode(nil), nil)
		}, []string{AuditIdempotency}},
		{"key of no table", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			b.Set([]byte("zzz"), []byte("?"), nil)
		}, []string{AuditLayout}},
		{"terminal of a missing store", func(f *fixture, h *auditHistory, b *pebble.Batch) {
			b.Delete(append([]byte{tableStore}, testStore...), nil)
		}, []string{AuditStore}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, h := auditFixture(t)
			b := f.l.db.NewBatch()
			c.plant(f, h, b)
			if err := f.l.db.Apply(b, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			rep := f.audit(t)
			var got []string
			for _, v := range rep.Violations {
				got = append(got, v.Check)
			}
			for _, want := range c.want {
				if !slices.Contains(got, want) {
					t.Errorf("check %q not reported; got:\n%s", want, violations(rep))
				}
			}
			if rep.OK() {
				t.Error("report is OK despite the corruption")
			}
		})
	}
}

// TestAuditRefusesRunningLedger protects a live data directory: the audit
// must not read a directory that a running ledger holds.
func TestAuditRefusesRunningLedger(t *testing.T) {
	f := newFixture(t)
	_, err := Audit(Config{Dir: f.dir, Programme: domain.DefaultProgramme()})
	if err == nil || !strings.Contains(err.Error(), "still running") {
		t.Fatalf("audit of an open ledger: %v", err)
	}
	if _, err := Audit(Config{Dir: t.TempDir() + "/none", Programme: domain.DefaultProgramme()}); err == nil {
		t.Fatal("audit of a missing directory succeeded")
	}
}

// TestAuditDecodersMatch holds the audit's lenient decoders to the
// ledger's record layout: on a valid record they return what the strict
// decoders return.
func TestAuditDecodersMatch(t *testing.T) {
	f, h := auditFixture(t)
	val, ok, err := f.l.get(voucherKey(nil, h.voucher))
	if err != nil || !ok {
		t.Fatal(err)
	}
	strict, err := decodeVoucher(val)
	if err != nil {
		t.Fatal(err)
	}
	lenient, err := decodeVoucherFields(val)
	if err != nil || lenient != strict {
		t.Fatalf("voucher: lenient %+v, strict %+v, %v", lenient, strict, err)
	}
	for _, seq := range []uint64{h.redemption.Seq, h.basket.Seq} {
		val, _, err := f.l.get(movementKey(nil, seq))
		if err != nil {
			t.Fatal(err)
		}
		strict, _, err := decodeMovementRecord(seq, val)
		if err != nil {
			t.Fatal(err)
		}
		lenient, err := decodeRedemptionFields(seq, val)
		if err != nil || !equalRedemptions(lenient, strict) {
			t.Fatalf("redemption %d: lenient %+v, strict %+v, %v", seq, lenient, strict, err)
		}
	}
}

func equalRedemptions(a, b *Redemption) bool {
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return false
	}
	ac, bc := *a, *b
	ac.CreatedAt, bc.CreatedAt = time.Time{}, time.Time{}
	return reflect.DeepEqual(ac, bc)
}

func violations(rep *AuditReport) string {
	var s strings.Builder
	for _, v := range rep.Violations {
		s.WriteString("  " + v.String() + "\n")
	}
	return s.String()
}

func (f *fixture) readVoucher(id VoucherID) voucherRecord {
	f.t.Helper()
	val, ok, err := f.l.get(voucherKey(nil, id))
	if err != nil || !ok {
		f.t.Fatalf("voucher %s: %v", id, err)
	}
	rec, err := decodeVoucher(val)
	if err != nil {
		f.t.Fatal(err)
	}
	return rec
}

// rewriteVoucher writes a changed copy of a voucher record into b.
func (f *fixture) rewriteVoucher(b *pebble.Batch, id VoucherID, change func(*voucherRecord)) {
	rec := f.readVoucher(id)
	change(&rec)
	b.Set(voucherKey(nil, id), rec.encode(nil), nil)
}

// BenchmarkAudit measures the offline audit of a ledger with 100,000
// vouchers and 10,000 redemptions; ns/op is one whole audit.
func BenchmarkAudit(b *testing.B) {
	const vouchers, redemptions, workers = 100_000, 10_000, 64
	f := newFixture(b)
	m := domain.MakeMonth(2026, 12)
	families := make([]Family, vouchers)
	for i := range families {
		families[i] = Family{FamilyID: "F-" + strconv.Itoa(i), Members: 1 + i%5, City: "Pavlodar"}
	}
	out, err := f.l.Issue(m, families)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < redemptions; i += workers {
				id := out[i].Voucher.ID
				if _, err := f.l.Activate(id); err != nil {
					errs <- err
					return
				}
				tok := Token{Voucher: id, Nonce: uint64(i + 1), Expires: f.clock.Now().Add(time.Minute)}
				if _, err := f.l.Redeem(&RedeemRequest{Token: tok, StoreID: testStore, TerminalID: testTerminal, Amount: 1000}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	if err := f.l.Close(); err != nil {
		b.Fatal(err)
	}

	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rep, err := Audit(Config{Dir: f.dir, Programme: domain.DefaultProgramme(), Now: f.clock.Now})
		if err != nil || !rep.OK() || rep.Vouchers != vouchers || rep.Redemptions.Count != redemptions {
			b.Fatalf("audit: %v, %d vouchers, %d redemptions, %d violations",
				err, rep.Vouchers, rep.Redemptions.Count, len(rep.Violations))
		}
	}
}
