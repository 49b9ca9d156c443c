package gateway

import (
	"bytes"
	"crypto/sha256"

	"github.com/valyala/fastjson"

	"azyq/domain"
	"azyq/ledger"
)

// idempotencyKeyMax is the contract's limit on an Idempotency-Key, in bytes.
const idempotencyKeyMax = 255

// Idempotency. Redemptions and refunds need an Idempotency-Key; its answer
// is stored by the ledger in the batch of the change it describes, so a
// retry gets the same bytes back, after a restart too. What is stored:
//
//   - every answer of the money path once the key is reserved: approvals,
//     the ledger's refusals (402 declines, 403 another shop's redemption,
//     404 unknown redemption, 422) and the gateway's own token declines
//     (402 qr_invalid, qr_expired), so a retry after the token expired
//     still gets the first answer;
//   - not the answers given before the key is looked at: 400 (a malformed
//     body or key), 401, 403 for a wrong role, 404 for an unparsable
//     redemption id, 413. They are deterministic and change nothing, so a
//     retry gets the same answer anyway; storing them would only let a
//     typo burn a key;
//   - not 409 and 503: nothing was decided, the client should retry.
//
// The fingerprint is SHA-256 over the method, the path and the body, so
// the same key with another body (or another redemption's refund) is
// 409 idempotency_key_reused.

// idempotencyKey reads and checks the Idempotency-Key header.
func (c *call) idempotencyKey() ([]byte, bool) {
	h := &c.ctx.Request.Header
	key := h.Peek("Idempotency-Key")
	if len(key) == 0 {
		present := false
		for k := range h.All() {
			if bytes.EqualFold(k, []byte("Idempotency-Key")) {
				present = true
			}
		}
		if !present {
			c.fail(codeIdempotencyKeyMissing, "this request moves money: send an Idempotency-Key header (1-255 printable ASCII characters)")
			return nil, false
		}
	}
	if len(key) == 0 || len(key) > idempotencyKeyMax {
		c.failf(codeInvalidRequest, "Idempotency-Key must be 1-%d printable ASCII characters, got %d bytes", idempotencyKeyMax, len(key))
		return nil, false
	}
	for _, b := range key {
		if b < 0x20 || b > 0x7e {
			c.fail(codeInvalidRequest, "Idempotency-Key must be printable ASCII characters")
			return nil, false
		}
	}
	return key, true
}

// reserve claims the key for this request. It answers the request itself
// (a replay, 409 or 503) and returns nil when the request must not run.
func (c *call) reserve(key []byte) *ledger.Reservation {
	method, path, body := c.ctx.Method(), c.ctx.Path(), c.ctx.PostBody()
	c.buf = append(c.buf[:0], method...)
	c.buf = append(c.buf, 0)
	c.buf = append(c.buf, path...)
	c.buf = append(c.buf, 0)
	c.buf = append(c.buf, body...)
	fp := sha256.Sum256(c.buf)

	res, stored, err := c.s.led.Reserve(c.terminal.ID, string(key), fp)
	switch {
	case err != nil:
		c.failErr(err)
		return nil
	case stored != nil:
		c.ctx.Response.Header.Set("Idempotent-Replayed", "true")
		c.reply(stored.Status, stored.Body)
		c.s.met.replays.Inc()
		return nil
	}
	return res
}

// declineToken answers a token that failed verification, storing the
// answer under the reserved key.
func (c *call) declineToken(res *ledger.Reservation, fault qrFault) {
	code, msg := codeQRInvalid, "the QR code is not valid; ask the customer to show it again"
	if fault == qrExpired {
		code, msg = codeQRExpired, "the QR code has expired; ask the customer to show a new one"
	}
	c.s.met.tokenRejects[fault].Inc()
	c.buf = appendError(c.buf[:0], code, msg, c.rid, -1)
	if res != nil {
		err := c.s.led.SaveResponse(res, ledger.Response{Status: code.Status(), Body: c.buf})
		if err != nil {
			c.failErr(err)
			return
		}
	}
	c.reply(code.Status(), c.buf)
}

// redeemFields are the fields of a redemption request.
var redeemFields = []string{"qr", "amount", "lines", "partial"}

var lineFields = []string{"sku", "category", "amount"}

// decodeRedemption reads a redemption body into c.redeem and returns the
// QR token's bytes.
func (c *call) decodeRedemption(body []byte) ([]byte, error) {
	o, err := parseBody(&c.parser, body)
	if err != nil {
		return nil, err
	}
	req := &c.redeem
	*req = ledger.RedeemRequest{Lines: req.Lines[:0]}
	var qr []byte
	seen, err := walk(o, redeemFields, func(i int, v *fastjson.Value) error {
		var err error
		switch i {
		case 0:
			qr, err = parseStringBytes(v, "qr")
		case 1:
			req.Amount, err = parseAmount(v, "amount")
		case 2:
			req.Lines, err = decodeLines(v, req.Lines)
		case 3:
			req.Partial, err = parseBool(v, "partial")
		}
		return err
	})
	switch {
	case err != nil:
		return nil, err
	case !seen.has(0):
		return nil, badJSON("qr is required")
	case seen.has(1) == seen.has(2):
		return nil, badJSON("give exactly one of amount and lines")
	case seen.has(1) && req.Amount == 0:
		return nil, badJSON("amount must be above 0")
	}
	return qr, nil
}

