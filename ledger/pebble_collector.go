package ledger

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// pebbleWatch listens to Pebble's events (write stalls, slow disk
// operations, background errors) and remembers what the exporter needs to
// know about Pebble's configuration. Open attaches it to the options before
// Pebble starts; PebbleCollector reads it at scrape time.
//
// Invariants:
//
//  1. The listener callbacks only update counters under mu and never call
//     back into Pebble: Pebble invokes WriteStallBegin/End with its own mutex
//     held, so anything slower or re-entrant would lengthen the stall.
//  2. stalls and stallSeconds only grow; the collector adds the running
//     stall's elapsed time to stallSeconds without storing it, so a stall
//     that never ends still shows in every scrape and the counter stays
//     monotonic when it ends.
//  3. At most one log line per watchLogInterval per kind of event: a stall
//     storm under overload must not turn into a log storm.
//
// A simpler design reads stall totals from Pebble's metrics, but Pebble only
// accumulates stall durations per batch (commitStats), never in DB.Metrics,
// so the listener is the only place a stall is visible while it happens.
type pebbleWatch struct {
	now func() time.Time
	log *slog.Logger
	dir string
	fs  vfs.FS

	// Configured limits, exported beside their current use.
	memTablesMax    int
	memTableSize    uint64
	l0StopWrites    int
	blockCacheBytes int64

	diskSlow atomic.Uint64
	bgErrors atomic.Uint64

	mu struct {
		sync.Mutex
		stalls       map[string]uint64 // by reason: memtable, l0, other
		stallSeconds float64           // finished stalls only
		stallStart   time.Time         // zero while no stall runs
		stallReason  string
		logged       map[string]time.Time // last log line per event kind
		suppressed   map[string]int       // lines not logged since then
	}
}

// watchLogInterval is how often each kind of Pebble event may be logged.
const watchLogInterval = 10 * time.Second

// attach records Pebble's limits and adds the event listener to opts, which
// must already have its defaults.
func (w *pebbleWatch) attach(dir string, opts *pebble.Options, log *slog.Logger) {
	if w.now == nil {
		w.now = time.Now
	}
	w.log = log
	w.dir = dir
	w.fs = opts.FS
	w.memTablesMax = opts.MemTableStopWritesThreshold
	w.memTableSize = opts.MemTableSize
	w.l0StopWrites = opts.L0StopWritesThreshold
	if opts.Cache != nil {
		w.blockCacheBytes = opts.Cache.MaxSize()
	}
	w.mu.stalls = make(map[string]uint64)
	w.mu.logged = make(map[string]time.Time)
	w.mu.suppressed = make(map[string]int)

	opts.AddEventListener(pebble.EventListener{
		WriteStallBegin: w.stallBegin,
		WriteStallEnd:   w.stallEnd,
		DiskSlow: func(info pebble.DiskSlowInfo) {
			w.diskSlow.Add(1)
			w.logThrottled("disk_slow", slog.LevelWarn, "pebble disk operation slow",
				"op", info.OpType.String(), "duration", info.Duration)
		},
		BackgroundError: func(err error) {
			w.bgErrors.Add(1)
			w.logThrottled("background_error", slog.LevelError, "pebble background error",
				"err", err)
		},
	})
}

// stallReason maps Pebble's free-text reason onto a bounded label value.
func stallReason(reason string) string {
	switch {
	case strings.Contains(reason, "memtable"):
		return "memtable"
	case strings.Contains(reason, "L0"):
		return "l0"
	default:
		return "other"
	}
}

func (w *pebbleWatch) stallBegin(info pebble.WriteStallBeginInfo) {
	w.mu.Lock()
	defer w.mu.Unlock()
	reason := stallReason(info.Reason)
	w.mu.stalls[reason]++
	if w.mu.stallStart.IsZero() {
		w.mu.stallStart = w.now()
		w.mu.stallReason = reason
	}
}

func (w *pebbleWatch) stallEnd() {
	w.mu.Lock()
	if w.mu.stallStart.IsZero() {
		w.mu.Unlock()
		return
	}
	d := w.now().Sub(w.mu.stallStart)
	reason := w.mu.stallReason
	w.mu.stallSeconds += d.Seconds()
	w.mu.stallStart = time.Time{}
	w.mu.Unlock()

	w.logThrottled("write_stall", slog.LevelWarn, "pebble write stall ended",
		"reason", reason, "duration", d)
}

// stallTotals returns the stall counts by reason, the seconds stalled
// including a stall still running, and whether one is running.
func (w *pebbleWatch) stallTotals() (map[string]uint64, float64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	counts := make(map[string]uint64, len(w.mu.stalls))
	for k, v := range w.mu.stalls {
		counts[k] = v
	}
	seconds := w.mu.stallSeconds
	running := !w.mu.stallStart.IsZero()
	if running {
		seconds += w.now().Sub(w.mu.stallStart).Seconds()
	}
	return counts, seconds, running
}

