package ledger

import (
	"fmt"
	"time"

	"azyq/domain"
)

// RedeemRequest asks to pay for goods with a voucher. Exactly one of Amount
// (> 0) and Lines (1–200) is given.
type RedeemRequest struct {
	Token      Token
	StoreID    string
	TerminalID string
	Amount     domain.Tiyn
	Lines      []Line
	// Partial approves the whole balance when it is above zero but below
	// the requested amount, instead of declining.
	Partial bool
	// Idem, when set, is the reservation of the request's idempotency key.
	// The answer Render gives is stored with the change it describes (or,
	// for a refusal, on its own), so a retry gets it back byte for byte.
	Idem   *Reservation
	Render func(*Redemption, *Refusal) Response
}

// validate checks the request's shape; the gateway checks the same before
// calling, so a failure here is a caller's bug reported as a refusal.
func (r *RedeemRequest) validate() *Refusal {
	if r.Amount < 0 || (r.Amount > 0) == (len(r.Lines) > 0) {
		return refuse(CodeInvalid, "give exactly one of amount (> 0) and lines")
	}
	if r.Amount > domain.AmountMax {
		return refuse(CodeInvalid, "amount %d is above %d", r.Amount, domain.AmountMax)
	}
	if len(r.Lines) > LinesMax {
		return refuse(CodeInvalid, "at most %d lines, got %d", LinesMax, len(r.Lines))
	}
	for i := range r.Lines {
		l := &r.Lines[i]
		if l.Amount < 0 || l.Amount > domain.AmountMax {
			return refuse(CodeInvalid, "lines[%d].amount %d must be 0-%d", i, l.Amount, domain.AmountMax)
		}
		if len(l.SKU) > SKUMax || len(l.Category) > CategoryMax {
			return refuse(CodeInvalid, "lines[%d]: sku and category are at most %d bytes", i, SKUMax)
		}
	}
	if r.Idem != nil && r.Render == nil {
		panic("BUG: idempotent redemption without a renderer")
	}
	return nil
}

// Price applies the programme's catalogue and a shop's discount to a basket:
// an eligible line's discount is floor(amount × bp / 10000) and its payable
// is amount − discount; an ineligible line pays nothing through the voucher.
// It returns the priced lines, the requested amount (the sum of eligible
// payables) and whether any line was eligible.
func Price(p *domain.Programme, lines []Line, discountBP int64) ([]PricedLine, domain.Tiyn, bool) {
	priced := make([]PricedLine, len(lines))
	var requested domain.Tiyn
	eligible := false
	for i, ln := range lines {
		pl := PricedLine{Line: ln, Payable: ln.Amount}
		if p.Eligible(ln.Category) {
			pl.Eligible = true
			pl.Discount = ln.Amount.Discount(discountBP)
			pl.Payable = ln.Amount - pl.Discount
			// 200 lines of at most 10^15 each cannot overflow int64.
			requested += pl.Payable
			eligible = true
		}
		priced[i] = pl
	}
	return priced, requested, eligible
}

// cover spreads the approved amount over eligible lines in order.
func cover(lines []PricedLine, approved domain.Tiyn) {
	left := approved
	for i := range lines {
		if !lines[i].Eligible {
			continue
		}
		c := min(lines[i].Payable, left)
		lines[i].Covered = c
		left -= c
	}
	if left != 0 {
		panic(fmt.Sprintf("BUG: %d of approved %d left after covering lines", left, approved))
	}
}

