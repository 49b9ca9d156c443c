package ledger

import (
	"crypto/sha256"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"azyq/domain"
)

// testClock is a settable clock for tests, safe for concurrent use.
type testClock struct{ t atomic.Pointer[time.Time] }

func newClock(s string) *testClock {
	c := &testClock{}
	c.Set(s)
	return c
}

func (c *testClock) Now() time.Time      { return *c.t.Load() }
func (c *testClock) Add(d time.Duration) { t := c.Now().Add(d); c.t.Store(&t) }
func (c *testClock) Set(s string)        { t := mustTime(s); c.t.Store(&t) }
func (c *testClock) SetTime(t time.Time) { c.t.Store(&t) }
func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// fixture is an open ledger with one shop, one terminal and a clock.
type fixture struct {
	t     testing.TB
	dir   string
	clock *testClock
	prog  *domain.Programme
	fs    vfs.FS // nil: the operating system's
	l     *Ledger
}

const (
	testStore    = "S1"
	testTerminal = "T1"
)

func newFixture(t testing.TB) *fixture {
	return newFixtureWith(t, domain.DefaultProgramme(), nil)
}

// newFixtureWith opens the fixture with a programme and a filesystem.
func newFixtureWith(t testing.TB, prog *domain.Programme, fs vfs.FS) *fixture {
	f := &fixture{t: t, dir: t.TempDir(), clock: newClock("2026-12-03T10:00:00+05:00"), prog: prog, fs: fs}
	f.open()
	if _, err := f.l.PutStore(testShop(testStore, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.l.AddTerminal(testStore, testTerminal, sha256.Sum256([]byte("key-"+testTerminal))); err != nil {
		t.Fatal(err)
	}
	return f
}

func testShop(id string, discountBP int64) Store {
	return Store{
		ID: id, Name: "Shop " + id, BIN: "260140001231", City: "Pavlodar",
		BankBIC: "HSBKKZKX", IBAN: "KZ89125KZT0000012345", DiscountBP: discountBP,
	}
}

func (f *fixture) open() {
	f.t.Helper()
	l, err := Open(Config{Dir: f.dir, FS: f.fs, Programme: f.prog, Now: f.clock.Now})
	if err != nil {
		f.t.Fatal(err)
	}
	f.l = l
	f.t.Cleanup(func() { l.Close() })
}

func (f *fixture) reopen() {
	f.t.Helper()
	if err := f.l.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.open()
}

// active issues and activates a voucher for a family of members.
func (f *fixture) active(family string, members int) VoucherID {
	f.t.Helper()
	m := domain.MonthOf(f.clock.Now(), domain.DefaultProgramme().Location)
	out, err := f.l.Issue(m, []Family{{FamilyID: family, Members: members, City: "Pavlodar"}})
	if err != nil {
		f.t.Fatal(err)
	}
	id := out[0].Voucher.ID
	if _, err := f.l.Activate(id); err != nil {
		f.t.Fatal(err)
	}
	return id
}

var nonce atomic.Uint64

func (f *fixture) token(id VoucherID) Token {
	return Token{Voucher: id, Nonce: nonce.Add(1), Expires: f.clock.Now().Add(2 * time.Minute)}
}

func (f *fixture) redeem(id VoucherID, amount domain.Tiyn) (*Redemption, error) {
	return f.l.Redeem(&RedeemRequest{Token: f.token(id), StoreID: testStore, TerminalID: testTerminal, Amount: amount})
}

func code(err error) Code {
	if r := AsRefusal(err); r != nil {
		return r.Code
	}
	if err != nil {
		return codeCount
	}
	return CodeNone
}

// TestLifecycle walks one voucher through issue, activation, redemption,
// refund and a restart, checking the books at each step.
func TestLifecycle(t *testing.T) {
	f := newFixture(t)
	id := f.active("F-000123", 4)

	v, err := f.l.Voucher(id)
	if err != nil || v.FaceValue != 1_730_000 || v.Balance != 1_730_000 || v.Status != StatusActive {
		t.Fatalf("voucher after activation: %+v, %v", v, err)
	}
	red, err := f.redeem(id, 180_000)
	if err != nil || red.Approved != 180_000 || red.Balance != 1_550_000 {
		t.Fatalf("redeem: %+v, %v", red, err)
	}
	ref, err := f.l.Refund(&RefundRequest{Redemption: red.Seq, StoreID: testStore, TerminalID: testTerminal, Amount: 50_000})
	if err != nil || ref.CreditedTo != CreditVoucher || ref.Balance != 1_600_000 {
		t.Fatalf("refund: %+v, %v", ref, err)
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}

	f.reopen()
	v, _ = f.l.Voucher(id)
	if v.Balance != 1_600_000 || v.Spent != 130_000 {
		t.Fatalf("after restart: %+v", v)
	}
	got, err := f.l.Redemption(red.Seq)
	if err != nil || got.Refunded != 50_000 || got.Approved != 180_000 {
		t.Fatalf("redemption after restart: %+v, %v", got, err)
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.l.Refund(&RefundRequest{Redemption: red.Seq, StoreID: testStore, Amount: 130_001}); code(err) != CodeRefundExceedsRedemption {
		t.Fatalf("over-refund: %v", err)
	}
}
