package gateway

import (
	"context"
	"log/slog"
	"time"

	"azyq/ledger"
)

// Clock is the time source of background work: tests drive it by hand.
type Clock interface {
	Now() time.Time
	// Tick returns a channel that delivers a value every d, and a function
	// that stops it.
	Tick(d time.Duration) (<-chan time.Time, func())
}

// SystemClock is the wall clock.
type SystemClock struct{}

func (SystemClock) Now() time.Time { return time.Now() }

func (SystemClock) Tick(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// housekeepingEvery is how often idempotency records and used tokens are
// pruned and ended months lapse.
const housekeepingEvery = time.Minute

// Housekeep runs the ledger's timed work until ctx ends: Prune (idempotency
// records past their retention, used tokens past their expiry) and
// LapseDue (remainders of months whose spending ended). A failure is
// logged and retried at the next tick; a stopped ledger ends the loop.
func Housekeep(ctx context.Context, led *ledger.Ledger, clock Clock, log *slog.Logger) {
	tick, stop := clock.Tick(housekeepingEvery)
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
		if led.Err() != nil {
			return
		}
		start := clock.Now()
		n, err := led.Prune()
		if err != nil {
			log.Error("cannot prune idempotency records and used tokens", "err", err)
		} else if n > 0 {
			log.Info("pruned idempotency records", "records", n, "duration", clock.Now().Sub(start))
		}
		if err := led.LapseDue(); err != nil {
			log.Error("cannot lapse ended months", "err", err)
		}
	}
}