// Redeem pays for goods with a voucher: it prices the basket, checks the
// token, the voucher's window and its balance, and on approval debits the
// voucher and credits the shop in one synced batch. A decline is a
// *Refusal; the token is consumed only on approval.
func (l *Ledger) Redeem(req *RedeemRequest) (*Redemption, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	if r := req.validate(); r != nil {
		return nil, r
	}
	st, ok := (*l.stores.Load())[req.StoreID]
	if !ok {
		return nil, refuse(CodeForbidden, "store %q does not exist", req.StoreID)
	}
	store := st.info.Load()

	// Price the basket before taking the lock: it depends only on the
	// request, the catalogue and the shop.
	var priced []PricedLine
	requested := req.Amount
	if len(req.Lines) > 0 {
		var eligible bool
		priced, requested, eligible = Price(l.prog, req.Lines, store.DiscountBP)
		if !eligible {
			return nil, l.declineRedemption(req, refuse(CodeNoEligibleItems,
				"no line of the basket is in the catalogue of socially significant food products"))
		}
		// Eligible lines of amount zero price to nothing; a redemption of
		// zero would move no money and is not a valid record.
		if requested == 0 {
			return nil, l.declineRedemption(req, refuse(CodeInvalid,
				"the eligible lines of the basket are payable 0; a redemption must pay more than 0"))
		}
	}

	v := l.vouchers.get(req.Token.Voucher)
	if v == nil {
		return nil, l.declineRedemption(req, refuse(CodeQRInvalid,
			"this QR code names voucher %s, which does not exist", req.Token.Voucher))
	}
	now := l.now().In(l.prog.Location)
	v.mu.Lock()
	approved, refusal := l.decideLocked(v, req, requested, now)
	if refusal != nil {
		v.mu.Unlock()
		return nil, l.declineRedemption(req, refusal)
	}
	red, err := l.commitRedemptionLocked(v, req, st, priced, requested, approved, now)
	v.mu.Unlock()
	return red, err
}

// decideLocked checks the token and the voucher and decides the approved
// amount, in the order a till should hear about problems: the token, the
// voucher's status, then its balance.
func (l *Ledger) decideLocked(v *voucher, req *RedeemRequest, requested domain.Tiyn, now time.Time) (domain.Tiyn, *Refusal) {
	id := req.Token.Voucher
	if r := l.checkTokenLocked(req.Token, now); r != nil {
		return 0, r
	}
	switch l.statusLocked(v, now) {
	case StatusIssued:
		return 0, refuse(CodeVoucherNotActive, "voucher %s is not activated", id)
	case StatusExpired:
		return 0, refuse(CodeVoucherExpired, "voucher %s of %s has expired", id, v.month)
	}
	if v.balance >= requested {
		return requested, nil
	}
	if req.Partial && v.balance > 0 {
		return v.balance, nil
	}
	r := refuse(CodeInsufficientFunds, "balance %d is below %d", v.balance, requested)
	r.Balance = v.balance
	return 0, r
}

// commitRedemptionLocked writes an approved redemption and then applies it
// to memory. The voucher's lock is held throughout.
func (l *Ledger) commitRedemptionLocked(v *voucher, req *RedeemRequest, st *storeState,
	priced []PricedLine, requested, approved domain.Tiyn, now time.Time) (*Redemption, error) {
	if priced != nil {
		cover(priced, approved)
	}
	e := l.enterPeriod()
	defer e.leave()

	red := &Redemption{
		Seq: l.seq.Add(1), Period: e.period, Voucher: req.Token.Voucher,
		StoreID: req.StoreID, TerminalID: req.TerminalID, Requested: requested,
		Approved: approved, Balance: v.balance - approved, CreatedAt: now, Lines: priced,
		token: req.Token,
	}
	next := v.voucherData
	next.balance -= approved
	next.spent += approved

	// Every Set copies its key and value into the batch, so one pooled
	// scratch buffer holds each key and value in turn: no allocation per
	// record on this path.
	buf := getBuf()
	defer putBuf(buf)
	b := l.db.NewBatch()
	rec := next.recordLocked(*l.cities.Load())
	k := voucherKey((*buf)[:0], red.Voucher)
	k = rec.encode(k)
	b.Set(k[:voucherKeyLen], k[voucherKeyLen:], nil)
	k = movementKey(k[:0], red.Seq)
	k = encodeRedemption(k, red)
	b.Set(k[:movementKeyLen], k[movementKeyLen:], nil)
	mv := Movement{
		Kind: KindRedemption, Seq: red.Seq, Period: red.Period, Redemption: red.Seq,
		Voucher: red.Voucher, StoreID: red.StoreID, TerminalID: red.TerminalID,
		Amount: approved, CreatedAt: now,
	}
	k = periodKey(k[:0], red.Period, red.Seq)
	k = encodeSummary(k, &mv)
	b.Set(k[:periodKeyLen], k[periodKeyLen:], nil)
	postAccountKey(b, st.payableKey, approved)
	*buf = k
	if req.Idem != nil {
		req.Idem.write(b, req.Render(red, nil), now)
	}
	if hook := l.testHookBeforeCommit; hook != nil {
		hook(red.Voucher)
	}
	if err := l.commit(b); err != nil {
		return nil, err
	}

	v.balance, v.spent = next.balance, next.spent
	v.assertLocked(red.Voucher)
	l.assertDurableLocked(red.Voucher, v)
	l.nonces.add(req.Token)
	st.payable.Add(int64(approved))
	return red, nil
}

