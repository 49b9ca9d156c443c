package ledger

import (
	"errors"
	"fmt"

	"azyq/domain"
)

// Code names a business outcome other than success. The string form of each
// code is the error code of the HTTP contract; the gateway maps codes to
// statuses in one table.
type Code uint8

// The outcomes the ledger can give. Each is an ordinary answer to a request,
// not a fault of the system.
const (
	CodeNone Code = iota
	CodeQRUsed
	CodeVoucherNotActive
	CodeVoucherExpired
	CodeInsufficientFunds
	CodeNoEligibleItems
	CodeNotFound
	CodeForbidden
	CodeConflict
	CodeActivationWindowClosed
	CodeActivationWindowNotOpen
	CodeRefundExceedsRedemption
	CodeMRPUnknown
	CodeIdempotencyKeyReused
	CodeRequestInProgress
	CodeInvalid
	CodeQRExpired
	CodeQRInvalid
	codeCount
)

var codeNames = [codeCount]string{
	CodeNone:                    "none",
	CodeQRUsed:                  "qr_used",
	CodeVoucherNotActive:        "voucher_not_active",
	CodeVoucherExpired:          "voucher_expired",
	CodeInsufficientFunds:       "insufficient_funds",
	CodeNoEligibleItems:         "no_eligible_items",
	CodeNotFound:                "not_found",
	CodeForbidden:               "forbidden",
	CodeConflict:                "conflict",
	CodeActivationWindowClosed:  "activation_window_closed",
	CodeActivationWindowNotOpen: "activation_window_not_open",
	CodeRefundExceedsRedemption: "refund_exceeds_redemption",
	CodeMRPUnknown:              "mrp_unknown",
	CodeIdempotencyKeyReused:    "idempotency_key_reused",
	CodeRequestInProgress:       "request_in_progress",
	CodeInvalid:                 "invalid_request",
	CodeQRExpired:               "qr_expired",
	CodeQRInvalid:               "qr_invalid",
}

// String returns the contract's error code.
func (c Code) String() string {
	if c >= codeCount {
		return fmt.Sprintf("code(%d)", uint8(c))
	}
	return codeNames[c]
}

// Codes lists every outcome code, for metrics that pre-create their series.
func Codes() []Code {
	cs := make([]Code, 0, codeCount-1)
	for c := CodeNone + 1; c < codeCount; c++ {
		cs = append(cs, c)
	}
	return cs
}

// Refusal is a business outcome that refuses a request: a decline at the
// till, a window that is closed, a record that is not there. It reads as a
// sentence and carries the values a client may act on.
type Refusal struct {
	Code    Code
	Message string
	// Balance is the voucher's balance, set for CodeInsufficientFunds.
	Balance domain.Tiyn
}

func (r *Refusal) Error() string { return r.Message }

func refuse(c Code, format string, args ...any) *Refusal {
	return &Refusal{Code: c, Message: fmt.Sprintf(format, args...)}
}

// AsRefusal returns the refusal inside err, or nil.
func AsRefusal(err error) *Refusal {
	var r *Refusal
	if errors.As(err, &r) {
		return r
	}
	return nil
}

// ErrUnavailable is returned once the ledger has stopped: after a failed
// write or sync (fail-stop), or after Close. Nothing is changed by a call
// that returns it, and the process must be restarted to serve again.
var ErrUnavailable = errors.New("ledger is unavailable")
