package ledger

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"azyq/domain"
)

// TestCheckpointRestores protects online backups: a checkpoint taken while
// the ledger serves opens as a ledger with the same vouchers and books,
// changes made after it are not in it, an existing target is refused
// without touching it, and a closed ledger refuses to checkpoint.
func TestCheckpointRestores(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, domain.DefaultProgramme().Location)
	clock := func() time.Time { return now }
	l, err := Open(Config{Dir: t.TempDir(), Programme: domain.DefaultProgramme(), Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	month := domain.MonthOf(now, domain.DefaultProgramme().Location)
	families := make([]Family, 20)
	for i := range families {
		families[i] = Family{FamilyID: fmt.Sprintf("F-%03d", i), Members: 1 + i%5, City: "Pavlodar"}
	}
	issued, err := l.Issue(month, families)
	if err != nil {
		t.Fatal(err)
	}
	for _, is := range issued[:10] {
		if _, err := l.Activate(is.Voucher.ID); err != nil {
			t.Fatal(err)
		}
	}
	want := l.Books()

	dir := filepath.Join(t.TempDir(), "cp")
	if err := l.Checkpoint(dir); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if err := l.Checkpoint(dir); err == nil {
		t.Error("a second checkpoint into the same directory succeeded, want an error")
	}

	// A change after the checkpoint must not be in it.
	late := issued[15].Voucher.ID
	if _, err := l.Activate(late); err != nil {
		t.Fatal(err)
	}

	cp, err := Open(Config{Dir: dir, Programme: domain.DefaultProgramme(), Now: clock})
	if err != nil {
		t.Fatalf("cannot open the checkpoint: %v", err)
	}
	defer cp.Close()
	if got := cp.Books(); !reflect.DeepEqual(got, want) {
		t.Errorf("checkpoint books = %+v, want %+v", got, want)
	}
	for _, is := range issued {
		orig, err := l.Voucher(is.Voucher.ID)
		if err != nil {
			t.Fatal(err)
		}
		got, err := cp.Voucher(is.Voucher.ID)
		if err != nil {
			t.Fatalf("voucher %s missing from the checkpoint: %v", is.Voucher.ID, err)
		}
		if is.Voucher.ID == late {
			orig.Status, orig.ActivatedAt = StatusIssued, time.Time{}
		}
		if got.Status != orig.Status || got.Balance != orig.Balance || !got.ActivatedAt.Equal(orig.ActivatedAt) {
			t.Errorf("voucher %s in checkpoint = %+v, want %+v", is.Voucher.ID, got, orig)
		}
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Checkpoint(filepath.Join(t.TempDir(), "late")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Checkpoint after Close = %v, want ErrUnavailable", err)
	}
}

// TestVoucherStatsMatchesVouchers protects the census behind the vouchers-
// by-status metrics: it agrees with each voucher's own view, before and
// after the month ends.
func TestVoucherStatsMatchesVouchers(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, domain.DefaultProgramme().Location)
	l, err := Open(Config{Dir: t.TempDir(), Programme: domain.DefaultProgramme(),
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	month := domain.MonthOf(now, domain.DefaultProgramme().Location)
	issued, err := l.Issue(month, []Family{{"F-1", 2, "Pavlodar"}, {"F-2", 3, "Pavlodar"}, {"F-3", 4, "Pavlodar"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Activate(issued[0].Voucher.ID); err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Time{now, now.AddDate(0, 1, 0)} {
		now = at
		var want VoucherStats
		for _, is := range issued {
			v, err := l.Voucher(is.Voucher.ID)
			if err != nil {
				t.Fatal(err)
			}
			want.Count[v.Status]++
			want.Balance[v.Status] += v.Balance
		}
		got := l.VoucherStats()
		if got.Count != want.Count || got.Balance != want.Balance {
			t.Errorf("at %v: stats %v %v, want %v %v", at, got.Count, got.Balance, want.Count, want.Balance)
		}
	}
}