// logThrottled logs msg unless the same kind was logged less than
// watchLogInterval ago; the next line carries how many were suppressed.
func (w *pebbleWatch) logThrottled(kind string, level slog.Level, msg string, args ...any) {
	w.mu.Lock()
	now := w.now()
	if last, ok := w.mu.logged[kind]; ok && now.Sub(last) < watchLogInterval {
		w.mu.suppressed[kind]++
		w.mu.Unlock()
		return
	}
	suppressed := w.mu.suppressed[kind]
	w.mu.suppressed[kind] = 0
	w.mu.logged[kind] = now
	w.mu.Unlock()

	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	w.log.Log(context.Background(), level, msg, args...)
}

// fsyncBucketsKept are the upper bounds, in seconds, of Pebble's WAL fsync
// histogram that the exporter keeps. Pebble's own histogram has 100
// buckets; every bound kept here is one of them, so each exported bucket
// count is exact, not interpolated. Pebble's exponential bounds above 5 ms
// are irregular numbers, so the exporter keeps every fourth of them instead
// of a fixed list.
var fsyncBucketsKept = map[int]bool{ // multiples of 100 µs, below 5 ms
	1: true, 2: true, 3: true, 5: true, 7: true, 10: true,
	15: true, 20: true, 30: true, 40: true,
}

// PebbleCollector returns a collector that reads Pebble's metrics at
// scrape time under azyq names: WAL fsync latency and size, write stalls,
// compaction debt, memtables, L0, disk usage and free space, block cache.
// Each limit Pebble enforces is exported beside its current use. The
// gateway registers it with Collectors.
func (l *Ledger) PebbleCollector() prometheus.Collector {
	return &pebbleCollector{l: l}
}

type pebbleCollector struct{ l *Ledger }

func pebbleDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("azyq_pebble_"+name, help, labels, nil)
}

var (
	pdFsync = pebbleDesc("wal_fsync_duration_seconds",
		"WAL fsync latency; its count is the number of WAL fsyncs, shared by grouped commits.")
	pdWALWritten = pebbleDesc("wal_written_bytes_total",
		"Bytes written to the WAL, including padding.")
	pdWALSize = pebbleDesc("wal_size_bytes",
		"Physical size of the live WAL files.")
	pdWALFiles = pebbleDesc("wal_files", "Live WAL files.")
	pdStalls   = pebbleDesc("write_stalls_total",
		"Write stalls begun, by reason (memtable: flushes behind; l0: compactions behind).", "reason")
	pdStallSeconds = pebbleDesc("write_stall_duration_seconds_total",
		"Seconds writes were stalled, including a stall still running.")
	pdStalled     = pebbleDesc("write_stalled", "1 while writes are stalled.")
	pdDiskSlow    = pebbleDesc("disk_slow_total", "Disk operations Pebble saw take over 5 s.")
	pdBgErrors    = pebbleDesc("background_errors_total", "Errors of flushes and compactions.")
	pdDebt        = pebbleDesc("compaction_debt_bytes", "Estimated bytes compactions must rewrite to reach a healthy shape.")
	pdCompacting  = pebbleDesc("compactions_in_progress", "Compactions running.")
	pdCompactions = pebbleDesc("compactions_total", "Compactions finished.")
	pdFlushes     = pebbleDesc("flushes_total", "Memtable flushes finished.")
	pdMemSize     = pebbleDesc("memtable_size_bytes", "Bytes allocated by memtables, flushing ones included.")
	pdMemCount    = pebbleDesc("memtables", "Memtables, flushing ones included.")
	pdMemMax      = pebbleDesc("memtables_max",
		"Memtables at which writes stall (MemTableStopWritesThreshold).")
	pdMemBytes = pebbleDesc("memtable_capacity_bytes", "Size of one memtable (MemTableSize).")
	pdL0Files  = pebbleDesc("l0_files", "Sstables in level 0.")
	pdL0Sub    = pebbleDesc("l0_sublevels", "Sublevels in level 0, its read amplification.")
	pdL0Max    = pebbleDesc("l0_sublevels_max",
		"L0 read amplification at which writes stall (L0StopWritesThreshold).")
	pdReadAmp   = pebbleDesc("read_amplification", "Sublevels a read may visit across all levels.")
	pdTables    = pebbleDesc("tables", "Live sstables.")
	pdDiskUsage = pebbleDesc("disk_usage_bytes",
		"Disk space used by Pebble: WAL, sstables (live, obsolete, zombie), manifest.")
	pdDiskAvail = pebbleDesc("filesystem_avail_bytes",
		"Free bytes on the data directory's filesystem available to the gateway.")
	pdDiskTotal = pebbleDesc("filesystem_size_bytes", "Size of the data directory's filesystem.")
	pdCacheHits = pebbleDesc("block_cache_hits_total", "Block cache hits.")
	pdCacheMiss = pebbleDesc("block_cache_misses_total", "Block cache misses.")
	pdCacheSize = pebbleDesc("block_cache_size_bytes", "Bytes held in the block cache.")
	pdCacheMax  = pebbleDesc("block_cache_capacity_bytes", "Configured block cache size.")
)

