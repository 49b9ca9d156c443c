package ledger

import (
	"bytes"
	"fmt"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"azyq/domain"
)

var (
	dec2026 = domain.MakeMonth(2026, time.December)
	nov2026 = domain.MakeMonth(2026, time.November)
)

// issueOne issues one family's voucher for a month and returns it.
func (f *fixture) issueOne(m domain.Month, family string, members int) Voucher {
	f.t.Helper()
	out, err := f.l.Issue(m, []Family{{FamilyID: family, Members: members, City: "Pavlodar"}})
	if err != nil {
		f.t.Fatalf("issue %s for %s: %v", family, m, err)
	}
	return out[0].Voucher
}

// TestFaceValue protects the face value rule: members × MRP of the month's
// year × 100 tiyn, and mrp_unknown for a year without an MRP.
func TestFaceValue(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		month   domain.Month
		members int
		face    domain.Tiyn
		code    Code
	}{
		{domain.MakeMonth(2025, time.January), 1, 393_200, CodeNone},
		{domain.MakeMonth(2025, time.December), 3, 1_179_600, CodeNone},
		{domain.MakeMonth(2026, time.January), 1, 432_500, CodeNone},
		{dec2026, 4, 1_730_000, CodeNone},
		{dec2026, 30, 12_975_000, CodeNone},
		{domain.MakeMonth(2027, time.January), 1, 0, CodeMRPUnknown},
		{domain.MakeMonth(2024, time.December), 2, 0, CodeMRPUnknown},
	}
	for i, c := range cases {
		family := fmt.Sprintf("F-face-%d", i)
		out, err := f.l.Issue(c.month, []Family{{FamilyID: family, Members: c.members}})
		if code(err) != c.code {
			t.Errorf("%s × %d: got %v, want %v", c.month, c.members, err, c.code)
			continue
		}
		if c.code != CodeNone {
			if _, err := f.l.VoucherByFamily(c.month, family); code(err) != CodeNotFound {
				t.Errorf("%s: a refused issuance left a voucher: %v", c.month, err)
			}
			continue
		}
		if v := out[0].Voucher; v.FaceValue != c.face || v.Balance != c.face || v.Members != c.members {
			t.Errorf("%s × %d: %+v, want face %d", c.month, c.members, v, c.face)
		}
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestIssueValidation protects the limits of an issuance request: a bad row
// refuses the whole request and writes nothing, not even its valid rows.
func TestIssueValidation(t *testing.T) {
	f := newFixture(t)
	long := strings.Repeat("a", 64)
	cases := []struct {
		name string
		fam  Family
		ok   bool
	}{
		{"members 1", Family{FamilyID: "F-1", Members: 1}, true},
		{"members 30", Family{FamilyID: "F-30", Members: 30}, true},
		{"family id of 64", Family{FamilyID: long, Members: 2}, true},
		{"family id charset", Family{FamilyID: "Az_09-x", Members: 2}, true},
		{"city of 64", Family{FamilyID: "F-c", Members: 2, City: long}, true},
		{"members 0", Family{FamilyID: "F-m0", Members: 0}, false},
		{"members 31", Family{FamilyID: "F-m31", Members: 31}, false},
		{"members negative", Family{FamilyID: "F-mn", Members: -1}, false},
		{"family id empty", Family{FamilyID: "", Members: 1}, false},
		{"family id of 65", Family{FamilyID: long + "b", Members: 1}, false},
		{"family id space", Family{FamilyID: "F 1", Members: 1}, false},
		{"family id unicode", Family{FamilyID: "Ф-1", Members: 1}, false},
		{"city of 65", Family{FamilyID: "F-c65", Members: 1, City: long + "b"}, false},
	}
	for _, c := range cases {
		before := f.l.vouchers.len()
		// The bad row comes second, after a valid one, to show that
		// nothing of the request is written.
		_, err := f.l.Issue(dec2026, []Family{{FamilyID: "F-pre-" + c.name[:3], Members: 1}, c.fam})
		if c.ok {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if code(err) != CodeInvalid {
			t.Errorf("%s: got %v, want invalid_request", c.name, err)
		}
		if after := f.l.vouchers.len(); after != before {
			t.Errorf("%s: refused issuance created %d vouchers", c.name, after-before)
		}
	}

	many := make([]Family, IssuanceMax+1)
	for i := range many {
		many[i] = Family{FamilyID: fmt.Sprintf("F%d", i), Members: 1}
	}
	if _, err := f.l.Issue(dec2026, many); code(err) != CodeInvalid {
		t.Errorf("%d families: got %v, want invalid_request", len(many), err)
	}
}

// TestIssueIdempotent protects idempotency per (month, family): the same
// family again gets its voucher back unchanged, even with another member
// count and across a restart; a family twice in one request gets one
// voucher; another month is another voucher.
func TestIssueIdempotent(t *testing.T) {
	f := newFixture(t)
	first := f.issueOne(dec2026, "F-1", 4)

	out, err := f.l.Issue(dec2026, []Family{
		{FamilyID: "F-1", Members: 7},
		{FamilyID: "F-2", Members: 2},
		{FamilyID: "F-2", Members: 5},
	})
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Created || out[0].Voucher.ID != first.ID || out[0].Voucher.Members != 4 || out[0].Voucher.FaceValue != 1_730_000 {
		t.Errorf("existing family: %+v, want %+v unchanged", out[0], first)
	}
	if !out[1].Created || out[2].Created || out[1].Voucher.ID != out[2].Voucher.ID {
		t.Errorf("family twice in a request: %+v and %+v", out[1], out[2])
	}
	if out[2].Voucher.Members != 2 || out[2].Voucher.FamilyID != "F-2" || out[2].Voucher.FaceValue != 865_000 {
		t.Errorf("second row of a repeated family: %+v", out[2].Voucher)
	}

	f.reopen()
	again := f.issueOne(dec2026, "F-1", 1)
	if again.ID != first.ID || again.Members != 4 {
		t.Errorf("after restart: %+v, want %+v", again, first)
	}
	byFamily, err := f.l.VoucherByFamily(dec2026, "F-2")
	if err != nil || byFamily.ID != out[1].Voucher.ID {
		t.Errorf("VoucherByFamily after restart: %+v, %v", byFamily, err)
	}
	if other := f.issueOne(nov2026, "F-1", 4); other.ID == first.ID {
		t.Errorf("another month reused voucher %s", other.ID)
	}
	if f.l.vouchers.len() != 3 {
		t.Errorf("%d vouchers, want 3", f.l.vouchers.len())
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestIssueEndedMonth protects vouchers of a month that has ended: born
// expired, never activated or spent, and lapsed by LapseDue even when they
// are issued after the month's lapse already ran.
func TestIssueEndedMonth(t *testing.T) {
	f := newFixture(t) // the clock is in 2026-12
	v := f.issueOne(nov2026, "F-old", 2)
	if v.Status != StatusExpired {
		t.Fatalf("voucher of an ended month: status %s, want expired", v.Status)
	}
	if _, err := f.l.Activate(v.ID); code(err) != CodeActivationWindowClosed {
		t.Errorf("activate: %v", err)
	}
	if _, err := f.redeem(v.ID, 100); code(err) != CodeVoucherExpired {
		t.Errorf("redeem: %v", err)
	}

	if err := f.l.LapseDue(); err != nil {
		t.Fatal(err)
	}
	late := f.issueOne(nov2026, "F-late", 1)
	if err := f.l.LapseDue(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []VoucherID{v.ID, late.ID} {
		got, _ := f.l.Voucher(id)
		if got.Balance != 0 || got.Lapsed != got.FaceValue {
			t.Errorf("voucher %s after LapseDue: %+v, want lapsed", id, got)
		}
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestActivationWindow protects activation from the first to the last
// instant of the voucher's month in Asia/Almaty, whatever zone the clock's
// instant is written in.
func TestActivationWindow(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		month domain.Month
		at    string
		code  Code
	}{
		{dec2026, "2026-11-30T23:59:59+05:00", CodeActivationWindowNotOpen},
		{dec2026, "2026-11-30T18:59:59Z", CodeActivationWindowNotOpen},
		{dec2026, "2026-12-01T00:00:00+05:00", CodeNone},
		{dec2026, "2026-11-30T19:00:00Z", CodeNone},
		{dec2026, "2026-12-31T23:59:59+05:00", CodeNone},
		{dec2026, "2026-12-31T18:59:59Z", CodeNone},
		{dec2026, "2026-12-31T18:59:59.999999999Z", CodeNone},
		{dec2026, "2027-01-01T00:00:00+05:00", CodeActivationWindowClosed},
		{dec2026, "2026-12-31T19:00:00Z", CodeActivationWindowClosed},
		{dec2026, "2026-12-31T22:00:00+03:00", CodeActivationWindowClosed},
		{nov2026, "2026-11-30T23:59:59+05:00", CodeNone},
		{nov2026, "2026-12-01T00:00:00+05:00", CodeActivationWindowClosed},
		{domain.MakeMonth(2026, time.February), "2026-02-28T23:59:59+05:00", CodeNone},
		{domain.MakeMonth(2026, time.February), "2026-02-28T19:00:00Z", CodeActivationWindowClosed},
	}
	for i, c := range cases {
		f.clock.Set("2026-06-15T12:00:00+05:00") // issue while neither window decides
		v := f.issueOne(c.month, fmt.Sprintf("F-act-%d", i), 1)
		f.clock.Set(c.at)
		got, err := f.l.Activate(v.ID)
		if code(err) != c.code {
			t.Errorf("voucher of %s activated at %s: got %v, want %v", c.month, c.at, err, c.code)
			continue
		}
		if c.code != CodeNone {
			if after, _ := f.l.Voucher(v.ID); !after.ActivatedAt.IsZero() {
				t.Errorf("%s: refused activation changed the voucher: %+v", c.at, after)
			}
			continue
		}
		if got.Status != StatusActive || !got.ActivatedAt.Equal(f.clock.Now()) ||
			got.ActivatedAt.Location().String() != "Asia/Almaty" {
			t.Errorf("%s: %+v", c.at, got)
		}

		// Activating again returns the voucher unchanged.
		f.clock.Add(time.Second / 2)
		again, err := f.l.Activate(v.ID)
		if err != nil || !again.ActivatedAt.Equal(got.ActivatedAt) {
			t.Errorf("%s: second activation: %+v, %v", c.at, again, err)
		}
	}
}

// TestSpendingWindow protects the end of spending: the end of the month in
// Asia/Almaty, or that plus the programme's grace.
func TestSpendingWindow(t *testing.T) {
	cases := []struct {
		grace time.Duration
		at    string
		code  Code
	}{
		{0, "2026-12-31T23:59:59+05:00", CodeNone},
		{0, "2026-12-31T18:59:59Z", CodeNone},
		{0, "2027-01-01T00:00:00+05:00", CodeVoucherExpired},
		{0, "2026-12-31T19:00:00Z", CodeVoucherExpired},
		{72 * time.Hour, "2027-01-01T00:00:00+05:00", CodeNone},
		{72 * time.Hour, "2027-01-03T23:59:59+05:00", CodeNone},
		{72 * time.Hour, "2027-01-04T00:00:00+05:00", CodeVoucherExpired},
	}
	for _, c := range cases {
		prog := domain.DefaultProgramme()
		prog.Grace = c.grace
		f := newFixtureWith(t, prog, nil)
		id := f.active("F-1", 1)
		idle := f.issueOne(dec2026, "F-idle", 1)
		f.clock.Set(c.at)
		red, err := f.redeem(id, 1000)
		if code(err) != c.code {
			t.Errorf("grace %s at %s: got %v, want %v", c.grace, c.at, err, c.code)
		}
		v, _ := f.l.Voucher(id)
		wantStatus, wantBalance := StatusActive, domain.Tiyn(432_500-1000)
		if c.code != CodeNone {
			wantStatus, wantBalance = StatusExpired, 432_500
		} else if red.Balance != wantBalance {
			t.Errorf("grace %s at %s: redemption %+v", c.grace, c.at, red)
		}
		if v.Status != wantStatus || v.Balance != wantBalance {
			t.Errorf("grace %s at %s: voucher %+v", c.grace, c.at, v)
		}
		if !v.ExpiresAt.Equal(dec2026.End(prog.Location).Add(c.grace)) {
			t.Errorf("grace %s: expires_at %s", c.grace, v.ExpiresAt)
		}

		// A voucher never activated expires with its month, grace or
		// not, and is not active before.
		iv, _ := f.l.Voucher(idle.ID)
		_, err = f.redeem(idle.ID, 1000)
		if f.clock.Now().Before(dec2026.End(prog.Location)) {
			if iv.Status != StatusIssued || code(err) != CodeVoucherNotActive {
				t.Errorf("idle voucher at %s: %s, %v", c.at, iv.Status, err)
			}
		} else if iv.Status != StatusExpired || code(err) != CodeVoucherExpired {
			t.Errorf("idle voucher at %s: %s, %v", c.at, iv.Status, err)
		}
	}
}

// TestPricing protects the basket rules of the contract: eligibility by
// catalogue, the floor of the discount, coverage in line order, partial
// approval, and the declines with what they carry.
func TestPricing(t *testing.T) {
	f := newFixture(t) // shop discount 1000 bp
	type lineWant struct {
		eligible                   bool
		discount, payable, covered domain.Tiyn
	}
	cases := []struct {
		name      string
		balance   domain.Tiyn
		amount    domain.Tiyn
		lines     []Line
		partial   bool
		code      Code
		requested domain.Tiyn
		approved  domain.Tiyn
		want      []lineWant
	}{
		{name: "contract example", balance: 432_500,
			lines:     []Line{{"4870001234567", "sugar", 98_000}, {"4870009999999", "", 55_000}},
			requested: 88_200, approved: 88_200,
			want: []lineWant{{true, 9_800, 88_200, 88_200}, {false, 0, 55_000, 0}}},
		{name: "discount floored", balance: 432_500,
			lines:     []Line{{"a", "bread", 99_999}, {"b", "milk", 9}, {"c", "eggs", 10}},
			requested: 90_000 + 9 + 9, approved: 90_018,
			want: []lineWant{{true, 9_999, 90_000, 90_000}, {true, 0, 9, 9}, {true, 1, 9, 9}}},
		{name: "unknown category", balance: 432_500,
			lines:     []Line{{"a", "vodka", 50_000}, {"b", "Sugar", 10_000}, {"c", "rice", 10_000}},
			requested: 9_000, approved: 9_000,
			want: []lineWant{{false, 0, 50_000, 0}, {false, 0, 10_000, 0}, {true, 1_000, 9_000, 9_000}}},
		{name: "zero-amount line", balance: 432_500,
			lines:     []Line{{"a", "salt", 0}, {"b", "tea", 100}},
			requested: 90, approved: 90,
			want: []lineWant{{true, 0, 0, 0}, {true, 10, 90, 90}}},
		{name: "insufficient", balance: 100_000,
			lines: []Line{{"a", "bread", 60_000}, {"b", "milk", 80_000}},
			code:  CodeInsufficientFunds},
		{name: "partial covers in line order", balance: 100_000, partial: true,
			lines:     []Line{{"a", "bread", 60_000}, {"x", "", 7_000}, {"b", "milk", 80_000}, {"c", "eggs", 1_000}},
			requested: 54_000 + 72_000 + 900, approved: 100_000,
			want: []lineWant{{true, 6_000, 54_000, 54_000}, {false, 0, 7_000, 0}, {true, 8_000, 72_000, 46_000}, {true, 100, 900, 0}}},
		{name: "partial with enough", balance: 100_000, partial: true,
			lines:     []Line{{"a", "bread", 10_000}},
			requested: 9_000, approved: 9_000, want: []lineWant{{true, 1_000, 9_000, 9_000}}},
		{name: "partial at zero balance", balance: 0, partial: true,
			lines: []Line{{"a", "bread", 10_000}}, code: CodeInsufficientFunds},
		{name: "no eligible items", balance: 432_500,
			lines: []Line{{"a", "", 10_000}, {"b", "vodka", 10_000}}, code: CodeNoEligibleItems},
		{name: "eligible lines pay nothing", balance: 432_500,
			lines: []Line{{"a", "salt", 0}, {"b", "vodka", 10_000}}, code: CodeInvalid},
		{name: "amount", balance: 432_500, amount: 180_000, requested: 180_000, approved: 180_000},
		{name: "amount insufficient", balance: 1_000, amount: 1_001, code: CodeInsufficientFunds},
		{name: "amount partial", balance: 1_000, amount: 5_000, partial: true, requested: 5_000, approved: 1_000},
		{name: "amount exact balance", balance: 1_000, amount: 1_000, requested: 1_000, approved: 1_000},
		{name: "amount and lines", balance: 432_500, amount: 100, lines: []Line{{"a", "bread", 100}}, code: CodeInvalid},
		{name: "neither amount nor lines", balance: 432_500, code: CodeInvalid},
		{name: "negative amount", balance: 432_500, amount: -100, code: CodeInvalid},
		{name: "negative amount with lines", balance: 432_500, amount: -1, lines: []Line{{"a", "bread", 100}}, code: CodeInvalid},
		{name: "amount above AmountMax", balance: 432_500, amount: domain.AmountMax + 1, code: CodeInvalid},
		{name: "amount at AmountMax", balance: 432_500, amount: domain.AmountMax, code: CodeInsufficientFunds},
		{name: "negative line", balance: 432_500, lines: []Line{{"a", "bread", -1}}, code: CodeInvalid},
		{name: "line above AmountMax", balance: 432_500, lines: []Line{{"a", "bread", domain.AmountMax + 1}}, code: CodeInvalid},
		{name: "200 lines at AmountMax", balance: 432_500, lines: repeatLine(Line{"a", "bread", domain.AmountMax}, LinesMax), code: CodeInsufficientFunds},
		{name: "201 lines", balance: 432_500, lines: repeatLine(Line{"a", "bread", 1}, LinesMax+1), code: CodeInvalid},
		{name: "sku too long", balance: 432_500, lines: []Line{{strings.Repeat("1", 65), "bread", 1}}, code: CodeInvalid},
	}
	for i, c := range cases {
		id := f.active(fmt.Sprintf("F-price-%d", i), 1)
		if c.balance < 432_500 {
			if _, err := f.redeem(id, 432_500-c.balance); err != nil {
				t.Fatal(err)
			}
		}
		tok := f.token(id)
		seq := f.l.seq.Load()
		red, err := f.l.Redeem(&RedeemRequest{Token: tok, StoreID: testStore, TerminalID: testTerminal,
			Amount: c.amount, Lines: c.lines, Partial: c.partial})
		if code(err) != c.code {
			t.Errorf("%s: got %v, want %v", c.name, err, c.code)
			continue
		}
		v, _ := f.l.Voucher(id)
		if c.code != CodeNone {
			if r := AsRefusal(err); c.code == CodeInsufficientFunds && r.Balance != c.balance {
				t.Errorf("%s: insufficient_funds carries balance %d, want %d", c.name, r.Balance, c.balance)
			}
			if v.Balance != c.balance || f.l.seq.Load() != seq || f.l.nonces.used(tok) {
				t.Errorf("%s: a decline changed something: balance %d, seq %d→%d, token used %v",
					c.name, v.Balance, seq, f.l.seq.Load(), f.l.nonces.used(tok))
			}
			continue
		}
		if red.Requested != c.requested || red.Approved != c.approved || red.Balance != c.balance-c.approved || v.Balance != red.Balance {
			t.Errorf("%s: requested %d approved %d balance %d (voucher %d), want %d %d %d",
				c.name, red.Requested, red.Approved, red.Balance, v.Balance, c.requested, c.approved, c.balance-c.approved)
		}
		if len(red.Lines) != len(c.want) {
			t.Errorf("%s: %d priced lines, want %d", c.name, len(red.Lines), len(c.want))
			continue
		}
		for j, w := range c.want {
			pl := red.Lines[j]
			got := lineWant{pl.Eligible, pl.Discount, pl.Payable, pl.Covered}
			if got != w || pl.Line != c.lines[j] {
				t.Errorf("%s: line %d: %+v, want %+v", c.name, j, pl, w)
			}
		}
		// The stored record says the same after a read back.
		stored, err := f.l.Redemption(red.Seq)
		if err != nil || stored.Approved != red.Approved || len(stored.Lines) != len(red.Lines) ||
			(red.Lines != nil && stored.Lines[len(c.want)-1] != red.Lines[len(c.want)-1]) {
			t.Errorf("%s: stored %+v, %v", c.name, stored, err)
		}
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

func repeatLine(l Line, n int) []Line {
	out := make([]Line, n)
	for i := range out {
		out[i] = l
	}
	return out
}

// TestTokenSingleUse protects the QR token's nonce: consumed only on
// approval, refused afterwards for redemptions and balance inquiries, and
// remembered across a restart until the token expires.
func TestTokenSingleUse(t *testing.T) {
	f := newFixture(t)
	id := f.active("F-1", 1)
	tok := f.token(id)
	req := func(amount domain.Tiyn) *RedeemRequest {
		return &RedeemRequest{Token: tok, StoreID: testStore, TerminalID: testTerminal, Amount: amount}
	}

	if _, err := f.l.Redeem(req(432_501)); code(err) != CodeInsufficientFunds {
		t.Fatalf("decline: %v", err)
	}
	if _, err := f.l.Balance(tok); err != nil {
		t.Fatalf("balance after a decline: %v", err)
	}
	if _, err := f.l.Redeem(req(1_000)); err != nil {
		t.Fatalf("approval with the same token after a decline: %v", err)
	}
	if _, err := f.l.Redeem(req(1_000)); code(err) != CodeQRUsed {
		t.Fatalf("second approval: %v", err)
	}
	if _, err := f.l.Balance(tok); code(err) != CodeQRUsed {
		t.Fatalf("balance with a used token: %v", err)
	}
	other := f.active("F-2", 1)
	if _, err := f.l.Redeem(&RedeemRequest{Token: Token{Voucher: other, Nonce: tok.Nonce, Expires: tok.Expires},
		StoreID: testStore, TerminalID: testTerminal, Amount: 1_000}); err != nil {
		t.Fatalf("same nonce on another voucher: %v", err)
	}

	// Remembered across a restart while the token is valid.
	f.clock.Add(time.Minute)
	if _, err := f.l.Prune(); err != nil {
		t.Fatal(err)
	}
	f.reopen()
	if _, err := f.l.Redeem(req(1_000)); code(err) != CodeQRUsed {
		t.Fatalf("after restart: %v", err)
	}

	// Pruned once expired, on disk and in memory, also after a restart.
	f.clock.SetTime(tok.Expires.Add(time.Nanosecond))
	if _, err := f.l.Prune(); err != nil {
		t.Fatal(err)
	}
	if n := f.l.nonces.count(); n != 0 {
		t.Errorf("%d used tokens remembered after expiry", n)
	}
	f.reopen()
	if n := f.l.nonces.count(); n != 0 {
		t.Errorf("%d used tokens recovered after expiry", n)
	}
	if v, _ := f.l.Voucher(id); v.Balance != 431_500 {
		t.Errorf("balance %d, want 431500", v.Balance)
	}
}

// TestRefunds protects refunds: never above what is left of the approved
// amount, only by the redemption's shop, back to the voucher while it can
// be spent and to the programme after, books balanced throughout.
func TestRefunds(t *testing.T) {
	f := newFixture(t)
	if _, err := f.l.PutStore(testShop("S2", 0)); err != nil {
		t.Fatal(err)
	}
	id := f.active("F-1", 1)
	red, err := f.redeem(id, 100_000)
	if err != nil {
		t.Fatal(err)
	}
	refund := func(store string, amount domain.Tiyn) (*Refund, error) {
		return f.l.Refund(&RefundRequest{Redemption: red.Seq, StoreID: store, TerminalID: testTerminal, Amount: amount})
	}
	checks := []struct {
		name   string
		store  string
		amount domain.Tiyn
		code   Code
		credit Credit
		bal    domain.Tiyn
	}{
		{"other shop", "S2", 1_000, CodeForbidden, 0, 332_500},
		{"unknown shop", "S9", 1_000, CodeForbidden, 0, 332_500},
		{"zero", testStore, 0, CodeInvalid, 0, 332_500},
		{"negative", testStore, -1, CodeInvalid, 0, 332_500},
		{"above AmountMax", testStore, domain.AmountMax + 1, CodeInvalid, 0, 332_500},
		{"above approved", testStore, 100_001, CodeRefundExceedsRedemption, 0, 332_500},
		{"part", testStore, 30_000, CodeNone, CreditVoucher, 362_500},
		{"rest plus one", testStore, 70_001, CodeRefundExceedsRedemption, 0, 362_500},
		{"more", testStore, 20_000, CodeNone, CreditVoucher, 382_500},
	}
	for _, c := range checks {
		ref, err := refund(c.store, c.amount)
		if code(err) != c.code {
			t.Errorf("%s: got %v, want %v", c.name, err, c.code)
			continue
		}
		if c.code == CodeNone && (ref.CreditedTo != c.credit || ref.Balance != c.bal || ref.Redemption != red.Seq) {
			t.Errorf("%s: %+v", c.name, ref)
		}
		if v, _ := f.l.Voucher(id); v.Balance != c.bal {
			t.Errorf("%s: balance %d, want %d", c.name, v.Balance, c.bal)
		}
	}
	if _, err := f.l.Refund(&RefundRequest{Redemption: red.Seq + 1000, StoreID: testStore, Amount: 1}); code(err) != CodeNotFound {
		t.Errorf("unknown redemption: %v", err)
	}

	// After the voucher's month: to the programme, balance unchanged.
	f.clock.Set("2027-01-01T00:00:00+05:00")
	programme := f.l.Books().Accounts[AccountProgramme]
	ref, err := refund(testStore, 10_000)
	if err != nil || ref.CreditedTo != CreditProgramme || ref.Balance != 382_500 {
		t.Fatalf("refund after expiry: %+v, %v", ref, err)
	}
	if got := f.l.Books().Accounts[AccountProgramme]; got != programme+10_000 {
		t.Errorf("programme account %d, want %d", got, programme+10_000)
	}
	if _, err := f.l.Refund(&RefundRequest{Redemption: ref.Seq, StoreID: testStore, Amount: 1}); code(err) != CodeNotFound {
		t.Errorf("refund of a refund: %v", err)
	}

	// After the lapse too, and the lapsed remainder is not touched.
	if _, _, err := f.l.Lapse(dec2026); err != nil {
		t.Fatal(err)
	}
	if ref, err := refund(testStore, 5_000); err != nil || ref.CreditedTo != CreditProgramme || ref.Balance != 0 {
		t.Fatalf("refund after lapse: %+v, %v", ref, err)
	}
	if _, err := refund(testStore, 35_001); code(err) != CodeRefundExceedsRedemption {
		t.Errorf("over-refund after lapse: %v", err)
	}

	f.reopen()
	got, err := f.l.Redemption(red.Seq)
	if err != nil || got.Refunded != 65_000 {
		t.Fatalf("redemption after restart: %+v, %v", got, err)
	}
	refunds, err := f.l.Refunds(red.Seq)
	if err != nil || len(refunds) != 4 {
		t.Fatalf("refunds: %+v, %v", refunds, err)
	}
	wantCredits := []Credit{CreditVoucher, CreditVoucher, CreditProgramme, CreditProgramme}
	for i, r := range refunds {
		if r.CreditedTo != wantCredits[i] || i > 0 && r.Seq <= refunds[i-1].Seq {
			t.Errorf("refund %d: %+v", i, r)
		}
	}
	v, _ := f.l.Voucher(id)
	if v.Lapsed != 382_500 || v.Spent != 50_000 || v.Balance != 0 {
		t.Errorf("voucher: %+v", v)
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestLapse protects the month-end lapse: not before spending ends, each
// voucher once, remainder to the lapsed account, across a restart.
func TestLapse(t *testing.T) {
	prog := domain.DefaultProgramme()
	prog.Grace = 24 * time.Hour
	prog.MRP[2027] = 4_500
	f := newFixtureWith(t, prog, nil)
	spent := f.active("F-1", 2)
	if _, err := f.redeem(spent, 65_000); err != nil {
		t.Fatal(err)
	}
	idle := f.issueOne(dec2026, "F-2", 1)
	next := f.issueOne(dec2026.Next(), "F-1", 1)

	f.clock.Set("2027-01-01T23:59:59+05:00") // inside the grace
	if _, _, err := f.l.Lapse(dec2026); code(err) != CodeConflict {
		t.Fatalf("lapse inside the grace: %v", err)
	}
	if err := f.l.LapseDue(); err != nil {
		t.Fatal(err)
	}
	if v, _ := f.l.Voucher(spent); v.Lapsed != 0 {
		t.Fatalf("LapseDue lapsed early: %+v", v)
	}

	f.clock.Set("2027-01-02T00:00:00+05:00")
	n, total, err := f.l.Lapse(dec2026)
	if err != nil || n != 2 || total != 865_000-65_000+432_500 {
		t.Fatalf("lapse: %d, %d, %v", n, total, err)
	}
	if n, total, err := f.l.Lapse(dec2026); err != nil || n != 0 || total != 0 {
		t.Fatalf("second lapse: %d, %d, %v", n, total, err)
	}
	f.reopen()
	if err := f.l.LapseDue(); err != nil {
		t.Fatal(err)
	}
	books := f.l.Books()
	if books.Accounts[AccountLapsed] != 1_232_500 {
		t.Errorf("lapsed account %d", books.Accounts[AccountLapsed])
	}
	for _, c := range []struct {
		id     VoucherID
		lapsed domain.Tiyn
	}{{spent, 800_000}, {idle.ID, 432_500}, {next.ID, 0}} {
		v, _ := f.l.Voucher(c.id)
		if v.Lapsed != c.lapsed || (c.lapsed > 0) != (v.Status == StatusExpired) {
			t.Errorf("voucher %s: %+v, want lapsed %d", c.id, v, c.lapsed)
		}
	}
	if _, err := f.redeem(spent, 1); code(err) != CodeVoucherExpired {
		t.Errorf("redeem a lapsed voucher: %v", err)
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestIDs protects the text ids: they round-trip and malformed ones are
// refused.
func TestIDs(t *testing.T) {
	for _, id := range []VoucherID{1, 2, 31, 32, 1 << 20, 1<<32 - 1} {
		s := id.String()
		if len(s) != 8 || s[0] != 'V' || string(id.AppendText(nil)) != s {
			t.Errorf("voucher %d: %q", id, s)
		}
		if got, err := ParseVoucherID(s); err != nil || got != id {
			t.Errorf("parse %q: %d, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "V", "V0000000", "V000000", "V00000001", "v0000001", "X0000001",
		"V000000I", "V000000L", "V000000O", "V000000U", "V000000a", "V4000000", "VZZZZZZZ"} {
		if id, err := ParseVoucherID(s); err == nil {
			t.Errorf("voucher id %q parsed as %d", s, id)
		}
	}
	for _, seq := range []uint64{1, 32, 1 << 40, 1<<64 - 1} {
		s := RedemptionID(seq)
		if len(s) != 15 || !strings.HasPrefix(s, "RD") || string(AppendRedemptionID(nil, seq)) != s {
			t.Errorf("redemption %d: %q", seq, s)
		}
		if got, err := ParseRedemptionID(s); err != nil || got != seq {
			t.Errorf("parse %q: %d, %v", s, got, err)
		}
		if r := RefundID(seq); r[:2] != "RF" || r[2:] != s[2:] {
			t.Errorf("refund %d: %q", seq, r)
		}
		if _, err := ParseRedemptionID(RefundID(seq)); err == nil {
			t.Errorf("refund id %q parsed as a redemption", RefundID(seq))
		}
	}
	for _, s := range []string{"", "RD", "RD0000000000000", "RD000000000001", "RDZZZZZZZZZZZZZ", "RD000000000000I", "rd0000000000001"} {
		if seq, err := ParseRedemptionID(s); err == nil {
			t.Errorf("redemption id %q parsed as %d", s, seq)
		}
	}
}

// TestIdempotency protects idempotency records: in progress while reserved,
// replayed byte for byte (declines too), refused with another fingerprint,
// kept across a restart and pruned only after the retention.
func TestIdempotency(t *testing.T) {
	f := newFixture(t)
	id := f.active("F-1", 1)
	render := func(red *Redemption, r *Refusal) Response {
		if r != nil {
			return Response{Status: 402, Body: fmt.Appendf(nil, `{"code":%q,"balance":%d}`, r.Code, r.Balance)}
		}
		return Response{Status: 201, Body: fmt.Appendf(nil, `{"id":%q,"approved":%d}`, red.ID(), red.Approved)}
	}
	fp := func(s string) (p [32]byte) { copy(p[:], s); return p }
	redeem := func(key string, amount domain.Tiyn) (Response, *Reservation) {
		t.Helper()
		res, _, err := f.l.Reserve(testTerminal, key, fp(fmt.Sprint(amount)))
		if err != nil || res == nil {
			t.Fatalf("reserve %q: %v, %v", key, res, err)
		}
		_, err = f.l.Redeem(&RedeemRequest{Token: f.token(id), StoreID: testStore, TerminalID: testTerminal,
			Amount: amount, Idem: res, Render: render})
		if err != nil && AsRefusal(err) == nil {
			t.Fatal(err)
		}
		red, r := (*Redemption)(nil), AsRefusal(err)
		if r == nil {
			red, _ = f.l.Redemption(f.l.seq.Load())
		}
		return render(red, r), res
	}

	first, res := redeem("k1", 1_000)
	if _, _, err := f.l.Reserve(testTerminal, "k1", fp("1000")); code(err) != CodeRequestInProgress {
		t.Fatalf("while reserved: %v", err)
	}
	res.Release()
	declined, res2 := redeem("k2", 1_000_000)
	res2.Release()

	check := func(when string) {
		t.Helper()
		for _, c := range []struct {
			key  string
			fp   string
			want Response
		}{{"k1", "1000", first}, {"k2", "1000000", declined}} {
			res, resp, err := f.l.Reserve(testTerminal, c.key, fp(c.fp))
			if err != nil || res != nil || resp == nil || resp.Status != c.want.Status || !bytes.Equal(resp.Body, c.want.Body) {
				t.Fatalf("%s: replay of %s: %v %+v %v, want %s", when, c.key, res, resp, err, c.want.Body)
			}
			if _, _, err := f.l.Reserve(testTerminal, c.key, fp("other")); code(err) != CodeIdempotencyKeyReused {
				t.Fatalf("%s: %s with another fingerprint: %v", when, c.key, err)
			}
		}
		if v, _ := f.l.Voucher(id); v.Balance != 431_500 {
			t.Fatalf("%s: balance %d: something moved twice", when, v.Balance)
		}
	}
	check("before restart")
	f.reopen()
	check("after restart")

	// Keys are per terminal.
	other, _, err := f.l.Reserve("T2", "k1", fp("1000"))
	if err != nil || other == nil {
		t.Fatalf("same key on another terminal: %v", err)
	}
	other.Release()

	// Kept through the retention, pruned after it.
	f.clock.Add(f.prog.IdempotencyRetention - time.Second)
	if n, err := f.l.Prune(); err != nil || n != 0 {
		t.Fatalf("prune inside the retention: %d, %v", n, err)
	}
	check("inside the retention")
	f.clock.Add(2 * time.Second)
	if n, err := f.l.Prune(); err != nil || n != 2 {
		t.Fatalf("prune after the retention: %d, %v", n, err)
	}
	f.reopen()
	res, resp, err := f.l.Reserve(testTerminal, "k1", fp("other"))
	if err != nil || res == nil || resp != nil {
		t.Fatalf("after pruning: %v %v %v", res, resp, err)
	}
	res.Release()
}

// TestTiynOverflow protects money arithmetic at the int64 edges: a result
// that does not fit is an error, never a wrapped value, and the discount is
// exact in 128 bits.
func TestTiynOverflow(t *testing.T) {
	const maxT, minT = domain.Tiyn(math.MaxInt64), domain.Tiyn(math.MinInt64)
	type op struct {
		name string
		f    func() (domain.Tiyn, error)
		want domain.Tiyn
		ok   bool
	}
	add := func(a, b domain.Tiyn) func() (domain.Tiyn, error) {
		return func() (domain.Tiyn, error) { return a.Add(b) }
	}
	sub := func(a, b domain.Tiyn) func() (domain.Tiyn, error) {
		return func() (domain.Tiyn, error) { return a.Sub(b) }
	}
	mul := func(a domain.Tiyn, n int64) func() (domain.Tiyn, error) {
		return func() (domain.Tiyn, error) { return a.MulInt(n) }
	}
	cases := []op{
		{"max+0", add(maxT, 0), maxT, true},
		{"max+1", add(maxT, 1), 0, false},
		{"max+max", add(maxT, maxT), 0, false},
		{"max+min", add(maxT, minT), -1, true},
		{"min+-1", add(minT, -1), 0, false},
		{"min+min", add(minT, minT), 0, false},
		{"min+0", add(minT, 0), minT, true},
		{"(max-1)+1", add(maxT-1, 1), maxT, true},
		{"max-(-1)", sub(maxT, -1), 0, false},
		{"min-1", sub(minT, 1), 0, false},
		{"0-min", sub(0, minT), 0, false},
		{"-1-min", sub(-1, minT), maxT, true},
		{"min-min", sub(minT, minT), 0, true},
		{"max-max", sub(maxT, maxT), 0, true},
		{"0-max", sub(0, maxT), -maxT, true},
		{"max×1", mul(maxT, 1), maxT, true},
		{"max×2", mul(maxT, 2), 0, false},
		{"2^62×2", mul(1<<62, 2), 0, false},
		{"2^31×2^31", mul(1<<31, 1<<31), 1 << 62, true},
		{"(2^32+1)×(2^32-1)", mul(1<<32+1, 1<<32-1), 0, false},
		{"(2^31+1)×(2^32-1)", mul(1<<31+1, 1<<32-1), 0, false},
		{"(2^31-1)×(2^32+1)", mul(1<<31-1, 1<<32+1), (1<<31 - 1) * (1<<32 + 1), true},
		{"AmountMax×9223", mul(domain.AmountMax, 9223), 9_223_000_000_000_000_000, true},
		{"AmountMax×9224", mul(domain.AmountMax, 9224), 0, false},
		{"-1×1", mul(-1, 1), 0, false},
		{"1×-1", mul(1, -1), 0, false},
		{"0×max", mul(0, math.MaxInt64), 0, true},
	}
	for _, c := range cases {
		got, err := c.f()
		if c.ok && (err != nil || got != c.want) {
			t.Errorf("%s: %d, %v, want %d", c.name, got, err, c.want)
		}
		if !c.ok && err == nil {
			t.Errorf("%s: %d, want an error", c.name, got)
		}
	}

	for _, c := range []struct {
		a  domain.Tiyn
		bp int64
	}{{maxT, 10_000}, {maxT, 1_500}, {maxT, 9_999}, {maxT, 1}, {maxT, 0}, {domain.AmountMax, 1_500}, {99_999, 1_000}, {1, 9_999}} {
		want := new(big.Int).Mul(big.NewInt(int64(c.a)), big.NewInt(c.bp))
		want.Quo(want, big.NewInt(10_000))
		if got := c.a.Discount(c.bp); !want.IsInt64() || int64(got) != want.Int64() {
			t.Errorf("discount of %d at %d bp: %d, want %s", c.a, c.bp, got, want)
		}
	}
	for _, bad := range []struct {
		a  domain.Tiyn
		bp int64
	}{{-1, 100}, {1, -1}, {1, 10_001}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("discount of %d at %d bp did not panic", bad.a, bad.bp)
				}
			}()
			bad.a.Discount(bad.bp)
		}()
	}
	if !domain.ValidAmount(int64(domain.AmountMax)) || domain.ValidAmount(int64(domain.AmountMax)+1) || domain.ValidAmount(-1) {
		t.Error("ValidAmount at the edges")
	}
}

// TestFormatVersion protects the on-disk format check: a data directory of
// another format version, or one holding data without a version, is
// refused with an error naming what was found, and left untouched.
func TestFormatVersion(t *testing.T) {
	for _, c := range []struct {
		name    string
		version []byte // nil: delete the version key
		want    string
	}{
		{"other version", []byte("azyq-ledger-99"), `"azyq-ledger-99"`},
		{"no version", nil, "without a format version"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.active("F-1", 1)
			f.l.Close()

			db, err := pebble.Open(f.dir, &pebble.Options{Merger: accountMerger, Logger: quietPebble{}})
			if err != nil {
				t.Fatal(err)
			}
			if c.version == nil {
				err = db.Delete(versionKey, pebble.Sync)
			} else {
				err = db.Set(versionKey, c.version, pebble.Sync)
			}
			if err != nil {
				t.Fatal(err)
			}
			db.Close()

			l, err := Open(Config{Dir: f.dir, Programme: f.prog, Now: f.clock.Now})
			if err == nil {
				l.Close()
				t.Fatal("opened a data directory of another format")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), f.dir) {
				t.Fatalf("error does not say what is wrong: %v", err)
			}
			db, err = pebble.Open(f.dir, &pebble.Options{Merger: accountMerger, ReadOnly: true, Logger: quietPebble{}})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			v, closer, err := db.Get(versionKey)
			if c.version == nil && err != pebble.ErrNotFound || c.version != nil && (err != nil || !bytes.Equal(v, c.version)) {
				t.Fatalf("Open changed the version key: %q, %v", v, err)
			}
			if closer != nil {
				closer.Close()
			}
		})
	}
}

// quietPebble keeps Pebble's routine messages out of test output.
type quietPebble struct{}

func (quietPebble) Infof(string, ...any)           {}
func (quietPebble) Errorf(string, ...any)          {}
func (quietPebble) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }

// TestFamilyIndexAtScale protects the family index through its growth and
// recovery: thousands of families over several months, issued again
// before and after a restart, each finding its own voucher.
func TestFamilyIndexAtScale(t *testing.T) {
	f := newFixture(t)
	months := []domain.Month{nov2026, dec2026, domain.MakeMonth(2025, time.March)}
	const families = 3_000
	rows := make([]Family, families)
	for i := range rows {
		rows[i] = Family{FamilyID: fmt.Sprintf("F-%d", i), Members: 1 + i%30}
	}
	ids := map[domain.Month][]VoucherID{}
	for _, m := range months {
		out, err := f.l.Issue(m, rows)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range out {
			if !o.Created {
				t.Fatalf("%s: %+v not created", m, o)
			}
			ids[m] = append(ids[m], o.Voucher.ID)
		}
	}
	for pass := range 2 {
		for _, m := range months {
			out, err := f.l.Issue(m, rows)
			if err != nil {
				t.Fatal(err)
			}
			for i, o := range out {
				if o.Created || o.Voucher.ID != ids[m][i] || o.Voucher.FamilyID != rows[i].FamilyID || o.Voucher.Month != m {
					t.Fatalf("pass %d, %s, row %d: %+v, want %s", pass, m, i, o, ids[m][i])
				}
			}
			if v, err := f.l.VoucherByFamily(m, "F-1234"); err != nil || v.ID != ids[m][1234] {
				t.Fatalf("VoucherByFamily: %+v, %v", v, err)
			}
		}
		f.reopen()
	}
	if n := f.l.vouchers.len(); n != families*len(months) {
		t.Fatalf("%d vouchers, want %d", n, families*len(months))
	}
}

// TestCityLimit protects the city table's limit: an issuance that would
// pass it is refused whole, before anything is written.
func TestCityLimit(t *testing.T) {
	f := newFixture(t)
	rows := make([]Family, citiesMax+1)
	for i := range rows {
		rows[i] = Family{FamilyID: fmt.Sprintf("F%d", i), Members: 1, City: fmt.Sprintf("C%d", i)}
	}
	if _, err := f.l.Issue(dec2026, rows); code(err) != CodeInvalid {
		t.Fatalf("%d cities: %v", len(rows), err)
	}
	if n := f.l.vouchers.len(); n != 0 || len(f.l.issue.cityIDs) != 0 {
		t.Fatalf("refused issuance left %d vouchers, %d cities", n, len(f.l.issue.cityIDs))
	}
	v := f.issueOne(dec2026, "F1", 1)
	if got, _ := f.l.Voucher(v.ID); got.City != "Pavlodar" {
		t.Fatalf("city %q", got.City)
	}
}

// TestKnownKeyGenerations protects the idempotency key hints: a hash stays
// until a prune has passed every record of its generation, a key used
// again lands in the current generation, and the current one is never
// dropped.
func TestKnownKeyGenerations(t *testing.T) {
	var k knownKeys
	t0 := mustTime("2026-12-03T10:00:00+05:00")
	k.init(t0)
	k.add(1, t0)
	k.prune(t0.Add(-time.Hour), t0.Add(13*time.Hour), 12*time.Hour) // rotates
	k.add(2, t0.Add(13*time.Hour))
	k.add(3, t0.Add(13*time.Hour))
	if !k.has(1) || !k.has(2) || k.has(4) || len(*k.gens.Load()) != 2 {
		t.Fatalf("after rotation: has 1 %v, 2 %v, 4 %v, %d generations", k.has(1), k.has(2), k.has(4), len(*k.gens.Load()))
	}
	k.prune(t0, t0.Add(14*time.Hour), 12*time.Hour) // cutoff not past t0
	if !k.has(1) {
		t.Fatal("dropped a generation holding a record created at the cutoff")
	}
	k.prune(t0.Add(time.Nanosecond), t0.Add(15*time.Hour), 12*time.Hour)
	if k.has(1) || !k.has(2) || !k.has(3) || k.count() != 2 {
		t.Fatalf("after the cutoff passed: has 1 %v, 2 %v, count %d", k.has(1), k.has(2), k.count())
	}
	k.prune(t0.Add(48*time.Hour), t0.Add(96*time.Hour), 12*time.Hour)
	if !k.has(2) {
		t.Fatal("dropped the current generation")
	}
}