// declineRedemption stores a refusal for an idempotent request and returns
// it (or ErrUnavailable when it could not be stored).
func (l *Ledger) declineRedemption(req *RedeemRequest, r *Refusal) error {
	if req.Idem == nil {
		return r
	}
	if err := l.SaveResponse(req.Idem, req.Render(nil, r)); err != nil {
		return err
	}
	return r
}

// Balance answers a balance inquiry for a verified token without consuming
// it. A used token is declined as for a redemption.
func (l *Ledger) Balance(t Token) (Voucher, error) {
	if err := l.check(); err != nil {
		return Voucher{}, err
	}
	v := l.vouchers.get(t.Voucher)
	if v == nil {
		return Voucher{}, refuse(CodeQRInvalid, "this QR code names voucher %s, which does not exist", t.Voucher)
	}
	now := l.now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if r := l.checkTokenLocked(t, now); r != nil {
		return Voucher{}, r
	}
	return l.viewLocked(t.Voucher, v, now), nil
}

// checkTokenLocked refuses a token that was used or has expired. The
// gateway checks expiry too, but the check that counts is this one, under
// the voucher's lock: used tokens are forgotten once expired, so a token
// that expired between the gateway's check and this lock must not pass.
func (l *Ledger) checkTokenLocked(t Token, now time.Time) *Refusal {
	if !now.Before(t.Expires) {
		return refuse(CodeQRExpired, "this QR code has expired; ask the customer to show a new one")
	}
	if l.nonces.used(t) {
		return refuse(CodeQRUsed, "this QR code was already used; ask the customer to show a new one")
	}
	return nil
}

// Redemption returns a redemption with the sum of its refunds. The record
// is re-read under its voucher's lock so that it is durable (invariant 2).
func (l *Ledger) Redemption(seq uint64) (*Redemption, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	red, err := l.readRedemption(seq)
	if err != nil {
		return nil, err
	}
	v := l.vouchers.get(red.Voucher)
	if v == nil {
		return nil, fmt.Errorf("cannot read redemption %s: voucher %s is missing: %w", RedemptionID(seq), red.Voucher, errCorrupt)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := l.check(); err != nil {
		return nil, err
	}
	return l.readRedemption(seq)
}

// readRedemption reads a redemption record; see Redemption for when its
// result may be trusted.
func (l *Ledger) readRedemption(seq uint64) (*Redemption, error) {
	val, ok, err := l.get(movementKey(nil, seq))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, refuse(CodeNotFound, "redemption %s does not exist", RedemptionID(seq))
	}
	red, _, err := decodeMovementRecord(seq, val)
	if err != nil {
		return nil, l.fail(err)
	}
	if red == nil {
		return nil, refuse(CodeNotFound, "redemption %s does not exist", RedemptionID(seq))
	}
	red.CreatedAt = red.CreatedAt.In(l.prog.Location)
	return red, nil
}
