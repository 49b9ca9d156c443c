package loadtest

import (
	"fmt"
	"sort"
	"sync"

	"azyq/domain"
)

// Books is the load test's own account of every voucher: what it was
// issued with and what the run saw approved and refunded to it. At the end
// the gateway's balances must agree.
//
// Invariants, for every voucher v, once no request is in flight:
//
//  1. balance(v) = face(v) − approved(v) + refunded(v), where approved and
//     refunded count only answers the run received (a 201 with the amount).
//  2. 0 ≤ balance(v) ≤ face(v) + refunded(v).
//
// A request whose answer was lost (a timeout, a reset connection) leaves
// the voucher's books unknown. The run resends it with the same
// idempotency key to learn the answer; only when that fails too is the
// voucher marked uncertain and left out of the check, and counted, so a
// run with lost answers cannot pass silently.
//
// A single mutex guards the map: a book entry is a few additions per
// request, far below the cost of the request, and one lock keeps the
// final check simple.
type Books struct {
	mu struct {
		sync.Mutex
		vouchers map[string]*VoucherBook
	}
}

// VoucherBook is the run's account of one voucher.
type VoucherBook struct {
	Face      domain.Tiyn `json:"face_value"`
	Approved  domain.Tiyn `json:"approved"`
	Refunded  domain.Tiyn `json:"refunded_to_voucher"`
	Uncertain bool        `json:"uncertain,omitempty"`
}

// Expected returns the balance the gateway must report.
func (b VoucherBook) Expected() domain.Tiyn { return b.Face - b.Approved + b.Refunded }

// NewBooks returns empty books.
func NewBooks() *Books {
	b := &Books{}
	b.mu.vouchers = make(map[string]*VoucherBook)
	return b
}

// Open records a voucher's face value.
func (b *Books) Open(voucherID string, face domain.Tiyn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mu.vouchers[voucherID] = &VoucherBook{Face: face}
}

// Approve records an approved redemption.
func (b *Books) Approve(voucherID string, amount domain.Tiyn) {
	b.update(voucherID, func(v *VoucherBook) { v.Approved += amount })
}

// Refund records a refund credited back to the voucher.
func (b *Books) Refund(voucherID string, amount domain.Tiyn) {
	b.update(voucherID, func(v *VoucherBook) { v.Refunded += amount })
}

// MarkUncertain records that an answer about the voucher was lost.
func (b *Books) MarkUncertain(voucherID string) {
	b.update(voucherID, func(v *VoucherBook) { v.Uncertain = true })
}

func (b *Books) update(voucherID string, f func(*VoucherBook)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.mu.vouchers[voucherID]
	if !ok {
		// The gateway named a voucher the run never issued: record it so
		// the check reports it rather than losing the movement.
		v = &VoucherBook{Uncertain: true}
		b.mu.vouchers[voucherID] = v
	}
	f(v)
}

// Snapshot returns a copy of every voucher's book.
func (b *Books) Snapshot() map[string]VoucherBook {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]VoucherBook, len(b.mu.vouchers))
	for id, v := range b.mu.vouchers {
		out[id] = *v
	}
	return out
}

// Violation is a voucher whose balance disagrees with the books.
type Violation struct {
	VoucherID string      `json:"voucher_id"`
	Face      domain.Tiyn `json:"face_value"`
	Approved  domain.Tiyn `json:"approved"`
	Refunded  domain.Tiyn `json:"refunded_to_voucher"`
	Expected  domain.Tiyn `json:"expected_balance"`
	Actual    domain.Tiyn `json:"actual_balance"`
	Reason    string      `json:"reason"`
}

func (v Violation) String() string {
	return fmt.Sprintf("voucher %s: %s (face %d, approved %d, refunded %d, expected balance %d, gateway says %d)",
		v.VoucherID, v.Reason, v.Face, v.Approved, v.Refunded, v.Expected, v.Actual)
}

// BookCheck is the outcome of comparing the books with the gateway.
type BookCheck struct {
	Checked    int         `json:"checked"`
	Uncertain  int         `json:"uncertain"`
	Violations []Violation `json:"violations"`
}

// OK reports whether the books balance.
func (c *BookCheck) OK() bool { return len(c.Violations) == 0 }

// Check compares the books with balances read from the gateway, given as
// voucher id → (face value, balance). A voucher the gateway did not return
// is a violation; uncertain vouchers are counted but not compared.
func Check(books map[string]VoucherBook, actual map[string][2]domain.Tiyn) BookCheck {
	var c BookCheck
	ids := make([]string, 0, len(books))
	for id := range books {
		ids = append(ids, id)
	}
	sort.Strings(ids)

	for _, id := range ids {
		b := books[id]
		if b.Uncertain {
			c.Uncertain++
			continue
		}
		c.Checked++
		v := Violation{VoucherID: id, Face: b.Face, Approved: b.Approved,
			Refunded: b.Refunded, Expected: b.Expected()}

		got, ok := actual[id]
		switch {
		case !ok:
			v.Reason = "balance not read back"
		case got[0] != b.Face:
			v.Actual = got[1]
			v.Reason = fmt.Sprintf("face value %d, issued with %d", got[0], b.Face)
		case got[1] != b.Expected():
			v.Actual = got[1]
			v.Reason = "balance differs from face − approved + refunded"
		case got[1] < 0:
			v.Actual = got[1]
			v.Reason = "negative balance"
		default:
			continue
		}
		c.Violations = append(c.Violations, v)
	}
	return c
}
