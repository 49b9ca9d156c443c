package ledger

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"azyq/domain"
)

// TestRaceOneVoucher protects the per-voucher lock: 64 goroutines redeem
// one voucher at once, by amount and by basket, some partial; the approved
// total never exceeds the face value and equals face value − balance, and
// every redemption's balance is one the voucher really passed through.
func TestRaceOneVoucher(t *testing.T) {
	f := newFixture(t)
	id := f.active("F-1", 3) // 1,297,500 tiyn
	const goroutines = 64
	attempts := 12
	if testing.Short() {
		attempts = 4
	}

	var approved atomic.Int64
	var mu sync.Mutex
	balances := map[domain.Tiyn]bool{}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range attempts {
				req := &RedeemRequest{Token: f.token(id), StoreID: testStore, TerminalID: testTerminal,
					Partial: rng.IntN(4) == 0}
				if rng.IntN(2) == 0 {
					req.Amount = domain.Tiyn(1 + rng.IntN(5_000))
				} else {
					req.Lines = []Line{{SKU: "a", Category: "bread", Amount: domain.Tiyn(1 + rng.IntN(5_000))}}
				}
				red, err := f.l.Redeem(req)
				if code(err) == CodeInsufficientFunds {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				approved.Add(int64(red.Approved))
				mu.Lock()
				if balances[red.Balance] {
					t.Errorf("two redemptions left balance %d", red.Balance)
				}
				balances[red.Balance] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	v, _ := f.l.Voucher(id)
	if approved.Load() > int64(v.FaceValue) || domain.Tiyn(approved.Load()) != v.FaceValue-v.Balance {
		t.Fatalf("approved %d, face %d, balance %d", approved.Load(), v.FaceValue, v.Balance)
	}
	if v.Spent != domain.Tiyn(approved.Load()) {
		t.Fatalf("spent %d, approved %d", v.Spent, approved.Load())
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}

	// Drain it from 64 goroutines: exactly the balance is approved.
	left := v.Balance
	approved.Store(0)
	for range goroutines {
		wg.Go(func() {
			for {
				red, err := f.l.Redeem(&RedeemRequest{Token: f.token(id), StoreID: testStore,
					TerminalID: testTerminal, Amount: 100_000, Partial: true})
				if code(err) == CodeInsufficientFunds {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				approved.Add(int64(red.Approved))
			}
		})
	}
	wg.Wait()
	if v, _ := f.l.Voucher(id); v.Balance != 0 || domain.Tiyn(approved.Load()) != left {
		t.Fatalf("drained %d of %d, balance %d", approved.Load(), left, v.Balance)
	}
}

// TestStalledCommitBlocksOnlyItsVoucher protects the absence of a global
// lock on the redemption path: while one voucher's commit is stalled
// inside the ledger, redemptions of other vouchers complete, a cut-off
// waits for the stalled commit only, and the stalled redemption lands in
// the period that was open when it began.
func TestStalledCommitBlocksOnlyItsVoucher(t *testing.T) {
	f := newFixture(t)
	stalled := f.active("F-stalled", 1)
	others := []VoucherID{f.active("F-2", 1), f.active("F-3", 1), f.active("F-4", 1)}

	entered, release := make(chan struct{}), make(chan struct{})
	f.l.testHookBeforeCommit = func(id VoucherID) {
		if id == stalled {
			close(entered)
			<-release
		}
	}
	period := f.l.OpenPeriod()
	stalledDone := make(chan *Redemption)
	go func() {
		red, err := f.redeem(stalled, 1_000)
		if err != nil {
			t.Error(err)
		}
		stalledDone <- red
	}()
	<-entered

	// Other vouchers redeem while the stalled commit holds its voucher.
	for i := range 30 {
		if _, err := f.redeem(others[i%len(others)], 100); err != nil {
			t.Fatal(err)
		}
	}

	// A cut-off waits for the stalled commit; redemptions go on meanwhile,
	// in the next period.
	cutDone := make(chan uint64)
	go func() {
		p, err := f.l.Cut()
		if err != nil {
			t.Error(err)
		}
		cutDone <- p
	}()
	for f.l.OpenPeriod() == period {
		time.Sleep(time.Millisecond)
	}
	red, err := f.redeem(others[0], 100)
	if err != nil || red.Period != period+1 {
		t.Fatalf("redemption during the cut-off: %+v, %v", red, err)
	}
	select {
	case <-cutDone:
		t.Fatal("the cut-off finished before a commit of its period")
	case red := <-stalledDone:
		t.Fatalf("the stalled redemption finished early: %+v", red)
	default:
	}

	close(release)
	got := <-stalledDone
	if p := <-cutDone; p != period || got.Period != period {
		t.Fatalf("cut %d, stalled redemption in period %d, want %d", p, got.Period, period)
	}
	var inPeriod int
	if err := f.l.Movements(period, period, func(m *Movement) error { inPeriod++; return nil }); err != nil {
		t.Fatal(err)
	}
	if inPeriod != 31 {
		t.Fatalf("%d movements in the closed period, want 31", inPeriod)
	}
	if err := f.l.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestRedeemAllocations pins the allocations of the redemption path: the
// returned record and nothing else of the ledger's own, so a change that
// adds garbage to every redemption shows up here, not in production.
func TestRedeemAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	if invariantsEnabled {
		t.Skip("the invariants build reads every record back")
	}
	f := newFixture(t)
	id := f.active("F-1", 30)
	req := &RedeemRequest{StoreID: testStore, TerminalID: testTerminal, Amount: 1}
	var n uint64
	allocs := testing.AllocsPerRun(200, func() {
		n++
		req.Token = Token{Voucher: id, Nonce: 1<<40 + n, Expires: f.clock.Now().Add(time.Minute)}
		if _, err := f.l.Redeem(req); err != nil {
			t.Fatal(err)
		}
	})
	// One for the Redemption; the used-token map and Pebble's pools may
	// grow now and then.
	t.Logf("%.2f allocations per redemption", allocs)
	if allocs > 1.5 {
		t.Fatalf("%.2f allocations per redemption, want at most 1.5", allocs)
	}
}
