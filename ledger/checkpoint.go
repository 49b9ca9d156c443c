package ledger

import (
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Checkpoint writes a consistent copy of the ledger's Pebble store into
// dir, which must not exist yet, while the ledger keeps serving. Opening
// dir with Open gives the ledger as it was at one instant: every change
// acknowledged before Checkpoint was called is in it, and a change that
// commits meanwhile is either wholly in it or wholly absent, exactly as
// after a crash at that instant (each change is one Pebble batch).
//
// Pebble hard-links the sstables when dir is on the same filesystem as the
// ledger, so a checkpoint costs little space at first and grows as
// compactions replace the files it shares; copy it elsewhere and delete
// it. The checkpoint waits for a running cut-off to finish and the other
// way round; redemptions are not held up.
func (l *Ledger) Checkpoint(dir string) error {
	if err := l.check(); err != nil {
		return err
	}

	// The cut mutex keeps Close from closing Pebble under the checkpoint.
	l.cut.Lock()
	defer l.cut.Unlock()
	if l.cut.closed {
		return ErrUnavailable
	}

	start := time.Now()
	seq := l.seq.Load()
	if err := l.db.Checkpoint(dir, pebble.WithFlushedWAL()); err != nil {
		return fmt.Errorf("cannot write checkpoint %q: %w", dir, err)
	}
	l.log.Info("ledger checkpoint written", "dir", dir, "seq_at_start", seq,
		"vouchers", l.vouchers.len(), "duration", time.Since(start))
	return nil
}

// Dir returns the directory the ledger's Pebble store lives in.
func (l *Ledger) Dir() string { return l.pebbleWatch.dir }
