package ledger

import (
	"time"

	"azyq/domain"
)

// Status is a voucher's state as a client sees it at a given instant.
type Status uint8

// Voucher statuses of the contract.
const (
	StatusIssued Status = iota
	StatusActive
	StatusExpired
)

func (s Status) String() string {
	switch s {
	case StatusIssued:
		return "issued"
	case StatusActive:
		return "active"
	case StatusExpired:
		return "expired"
	}
	return "unknown"
}

// Voucher is a copy of one voucher's state, taken under its lock.
type Voucher struct {
	ID        VoucherID
	FamilyID  string
	Month     domain.Month
	Members   int
	City      string
	FaceValue domain.Tiyn
	Balance   domain.Tiyn
	// Spent is what the voucher paid to shops, net of refunds credited
	// back to it.
	Spent domain.Tiyn
	// Lapsed is the remainder moved to the programme's lapsed account at
	// month end; zero until then.
	Lapsed      domain.Tiyn
	Status      Status
	ActivatedAt time.Time // zero unless activated
	ExpiresAt   time.Time
}

// Family is one row of an issuance.
type Family struct {
	FamilyID string
	Members  int
	City     string
}

// Issued is the outcome of issuance for one family.
type Issued struct {
	Voucher Voucher
	// Created is false when the family already had a voucher for the
	// month; that voucher is returned unchanged.
	Created bool
}

// Store is a participating shop.
type Store struct {
	ID      string
	Name    string
	BIN     string
	City    string
	BankBIC string
	IBAN    string
	// DiscountBP is the agreed discount on eligible goods, basis points.
	DiscountBP int64
}

// Terminal is a POS terminal of a store. Its API key is kept only as a
// SHA-256 hash.
type Terminal struct {
	ID        string
	StoreID   string
	KeyHash   [32]byte
	CreatedAt time.Time
	// PreviousKeyHash stays valid until PreviousUntil after a rotation.
	PreviousKeyHash [32]byte
	PreviousUntil   time.Time
}

// Token is a verified QR token: the gateway has checked its signature and
// expiry; the ledger checks that it was not used and consumes it.
type Token struct {
	Voucher VoucherID
	Nonce   uint64
	Expires time.Time
}

// Line is one basket line of a redemption request.
type Line struct {
	SKU      string
	Category string
	Amount   domain.Tiyn
}

// PricedLine is a basket line with the programme's pricing applied.
type PricedLine struct {
	Line
	Eligible bool
	Discount domain.Tiyn
	Payable  domain.Tiyn
	Covered  domain.Tiyn
}

// Redemption is an approved redemption.
type Redemption struct {
	Seq        uint64
	Period     uint64
	Voucher    VoucherID
	StoreID    string
	TerminalID string
	Requested  domain.Tiyn
	Approved   domain.Tiyn
	// Balance is the voucher's balance right after the redemption.
	Balance   domain.Tiyn
	CreatedAt time.Time
	// Lines is nil for a redemption by amount.
	Lines []PricedLine
	// Refunded is the sum of the refunds of this redemption so far.
	Refunded domain.Tiyn

	// token is the QR token the redemption consumed. It is stored with the
	// redemption, so that recovery remembers the tokens that have not
	// expired without a table of their own.
	token Token
}

// ID returns the redemption's text id.
func (r *Redemption) ID() string { return RedemptionID(r.Seq) }

// Credit says where a refund's money went.
type Credit uint8

// Refund destinations.
const (
	CreditVoucher Credit = iota + 1
	CreditProgramme
)

func (c Credit) String() string {
	if c == CreditVoucher {
		return "voucher"
	}
	return "programme"
}

// Refund is an approved refund of (part of) a redemption.
type Refund struct {
	Seq        uint64
	Period     uint64
	Redemption uint64
	Voucher    VoucherID
	StoreID    string
	TerminalID string
	Amount     domain.Tiyn
	CreditedTo Credit
	// Balance is the voucher's balance right after the refund.
	Balance   domain.Tiyn
	CreatedAt time.Time
}

// ID returns the refund's text id.
func (r *Refund) ID() string { return RefundID(r.Seq) }

// Kind tells a redemption from a refund in the movement journal.
type Kind uint8

// Movement kinds.
const (
	KindRedemption Kind = 1
	KindRefund     Kind = 2
)

func (k Kind) String() string {
	if k == KindRedemption {
		return "redemption"
	}
	return "refund"
}

// Movement is one entry of the journal that settlement cuts: an approved
// redemption or a refund, with a positive amount.
type Movement struct {
	Kind       Kind
	Seq        uint64
	Period     uint64
	Redemption uint64 // equals Seq for a redemption
	Voucher    VoucherID
	StoreID    string
	TerminalID string
	Amount     domain.Tiyn
	CreatedAt  time.Time
}

// ID returns the movement's text id.
func (m *Movement) ID() string {
	if m.Kind == KindRedemption {
		return RedemptionID(m.Seq)
	}
	return RefundID(m.Seq)
}

// Response is a stored answer to an idempotent request: replayed byte for
// byte when the same request comes again.
type Response struct {
	Status int
	Body   []byte
}