func (c *pebbleCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		pdFsync, pdWALWritten, pdWALSize, pdWALFiles, pdStalls, pdStallSeconds,
		pdStalled, pdDiskSlow, pdBgErrors, pdDebt, pdCompacting, pdCompactions,
		pdFlushes, pdMemSize, pdMemCount, pdMemMax, pdMemBytes, pdL0Files, pdL0Sub,
		pdL0Max, pdReadAmp, pdTables, pdDiskUsage, pdDiskAvail, pdDiskTotal,
		pdCacheHits, pdCacheMiss, pdCacheSize, pdCacheMax,
	} {
		ch <- d
	}
}

// Collect reads DB.Metrics once per scrape. Pebble answers it after Close
// too (with the last values), so a scrape racing shutdown is harmless.
func (c *pebbleCollector) Collect(ch chan<- prometheus.Metric) {
	l, w := c.l, &c.l.pebbleWatch
	m := l.db.Metrics()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}

	// WAL.
	if h := fsyncHistogram(m.LogWriter.FsyncLatency); h != nil {
		ch <- h
	}
	counter(pdWALWritten, float64(m.WAL.BytesWritten))
	gauge(pdWALSize, float64(m.WAL.PhysicalSize))
	gauge(pdWALFiles, float64(m.WAL.Files))

	// Stalls and disk events. Every reason is exported, zero or not, so
	// that rate() sees the first stall.
	stalls, stallSeconds, running := w.stallTotals()
	for _, reason := range []string{"memtable", "l0", "other"} {
		counter(pdStalls, float64(stalls[reason]), reason)
	}
	counter(pdStallSeconds, stallSeconds)
	gauge(pdStalled, boolFloat(running))
	counter(pdDiskSlow, float64(w.diskSlow.Load()))
	counter(pdBgErrors, float64(w.bgErrors.Load()))

	// Compactions, memtables, levels.
	gauge(pdDebt, float64(m.Compact.EstimatedDebt))
	gauge(pdCompacting, float64(m.Compact.NumInProgress))
	counter(pdCompactions, float64(m.Compact.Count))
	counter(pdFlushes, float64(m.Flush.Count))
	gauge(pdMemSize, float64(m.MemTable.Size))
	gauge(pdMemCount, float64(m.MemTable.Count))
	gauge(pdMemMax, float64(w.memTablesMax))
	gauge(pdMemBytes, float64(w.memTableSize))
	gauge(pdL0Files, float64(m.Levels[0].TablesCount))
	gauge(pdL0Sub, float64(m.Levels[0].Sublevels))
	gauge(pdL0Max, float64(w.l0StopWrites))
	gauge(pdReadAmp, float64(m.ReadAmp()))
	gauge(pdTables, float64(m.Total().TablesCount))

	// Disk. A filesystem that cannot report its usage (some test FSs)
	// leaves the two filesystem gauges out rather than reporting zero
	// free bytes, which would page someone.
	gauge(pdDiskUsage, float64(m.DiskSpaceUsage()))
	if w.fs != nil {
		if du, err := w.fs.GetDiskUsage(w.dir); err == nil {
			gauge(pdDiskAvail, float64(du.AvailBytes))
			gauge(pdDiskTotal, float64(du.TotalBytes))
		}
	}

	// Block cache.
	counter(pdCacheHits, float64(m.BlockCache.Hits))
	counter(pdCacheMiss, float64(m.BlockCache.Misses))
	gauge(pdCacheSize, float64(m.BlockCache.Size))
	gauge(pdCacheMax, float64(w.blockCacheBytes))
}

// fsyncHistogram re-exposes Pebble's unnamed WAL fsync histogram, which
// counts nanoseconds, as a histogram in seconds with fewer buckets.
func fsyncHistogram(h prometheus.Histogram) prometheus.Metric {
	if h == nil {
		return nil
	}
	var pb dto.Metric
	if err := h.Write(&pb); err != nil || pb.Histogram == nil {
		return nil
	}
	src := pb.Histogram
	buckets := make(map[float64]uint64, 24)
	exp := 0
	for i, b := range src.Bucket {
		ns := b.GetUpperBound()
		step := ns / float64(100*time.Microsecond)
		keep := false
		if ns < float64(5*time.Millisecond) {
			keep = fsyncBucketsKept[int(step+0.5)]
		} else {
			keep = exp%4 == 0 || i == len(src.Bucket)-1
			exp++
		}
		if keep {
			buckets[ns/1e9] = b.GetCumulativeCount()
		}
	}
	return prometheus.MustNewConstHistogram(pdFsync,
		src.GetSampleCount(), src.GetSampleSum()/1e9, buckets)
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
