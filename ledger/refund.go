package ledger

import (
	"encoding/binary"
	"fmt"
	"time"

	"azyq/domain"
)

// RefundRequest asks to return part of a redemption's amount.
type RefundRequest struct {
	Redemption uint64 // the redemption's sequence number
	StoreID    string
	TerminalID string
	Amount     domain.Tiyn
	Idem       *Reservation
	Render     func(*Refund, *Refusal) Response
}

// Refund returns goods' money from a shop: to the voucher while it can still
// be spent, otherwise to the programme. The refunds of a redemption never
// sum above its approved amount, and only terminals of the redemption's shop
// may refund it.
func (l *Ledger) Refund(req *RefundRequest) (*Refund, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	if req.Amount <= 0 || req.Amount > domain.AmountMax {
		return nil, refuse(CodeInvalid, "amount %d must be 1-%d", req.Amount, domain.AmountMax)
	}
	if req.Idem != nil && req.Render == nil {
		panic("BUG: idempotent refund without a renderer")
	}
	st, ok := (*l.stores.Load())[req.StoreID]
	if !ok {
		return nil, refuse(CodeForbidden, "store %q does not exist", req.StoreID)
	}

	// Find the voucher, then re-read the redemption under its lock: a
	// refund racing this one, or the redemption's own commit, holds that
	// lock through its sync.
	red, err := l.readRedemption(req.Redemption)
	if err != nil {
		return nil, l.declineRefund(req, err)
	}
	v := l.vouchers.get(red.Voucher)
	if v == nil {
		return nil, l.fail(fmt.Errorf("redemption %s names missing voucher %s: %w",
			RedemptionID(red.Seq), red.Voucher, errCorrupt))
	}
	now := l.now().In(l.prog.Location)
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := l.check(); err != nil {
		return nil, err
	}
	if red, err = l.readRedemption(req.Redemption); err != nil {
		return nil, l.declineRefund(req, err)
	}

	if red.StoreID != req.StoreID {
		return nil, l.declineRefund(req, refuse(CodeForbidden,
			"redemption %s belongs to another shop", RedemptionID(red.Seq)))
	}
	if req.Amount > red.Approved-red.Refunded {
		return nil, l.declineRefund(req, refuse(CodeRefundExceedsRedemption,
			"refund %d exceeds the %d left of redemption %s (approved %d, refunded %d)",
			req.Amount, red.Approved-red.Refunded, RedemptionID(red.Seq), red.Approved, red.Refunded))
	}
	return l.commitRefundLocked(v, st, red, req, now)
}

func (l *Ledger) commitRefundLocked(v *voucher, st *storeState, red *Redemption,
	req *RefundRequest, now time.Time) (*Refund, error) {
	e := l.enterPeriod()
	defer e.leave()

	ref := &Refund{
		Seq: l.seq.Add(1), Period: e.period, Redemption: red.Seq, Voucher: red.Voucher,
		StoreID: req.StoreID, TerminalID: req.TerminalID, Amount: req.Amount,
		CreditedTo: CreditProgramme, Balance: v.balance, CreatedAt: now,
	}
	next := v.voucherData
	if l.statusLocked(v, now) == StatusActive {
		ref.CreditedTo = CreditVoucher
		next.balance += req.Amount
		next.spent -= req.Amount
		ref.Balance = next.balance
	}
	red.Refunded += req.Amount

	b := l.db.NewBatch()
	b.Set(movementKey(nil, red.Seq), encodeRedemption(nil, red), nil)
	b.Set(movementKey(nil, ref.Seq), encodeRefund(nil, ref), nil)
	mv := Movement{
		Kind: KindRefund, Seq: ref.Seq, Period: ref.Period, Redemption: red.Seq,
		Voucher: ref.Voucher, StoreID: ref.StoreID, TerminalID: ref.TerminalID,
		Amount: ref.Amount, CreatedAt: now,
	}
	b.Set(periodKey(nil, ref.Period, ref.Seq), encodeSummary(nil, &mv), nil)
	b.Set(refundIndexKey(nil, red.Seq, ref.Seq), nil, nil)
	postAccountKey(b, st.payableKey, -req.Amount)
	if ref.CreditedTo == CreditVoucher {
		rec := next.recordLocked(*l.cities.Load())
		b.Set(voucherKey(nil, ref.Voucher), rec.encode(nil), nil)
	} else {
		postAccount(b, AccountProgramme, req.Amount)
	}
	if req.Idem != nil {
		req.Idem.write(b, req.Render(ref, nil), now)
	}
	if err := l.commit(b); err != nil {
		return nil, err
	}

	v.balance, v.spent = next.balance, next.spent
	v.assertLocked(ref.Voucher)
	l.assertDurableLocked(ref.Voucher, v)
	st.payable.Add(-int64(req.Amount))
	if ref.CreditedTo == CreditProgramme {
		l.accounts.add(AccountProgramme, req.Amount)
	}
	return ref, nil
}

// declineRefund stores a refusal for an idempotent refund; other errors
// pass through.
func (l *Ledger) declineRefund(req *RefundRequest, err error) error {
	r := AsRefusal(err)
	if r == nil || req.Idem == nil {
		return err
	}
	if err := l.SaveResponse(req.Idem, req.Render(nil, r)); err != nil {
		return err
	}
	return r
}

// Refunds returns the refunds of a redemption, oldest first, read under its
// voucher's lock (invariant 2).
func (l *Ledger) Refunds(redemption uint64) ([]Refund, error) {
	red, err := l.Redemption(redemption)
	if err != nil {
		return nil, err
	}
	v := l.vouchers.get(red.Voucher)
	v.mu.Lock()
	defer v.mu.Unlock()

	var out []Refund
	lo := refundIndexKey(nil, redemption, 0)
	hi := refundIndexKey(nil, redemption+1, 0)
	err = l.scan(lo, hi, func(k, _ []byte) error {
		seq := binary.BigEndian.Uint64(k[9:])
		val, ok, err := l.get(movementKey(nil, seq))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("refund %s is indexed but missing: %w", RefundID(seq), errCorrupt)
		}
		_, ref, err := decodeMovementRecord(seq, val)
		if err != nil {
			return err
		}
		if ref == nil {
			return fmt.Errorf("movement %d is indexed as a refund: %w", seq, errCorrupt)
		}
		ref.CreatedAt = ref.CreatedAt.In(l.prog.Location)
		out = append(out, *ref)
		return nil
	})
	return out, err
}
