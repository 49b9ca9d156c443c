package gateway

import (
	"fmt"
	"strconv"

	"github.com/valyala/fasthttp"

	"azyq/ledger"
)

// errCode is an error code of the contract. Every code, whether the ledger
// gives it as a refusal or the gateway decides it itself, has exactly one
// row in codeTable, which is the only place that maps codes to statuses.
type errCode uint8

const (
	codeInvalidRequest errCode = iota
	codeConsentRequired
	codeIdempotencyKeyMissing
	codeUnauthenticated
	codeQRInvalid
	codeQRExpired
	codeQRUsed
	codeVoucherNotActive
	codeVoucherExpired
	codeInsufficientFunds
	codeNoEligibleItems
	codeForbidden
	codeNotFound
	codeMethodNotAllowed
	codeConflict
	codeIdempotencyKeyReused
	codeRequestInProgress
	codeBodyTooLarge
	codeActivationWindowClosed
	codeActivationWindowNotOpen
	codeRefundExceedsRedemption
	codeMRPUnknown
	codeRateLimited
	codeInternal
	codeUnavailable
	codeCount
)

// codeTable maps every code to its HTTP status. The contract's error table
// reads the same, status by status; method_not_allowed and internal are the
// gateway's additions (a wrong method on a known path, and a fault that is
// neither a business outcome nor a stopped ledger).
var codeTable = [codeCount]struct {
	name   string
	status int
}{
	codeInvalidRequest:          {"invalid_request", 400},
	codeConsentRequired:         {"consent_required", 400},
	codeIdempotencyKeyMissing:   {"idempotency_key_missing", 400},
	codeUnauthenticated:         {"unauthenticated", 401},
	codeQRInvalid:               {"qr_invalid", 402},
	codeQRExpired:               {"qr_expired", 402},
	codeQRUsed:                  {"qr_used", 402},
	codeVoucherNotActive:        {"voucher_not_active", 402},
	codeVoucherExpired:          {"voucher_expired", 402},
	codeInsufficientFunds:       {"insufficient_funds", 402},
	codeNoEligibleItems:         {"no_eligible_items", 402},
	codeForbidden:               {"forbidden", 403},
	codeNotFound:                {"not_found", 404},
	codeMethodNotAllowed:        {"method_not_allowed", 405},
	codeConflict:                {"conflict", 409},
	codeIdempotencyKeyReused:    {"idempotency_key_reused", 409},
	codeRequestInProgress:       {"request_in_progress", 409},
	codeBodyTooLarge:            {"body_too_large", 413},
	codeActivationWindowClosed:  {"activation_window_closed", 422},
	codeActivationWindowNotOpen: {"activation_window_not_open", 422},
	codeRefundExceedsRedemption: {"refund_exceeds_redemption", 422},
	codeMRPUnknown:              {"mrp_unknown", 422},
	codeRateLimited:             {"rate_limited", 429},
	codeInternal:                {"internal", 500},
	codeUnavailable:             {"unavailable", 503},
}

func (c errCode) String() string { return codeTable[c].name }

// Status returns the HTTP status of the code.
func (c errCode) Status() int { return codeTable[c].status }

// fromLedger translates the ledger's outcome codes by name, so the ledger
// and the gateway cannot drift apart silently: a ledger code without a row
// in codeTable stops the process at start.
var fromLedger = func() map[ledger.Code]errCode {
	byName := make(map[string]errCode, codeCount)
	for c := range codeCount {
		if codeTable[c].name == "" || codeTable[c].status == 0 {
			panic(fmt.Sprintf("BUG: error code %d has no row in codeTable", c))
		}
		byName[codeTable[c].name] = c
	}
	m := make(map[ledger.Code]errCode)
	for _, lc := range ledger.Codes() {
		c, ok := byName[lc.String()]
		if !ok {
			panic(fmt.Sprintf("BUG: ledger code %q has no row in codeTable", lc))
		}
		m[lc] = c
	}
	return m
}()

// errorCode returns the contract code of a ledger refusal.
func errorCode(r *ledger.Refusal) errCode {
	c, ok := fromLedger[r.Code]
	if !ok {
		panic(fmt.Sprintf("BUG: refusal with unknown code %d: %s", r.Code, r.Message))
	}
	return c
}

// appendError appends the contract's error body. A negative balance means
// the body carries none (only insufficient_funds carries one).
func appendError(b []byte, c errCode, msg string, rid []byte, balance int64) []byte {
	b = append(b, `{"error":{"code":"`...)
	b = append(b, codeTable[c].name...)
	b = append(b, `","message":`...)
	b = appendString(b, msg)
	b = append(b, `,"request_id":"`...)
	b = append(b, rid...)
	b = append(b, '"')
	if balance >= 0 {
		b = append(b, `,"balance":`...)
		b = strconv.AppendInt(b, balance, 10)
	}
	return append(b, "}}"...)
}

// refusalBody renders a ledger refusal as the contract's error body.
func refusalBody(b []byte, r *ledger.Refusal, rid []byte) (int, []byte) {
	c := errorCode(r)
	balance := int64(-1)
	if c == codeInsufficientFunds {
		balance = int64(r.Balance)
	}
	return c.Status(), appendError(b, c, r.Message, rid, balance)
}

// fail answers the call with an error of the contract.
func (c *call) fail(code errCode, msg string) {
	c.failBalance(code, msg, -1)
}

func (c *call) failBalance(code errCode, msg string, balance int64) {
	c.buf = appendError(c.buf[:0], code, msg, c.rid, balance)
	if code == codeRateLimited {
		c.ctx.Response.Header.Set("Retry-After", "1")
	}
	c.reply(code.Status(), c.buf)
}

// failf answers with an error whose message is formatted; for cold paths.
func (c *call) failf(code errCode, format string, args ...any) {
	c.fail(code, fmt.Sprintf(format, args...))
}

// failErr answers an error returned by the ledger: a refusal with its own
// status, a stopped ledger with 503, anything else with 500 (logged once).
func (c *call) failErr(err error) {
	if r := ledger.AsRefusal(err); r != nil {
		status, body := refusalBody(c.buf[:0], r, c.rid)
		c.buf = body
		c.reply(status, body)
		return
	}
	if isUnavailable(err) {
		c.fail(codeUnavailable, "the gateway cannot serve requests now; retry later")
		return
	}
	c.s.log.Error("request failed", "route", c.route.pattern, "request_id", string(c.rid), "err", err)
	c.fail(codeInternal, "internal error; the gateway's log has the details under this request_id")
}

// reply sends a JSON body with a status.
func (c *call) reply(status int, body []byte) {
	c.status = status
	c.ctx.SetStatusCode(status)
	c.ctx.SetContentTypeBytes(contentTypeJSON)
	c.ctx.SetBody(body)
}

var contentTypeJSON = []byte("application/json")

// replyRaw writes an error outside a routed call (fasthttp's own parse
// errors, such as a body over the limit).
func replyRaw(ctx *fasthttp.RequestCtx, code errCode, msg string, rid []byte) {
	ctx.SetStatusCode(code.Status())
	ctx.SetContentTypeBytes(contentTypeJSON)
	ctx.SetBody(appendError(nil, code, msg, rid, -1))
}
