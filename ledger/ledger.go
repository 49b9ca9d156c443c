package ledger

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"azyq/domain"
)

// Config configures Open. Dir and Programme are required.
type Config struct {
	// Dir is the data directory Pebble keeps its files in.
	Dir string
	// FS is the filesystem under Pebble. Nil means the operating system's;
	// tests pass a fault-injecting one.
	FS vfs.FS
	// Programme is the policy the ledger enforces.
	Programme *domain.Programme
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
	// Logger receives lifecycle events. Nil discards them.
	Logger *slog.Logger
	// ReadOnly opens the directory for inspection only (the offline audit).
	ReadOnly bool
	// CacheSize is Pebble's block cache in bytes. Zero means 64 MiB.
	CacheSize int64
}

// Limits of what a single request may carry. The gateway decodes request
// bodies against the same constants, so what it accepts the ledger accepts.
const (
	LinesMax    = 200     // basket lines of a redemption
	MembersMax  = 30      // members of a family
	IssuanceMax = 100_000 // families of one issuance request
	IDMax       = 64      // bytes of a store, terminal or family id
	NameMax     = 140     // bytes of a store name
	CityMax     = 64      // bytes of a city name
	SKUMax      = 64      // bytes of a basket line's sku
	CategoryMax = 64      // bytes of a basket line's category code
)

// Limits of the ledger's own work.
const (
	citiesMax     = 1<<16 - 1
	issueBatchMax = 10_000 // families per Pebble batch during issuance
	lapseBatchMax = 512    // vouchers locked together during lapse
	// tokenLifetimeMax is the longest a QR token can live (the programme's
	// qr_lifetime is at most an hour); recovery looks that far back for
	// tokens still to be remembered, plus tokenScanMargin.
	tokenLifetimeMax = time.Hour
	tokenScanMargin  = time.Minute
)

// Ledger is the voucher ledger. All its methods are safe for concurrent use.
// See the package documentation for its design and invariants.
type Ledger struct {
	prog *domain.Programme
	now  func() time.Time
	log  *slog.Logger
	db   *pebble.DB

	readOnly bool
	stopped  atomic.Pointer[error] // why the ledger stopped, nil while serving

	vouchers arena
	seq      atomic.Uint64 // last sequence number handed out
	epoch    atomic.Pointer[epoch]
	nonces   usedTokens
	idem     reservations
	accounts accounts

	// issue serialises issuance, which is the only writer of the family
	// index and the city table.
	issue struct {
		sync.Mutex
		families familyIndex
		cityIDs  map[string]uint16
		strings  stringSlab // family ids of the vouchers
	}
	cities atomic.Pointer[[]string] // city names by id; grows copy-on-write

	// admin serialises writes to stores and terminals; readers use the
	// copy-on-write maps without locking.
	admin struct {
		sync.Mutex
	}
	stores    atomic.Pointer[map[string]*storeState]
	terminals atomic.Pointer[terminalIndex]

	adminLog adminLog // the append-only record of admin actions (auditlog.go)

	cut struct {
		sync.Mutex
		closed bool
	}

	metrics     Metrics
	pebbleWatch pebbleWatch // Pebble's events and limits, for PebbleCollector

	// testHookBeforeCommit, set only by tests, runs in a redemption's commit
	// path with the voucher's lock held, just before the batch is committed.
	// Nil in production.
	testHookBeforeCommit func(VoucherID)
}

// Open opens (or creates) the ledger in cfg.Dir and rebuilds memory from it.
func Open(cfg Config) (*Ledger, error) {
	if cfg.Programme == nil {
		return nil, errors.New("cannot open ledger: no programme configured")
	}
	l := &Ledger{prog: cfg.Programme, now: cfg.Now, log: cfg.Logger, readOnly: cfg.ReadOnly}
	if l.now == nil {
		l.now = time.Now
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.metrics.init()
	l.nonces.init()
	l.idem.init(l.now())
	l.accounts.init()
	l.issue.families.init()
	l.issue.cityIDs = make(map[string]uint16)
	l.cities.Store(&[]string{})
	l.stores.Store(&map[string]*storeState{})
	l.terminals.Store(&terminalIndex{})

	cacheSize := cfg.CacheSize
	if cacheSize == 0 {
		cacheSize = 64 << 20
	}
	cache := pebble.NewCache(cacheSize)
	defer cache.Unref()
	opts := &pebble.Options{
		FS:                          cfg.FS,
		Cache:                       cache,
		Merger:                      accountMerger,
		ReadOnly:                    cfg.ReadOnly,
		MemTableSize:                64 << 20,
		MemTableStopWritesThreshold: 4,
		L0CompactionThreshold:       4,
		L0StopWritesThreshold:       24,
		Logger:                      pebbleLogger{l.log},
	}
	opts.EnsureDefaults()
	l.pebbleWatch.attach(cfg.Dir, opts, l.log)

	start := time.Now()
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("cannot open data directory %q (--data): %w", cfg.Dir, err)
	}
	l.db = db
	if err := l.recover(); err != nil {
		db.Close()
		return nil, fmt.Errorf("cannot open data directory %q (--data): %w", cfg.Dir, err)
	}
	l.log.Info("ledger recovered",
		"vouchers", l.vouchers.len(), "seq", l.seq.Load(),
		"period", l.epoch.Load().period, "duration", time.Since(start))
	return l, nil
}