func decodeLines(v *fastjson.Value, lines []ledger.Line) ([]ledger.Line, error) {
	arr, err := v.Array()
	if err != nil {
		return nil, badJSON("lines must be an array, not %s", v.Type())
	}
	if len(arr) == 0 || len(arr) > ledger.LinesMax {
		return nil, badJSON("lines must hold 1-%d lines, got %d", ledger.LinesMax, len(arr))
	}
	for i, lv := range arr {
		o, err := lv.Object()
		if err != nil {
			return nil, badJSON("lines[%d] must be an object", i)
		}
		var ln ledger.Line
		seen, err := walk(o, lineFields, func(j int, v *fastjson.Value) error {
			var err error
			switch j {
			case 0:
				ln.SKU, err = parseText(v, "sku", ledger.SKUMax)
			case 1:
				ln.Category, err = parseText(v, "category", ledger.CategoryMax)
			case 2:
				ln.Amount, err = parseAmount(v, "amount")
			}
			return err
		})
		if err != nil {
			return nil, badJSON("lines[%d]: %v", i, err)
		}
		if !seen.has(2) {
			return nil, badJSON("lines[%d].amount is required", i)
		}
		lines = append(lines, ln)
	}
	return lines, nil
}

// serveRedemption is POST /v1/redemptions, the hot path.
func (c *call) serveRedemption() {
	key, ok := c.idempotencyKey()
	if !ok {
		return
	}
	qr, err := c.decodeRedemption(c.ctx.PostBody())
	if err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	res := c.reserve(key)
	if res == nil {
		return
	}
	defer res.Release()

	tok, fault := c.s.qr.Verify(qr)
	if fault != qrOK {
		c.declineToken(res, fault)
		return
	}
	req := &c.redeem
	req.Token, req.StoreID, req.TerminalID = tok, c.terminal.StoreID, c.terminal.ID
	req.Idem, req.Render = res, c.renderRedemptionFn
	c.rendered = 0
	red, err := c.s.led.Redeem(req)
	req.Idem, req.Render = nil, nil
	c.answerMoney(err)
	if err == nil {
		c.s.met.approved.Inc()
		c.s.met.redeemed.Add(float64(red.Approved))
	} else if r := ledger.AsRefusal(err); r != nil {
		c.s.met.redemptions.WithLabelValues(r.Code.String()).Inc()
		if r.Code == ledger.CodeQRUsed {
			c.s.met.tokenUsed.Inc()
		}
	}
}

// answerMoney sends what the ledger stored through Render, or the error
// when nothing was rendered (or the ledger failed after rendering).
func (c *call) answerMoney(err error) {
	if c.rendered != 0 && (err == nil || ledger.AsRefusal(err) != nil) {
		c.reply(c.rendered, c.buf)
		return
	}
	c.failErr(err)
}

// renderRedemption renders the answer the ledger stores under the key and
// the gateway sends; it runs inside Redeem, under the voucher's lock.
func (c *call) renderRedemption(red *ledger.Redemption, r *ledger.Refusal) ledger.Response {
	if r != nil {
		c.rendered, c.buf = refusalBody(c.buf[:0], r, c.rid)
	} else {
		c.buf = c.s.appendRedemption(c.buf[:0], red, false)
		c.rendered = 201
	}
	return ledger.Response{Status: c.rendered, Body: c.buf}
}

