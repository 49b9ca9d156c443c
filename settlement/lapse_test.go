package settlement

import (
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"azyq/domain"
	"azyq/ledger"
)

var errInjected = errors.New("injected write failure")

// walFault fails every write and sync of Pebble's write-ahead log once
// armed and once the first synced commit after arming has gone through:
// the disk dies right after the first lapse chunk is durable.
type walFault struct {
	armed atomic.Bool
	syncs atomic.Int32
}

func (w *walFault) inject(op errorfs.Op) error {
	if !w.armed.Load() || !strings.HasSuffix(op.Path, ".log") {
		return nil
	}
	switch op.Kind {
	case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
		if w.syncs.Add(1) > 1 {
			return errInjected
		}
	case errorfs.OpFileWrite, errorfs.OpFileWriteAt:
		if w.syncs.Load() >= 1 {
			return errInjected
		}
	}
	return nil
}

// TestLapseRestartMidway protects the month-end lapse: a disk failure after
// the first chunk stops the ledger, and after a restart the lapse finishes
// without skipping or repeating a voucher — the lapsed account ends at the
// sum of the month's remainders exactly once, and lapsing again is a no-op.
func TestLapseRestartMidway(t *testing.T) {
	fault := &walFault{}
	f := &fixture{t: t, dir: t.TempDir(), prog: domain.DefaultProgramme(),
		clock: &clock{t: mustTime("2026-12-03T10:00:00+05:00")}}
	f.fs = errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(fault.inject))
	f.open()
	f.shop("S1", "HSBKKZKX")

	// 1,300 vouchers (three lapse chunks); a third spent from.
	month := domain.MakeMonth(2026, 12)
	fams := make([]ledger.Family, 1300)
	for i := range fams {
		fams[i] = ledger.Family{FamilyID: "F-" + strconv.Itoa(i), Members: 1 + i%5, City: "Akkol"}
	}
	out, err := f.l.Issue(month, fams)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range out {
		if i%3 != 0 {
			continue
		}
		if _, err := f.l.Activate(o.Voucher.ID); err != nil {
			t.Fatal(err)
		}
		f.redeem(o.Voucher.ID, "S1", domain.Tiyn(1000+i))
	}
	before := f.l.Books()
	remainders := before.Vouchers

	// Month over; the disk fails after the first chunk.
	f.clock.Set(mustTime("2027-01-01T00:00:00+05:00"))
	fault.armed.Store(true)
	n, _, err := f.l.Lapse(month)
	if !errors.Is(err, ledger.ErrUnavailable) || n == 0 || n >= len(fams) {
		t.Fatalf("lapse with a failing disk: %d vouchers, %v", n, err)
	}
	f.l.Close()

	fault.armed.Store(false)
	f.open()
	midway := f.l.Accounts()[ledger.AccountLapsed]
	if midway <= 0 || midway >= remainders {
		t.Fatalf("after restart the lapsed account holds %d of %d", midway, remainders)
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}

	// Finish, then try again: the sum is counted exactly once.
	if err := f.l.LapseDue(); err != nil {
		t.Fatal(err)
	}
	if n, total, err := f.l.Lapse(month); err != nil || n != 0 || total != 0 {
		t.Fatalf("second lapse: %d vouchers, %d, %v", n, total, err)
	}
	f.reopen()
	after := f.l.Books()
	if got := f.l.Accounts()[ledger.AccountLapsed]; got != remainders || after.Lapsed != remainders || after.Vouchers != 0 {
		t.Fatalf("lapsed account %d, vouchers' lapsed %d, balances %d; want %d lapsed once",
			got, after.Lapsed, after.Vouchers, remainders)
	}
	for _, o := range out {
		v, err := f.l.Voucher(o.Voucher.ID)
		if err != nil || v.Balance != 0 || v.FaceValue != v.Spent+v.Lapsed {
			t.Fatalf("voucher after lapse: %+v, %v", v, err)
		}
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}
