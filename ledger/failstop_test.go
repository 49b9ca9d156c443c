package ledger

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"azyq/domain"
)

// walFault makes WAL writes or syncs fail once armed.
type walFault struct {
	armed atomic.Bool
	kinds []errorfs.OpKind
}

func (w *walFault) MaybeError(op errorfs.Op) error {
	if !w.armed.Load() || !strings.HasSuffix(op.Path, ".log") {
		return nil
	}
	for _, k := range w.kinds {
		if op.Kind == k {
			return errorfs.ErrInjected
		}
	}
	return nil
}

func (w *walFault) String() string { return "wal fault" }

// TestFailStop protects invariant 3: when the WAL cannot be written or
// synced, the call returns ErrUnavailable, memory keeps the state from
// before it, every later call is refused, and a restart on a healthy disk
// finds the unacknowledged change either whole or not at all, with the
// books balanced.
func TestFailStop(t *testing.T) {
	for _, c := range []struct {
		name  string
		kinds []errorfs.OpKind
	}{
		{"sync", []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo}},
		{"write", []errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fault := &walFault{kinds: c.kinds}
			f := newFixtureWith(t, domain.DefaultProgramme(), errorfs.Wrap(vfs.Default, fault))
			id := f.active("F-1", 1)
			first, err := f.redeem(id, 1_000)
			if err != nil {
				t.Fatal(err)
			}
			tok := f.token(id)

			fault.armed.Store(true)
			red, err := f.l.Redeem(&RedeemRequest{Token: tok, StoreID: testStore, TerminalID: testTerminal, Amount: 5_000})
			if !errors.Is(err, ErrUnavailable) || red != nil {
				t.Fatalf("redeem on a failing WAL: %+v, %v", red, err)
			}
			if f.l.Err() == nil {
				t.Fatal("Err is nil after a failed commit")
			}
			if v := f.l.vouchers.get(id); v.balance != 431_500 || v.spent != 1_000 || f.l.nonces.used(tok) {
				t.Fatalf("memory changed by a failed commit: balance %d spent %d", v.balance, v.spent)
			}

			// Every later call is refused, reads included: memory may
			// disagree with what Pebble holds unsynced.
			fault.armed.Store(false)
			calls := map[string]func() error{
				"Voucher":  func() error { _, err := f.l.Voucher(id); return err },
				"Balance":  func() error { _, err := f.l.Balance(f.token(id)); return err },
				"Redeem":   func() error { _, err := f.redeem(id, 1); return err },
				"Activate": func() error { _, err := f.l.Activate(id); return err },
				"Issue":    func() error { _, err := f.l.Issue(dec2026, []Family{{FamilyID: "F-9", Members: 1}}); return err },
				"Refund": func() error {
					_, err := f.l.Refund(&RefundRequest{Redemption: first.Seq, StoreID: testStore, Amount: 1})
					return err
				},
				"Redemption": func() error { _, err := f.l.Redemption(first.Seq); return err },
				"Reserve":    func() error { _, _, err := f.l.Reserve(testTerminal, "k", [32]byte{}); return err },
				"Cut":        func() error { _, err := f.l.Cut(); return err },
				"Prune":      func() error { _, err := f.l.Prune(); return err },
				"PutStore":   func() error { _, err := f.l.PutStore(testShop("S2", 0)); return err },
				"CommitAux":  func() error { return f.l.CommitAux([]AuxWrite{{Key: []byte("k"), Value: []byte("v")}}, nil) },
			}
			for name, call := range calls {
				if err := call(); !errors.Is(err, ErrUnavailable) {
					t.Errorf("%s after the failure: %v, want ErrUnavailable", name, err)
				}
			}
			f.l.Close() // may report the failure again

			// A restart on a healthy disk: the failed redemption is whole or
			// absent, and nothing else was lost.
			f.fs = nil
			f.open()
			v, err := f.l.Voucher(id)
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.l.Redemption(first.Seq + 1)
			switch {
			case code(err) == CodeNotFound:
				if v.Balance != 431_500 || f.l.seq.Load() != first.Seq {
					t.Errorf("redemption absent but balance %d, seq %d", v.Balance, f.l.seq.Load())
				}
			case err == nil:
				if v.Balance != 426_500 || got.Approved != 5_000 || got.Balance != 426_500 || !f.l.nonces.used(tok) {
					t.Errorf("redemption present (%+v) but balance %d", got, v.Balance)
				}
			default:
				t.Fatal(err)
			}
			if _, err := f.l.Redemption(first.Seq); err != nil {
				t.Errorf("acknowledged redemption lost: %v", err)
			}
			if err := f.l.CheckBooks(); err != nil {
				t.Fatal(err)
			}
			if _, err := f.redeem(id, 1); err != nil {
				t.Fatalf("after restart: %v", err)
			}
		})
	}
}