// appendRedemption renders a redemption; withRefunded adds the refunded sum
// (GET /v1/redemptions/{id}).
func (s *Server) appendRedemption(b []byte, red *ledger.Redemption, withRefunded bool) []byte {
	b = append(b, `{"redemption_id":"`...)
	b = ledger.AppendRedemptionID(b, red.Seq)
	b = append(b, `","voucher_id":"`...)
	b = red.Voucher.AppendText(b)
	b = append(b, '"')
	b = appendStr(b, "store_id", red.StoreID)
	b = appendStr(b, "terminal_id", red.TerminalID)
	b = append(b, `,"status":"approved"`...)
	b = appendInt(b, "requested", int64(red.Requested))
	b = appendInt(b, "approved", int64(red.Approved))
	b = appendInt(b, "balance", int64(red.Balance))
	b = appendTime(b, "created_at", red.CreatedAt, s.prog.Location)
	if red.Lines != nil {
		b = append(b, `,"lines":[`...)
		for i := range red.Lines {
			l := &red.Lines[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			b = appendStr(b, "sku", l.SKU)
			b = appendStr(b, "category", l.Category)
			b = appendInt(b, "amount", int64(l.Amount))
			b = appendBool(b, "eligible", l.Eligible)
			b = appendInt(b, "discount", int64(l.Discount))
			b = appendInt(b, "payable", int64(l.Payable))
			b = appendInt(b, "covered", int64(l.Covered))
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if withRefunded {
		b = appendInt(b, "refunded", int64(red.Refunded))
	}
	return append(b, '}')
}

// serveRedemptionGet is GET /v1/redemptions/{redemption_id}.
func (c *call) serveRedemptionGet() {
	seq, ok := c.redemptionParam()
	if !ok {
		return
	}
	red, err := c.s.led.Redemption(seq)
	if err != nil {
		c.failErr(err)
		return
	}
	if c.who == roleTerminal && red.StoreID != c.terminal.StoreID {
		c.failf(codeForbidden, "redemption %s belongs to another shop", c.params[0])
		return
	}
	c.buf = c.s.appendRedemption(c.buf[:0], red, true)
	c.reply(200, c.buf)
}

// redemptionParam parses the {redemption_id} of the path; an id that
// cannot exist is 404.
func (c *call) redemptionParam() (uint64, bool) {
	seq, err := ledger.ParseRedemptionID(string(c.params[0]))
	if err != nil {
		c.failf(codeNotFound, "redemption %q does not exist", c.params[0])
		return 0, false
	}
	return seq, true
}

var refundFields = []string{"amount"}

// serveRefund is POST /v1/redemptions/{redemption_id}/refunds.
func (c *call) serveRefund() {
	seq, ok := c.redemptionParam()
	if !ok {
		return
	}
	key, ok := c.idempotencyKey()
	if !ok {
		return
	}
	var amount domain.Tiyn
	o, err := parseBody(&c.parser, c.ctx.PostBody())
	if err == nil {
		var seen fieldSet
		seen, err = walk(o, refundFields, func(_ int, v *fastjson.Value) error {
			var err error
			amount, err = parseAmount(v, "amount")
			return err
		})
		if err == nil && (!seen.has(0) || amount == 0) {
			err = badJSON("amount is required and must be above 0")
		}
	}
	if err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	res := c.reserve(key)
	if res == nil {
		return
	}
	defer res.Release()

	c.rendered = 0
	ref, err := c.s.led.Refund(&ledger.RefundRequest{
		Redemption: seq, StoreID: c.terminal.StoreID, TerminalID: c.terminal.ID,
		Amount: amount, Idem: res, Render: c.renderRefundFn,
	})
	c.answerMoney(err)
	if err == nil {
		c.s.met.refunded.Add(float64(ref.Amount))
	}
}

func (c *call) renderRefund(ref *ledger.Refund, r *ledger.Refusal) ledger.Response {
	if r != nil {
		c.rendered, c.buf = refusalBody(c.buf[:0], r, c.rid)
		return ledger.Response{Status: c.rendered, Body: c.buf}
	}
	b := append(c.buf[:0], `{"refund_id":"`...)
	b = append(b, ledger.RefundID(ref.Seq)...)
	b = append(b, `","redemption_id":"`...)
	b = ledger.AppendRedemptionID(b, ref.Redemption)
	b = append(b, '"')
	b = appendInt(b, "amount", int64(ref.Amount))
	b = appendStr(b, "credited_to", ref.CreditedTo.String())
	b = appendInt(b, "balance", int64(ref.Balance))
	b = appendTime(b, "created_at", ref.CreatedAt, c.s.prog.Location)
	c.buf = append(b, '}')
	c.rendered = 201
	return ledger.Response{Status: 201, Body: c.buf}
}

var balanceFields = []string{"qr"}

// serveBalance is POST /v1/balance-inquiries; it does not consume the token.
func (c *call) serveBalance() {
	var qr []byte
	o, err := parseBody(&c.parser, c.ctx.PostBody())
	if err == nil {
		var seen fieldSet
		seen, err = walk(o, balanceFields, func(_ int, v *fastjson.Value) error {
			var err error
			qr, err = parseStringBytes(v, "qr")
			return err
		})
		if err == nil && !seen.has(0) {
			err = badJSON("qr is required")
		}
	}
	if err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	tok, fault := c.s.qr.Verify(qr)
	if fault != qrOK {
		c.declineToken(nil, fault)
		return
	}
	v, err := c.s.led.Balance(tok)
	if err != nil {
		if r := ledger.AsRefusal(err); r != nil && r.Code == ledger.CodeQRUsed {
			c.s.met.tokenUsed.Inc()
		}
		c.failErr(err)
		return
	}
	b := append(c.buf[:0], `{"voucher_id":"`...)
	b = v.ID.AppendText(b)
	b = append(b, '"')
	b = appendInt(b, "balance", int64(v.Balance))
	b = appendStr(b, "status", v.Status.String())
	b = appendTime(b, "expires_at", v.ExpiresAt, c.s.prog.Location)
	c.buf = append(b, '}')
	c.reply(200, c.buf)
}