// Close closes the ledger. Calls after Close return ErrUnavailable.
func (l *Ledger) Close() error {
	closed := fmt.Errorf("ledger closed: %w", ErrUnavailable)
	l.stopped.CompareAndSwap(nil, &closed)
	l.cut.Lock()
	defer l.cut.Unlock()
	if l.cut.closed {
		return nil
	}
	l.cut.closed = true
	l.idem.replays.Close()
	return l.db.Close()
}

// Err returns nil while the ledger serves, or why it stopped.
func (l *Ledger) Err() error {
	if p := l.stopped.Load(); p != nil {
		return *p
	}
	return nil
}

// check returns ErrUnavailable once the ledger has stopped.
func (l *Ledger) check() error {
	if l.stopped.Load() != nil {
		return ErrUnavailable
	}
	return nil
}

// fail stops the ledger after a failed write: see invariant 3.
func (l *Ledger) fail(err error) error {
	wrapped := fmt.Errorf("%w: %w", ErrUnavailable, err)
	if l.stopped.CompareAndSwap(nil, &wrapped) {
		l.log.Error("ledger stopped after a failed write; restart to recover from disk", "err", err)
		l.metrics.stopped.Store(true)
	}
	return ErrUnavailable
}

// commit writes b with Sync and closes it. A failure stops the ledger.
func (l *Ledger) commit(b *pebble.Batch) error {
	defer b.Close()
	if l.readOnly {
		return errors.New("cannot write: ledger opened read-only")
	}
	if err := l.check(); err != nil {
		return err
	}
	start := time.Now()
	err := l.apply(b)
	l.metrics.observeCommit(time.Since(start), b.Len())
	if err != nil {
		return l.fail(fmt.Errorf("cannot commit batch: %w", err))
	}
	return nil
}

// apply commits b with Sync. Pebble reports a failed WAL write or sync by
// calling its logger's Fatalf in the committing goroutine; apply turns that
// panic back into an error so that commit can stop the ledger and answer
// ErrUnavailable instead of taking the process down mid-request.
func (l *Ledger) apply(b *pebble.Batch) (err error) {
	defer func() {
		if r := recover(); r != nil {
			fatal, ok := r.(pebbleFatal)
			if !ok {
				panic(r)
			}
			err = fatal
		}
	}()
	return l.db.Apply(b, pebble.Sync)
}

// get reads a key; the value is copied. Callers read only keys that no
// unsynced batch can hold (see invariant 2).
func (l *Ledger) get(key []byte) ([]byte, bool, error) {
	v, closer, err := l.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, l.fail(fmt.Errorf("cannot read key %q: %w", key, err))
	}
	out := bytes.Clone(v)
	closer.Close()
	return out, true, nil
}

// scan calls fn for every key in [lo, hi).
func (l *Ledger) scan(lo, hi []byte, fn func(k, v []byte) error) error {
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("cannot scan %q: %w", lo, err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return fmt.Errorf("cannot read %q: %w", it.Key(), err)
		}
		if err := fn(it.Key(), v); err != nil {
			it.Close()
			return err
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("cannot scan %q: %w", lo, err)
	}
	return nil
}

func tableBounds(table byte) ([]byte, []byte) { return []byte{table}, []byte{table + 1} }

// Programme returns the policy the ledger enforces.
func (l *Ledger) Programme() *domain.Programme { return l.prog }

// Now returns the ledger's current time.
func (l *Ledger) Now() time.Time { return l.now() }

// PebbleMetrics returns Pebble's internal metrics, for the exporter.
func (l *Ledger) PebbleMetrics() *pebble.Metrics { return l.db.Metrics() }

// pebbleLogger sends Pebble's messages to slog: its info lines at debug
// level, since they describe routine flushes and compactions.
type pebbleLogger struct{ log *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf panics with a pebbleFatal. Raised by a commit, Ledger.apply
// recovers it and the ledger stops (invariant 3); raised anywhere else (a
// background flush or compaction), it ends the process, which is fail-stop
// too: a restart rebuilds memory from what is on disk.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.log.Error(msg, "component", "pebble")
	panic(pebbleFatal{msg})
}

// pebbleFatal is a fatal error reported by Pebble.
type pebbleFatal struct{ msg string }

func (p pebbleFatal) Error() string { return p.msg }
