package ledger

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"time"
)

var openPeriodKey = []byte{tableMeta, 'p', 'e', 'r', 'i', 'o', 'd'}

// OpenPeriod returns the settlement period that new movements join.
func (l *Ledger) OpenPeriod() uint64 { return l.epoch.Load().period }

// Cut closes the open settlement period and returns its number. It returns
// only once every movement stamped with that period has finished its commit,
// so Movements then sees the period whole and it never changes again. Cut
// neither blocks nor waits for redemptions that start after it: they join
// the next period at once.
func (l *Ledger) Cut() (uint64, error) {
	if err := l.check(); err != nil {
		return 0, err
	}
	l.cut.Lock()
	defer l.cut.Unlock()

	// Open the next period first, then close the old one: a writer that
	// saw the old period open is already counted in its inflight.
	old := l.epoch.Load()
	l.epoch.Store(&epoch{period: old.period + 1})
	old.closed.Store(true)
	for spins := 0; old.inflight.Load() != 0; spins++ {
		if spins < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(50 * time.Microsecond)
		}
	}

	// Record that the next period is open, so that after a restart new
	// movements cannot join the closed one.
	b := l.db.NewBatch()
	b.Set(openPeriodKey, binary.BigEndian.AppendUint64(nil, old.period+1), nil)
	if err := l.commit(b); err != nil {
		return 0, err
	}
	return old.period, nil
}

// Movements calls fn, in sequence order within each period, for every
// movement of the periods from..to inclusive. Call it only for periods that
// Cut has closed.
func (l *Ledger) Movements(from, to uint64, fn func(*Movement) error) error {
	if open := l.OpenPeriod(); to >= open {
		return fmt.Errorf("cannot read period %d: it is still open", to)
	}
	lo := periodKey(nil, from, 0)
	hi := periodKey(nil, to+1, 0)
	return l.scan(lo, hi, func(k, v []byte) error {
		period := binary.BigEndian.Uint64(k[1:9])
		seq := binary.BigEndian.Uint64(k[9:17])
		m, err := decodeSummary(period, seq, v)
		if err != nil {
			return err
		}
		m.CreatedAt = m.CreatedAt.In(l.prog.Location)
		return fn(&m)
	})
}

// AuxWrite is a write to the auxiliary table that other packages (the
// settlement) keep their records in. Keys are private to the caller; the
// ledger adds its own table prefix.
type AuxWrite struct {
	Key    []byte
	Value  []byte
	Delete bool
}

// CommitAux writes auxiliary records and double-entry postings in one synced
// batch, and applies the postings to memory after it syncs.
func (l *Ledger) CommitAux(writes []AuxWrite, postings []Posting) error {
	if err := l.check(); err != nil {
		return err
	}
	b := l.db.NewBatch()
	for _, w := range writes {
		key := append([]byte{tableAux}, w.Key...)
		if w.Delete {
			b.Delete(key, nil)
		} else {
			b.Set(key, w.Value, nil)
		}
	}
	for _, p := range postings {
		if p.Amount < 0 || p.From == "" || p.To == "" {
			panic(fmt.Sprintf("BUG: posting %+v", p))
		}
		postAccount(b, p.From, -p.Amount)
		postAccount(b, p.To, p.Amount)
	}
	if err := l.commit(b); err != nil {
		return err
	}
	for _, p := range postings {
		l.accounts.add(p.From, -p.Amount)
		l.accounts.add(p.To, p.Amount)
	}
	return nil
}

// GetAux reads an auxiliary record. Callers read records they wrote through
// CommitAux, which had synced before it returned.
func (l *Ledger) GetAux(key []byte) ([]byte, bool, error) {
	return l.get(append([]byte{tableAux}, key...))
}

// ScanAux calls fn for every auxiliary record whose key starts with prefix,
// in key order. The key passed to fn lacks the ledger's table prefix and is
// valid only during the call.
func (l *Ledger) ScanAux(prefix []byte, fn func(key, value []byte) error) error {
	lo := append([]byte{tableAux}, prefix...)
	hi := prefixEnd(lo)
	return l.scan(lo, hi, func(k, v []byte) error { return fn(k[1:], v) })
}

// prefixEnd returns the first key after every key starting with p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
