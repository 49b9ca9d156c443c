package ledger

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"azyq/domain"
)

// gatherPebble registers the ledger's Pebble collector alone and gathers it,
// which also runs client_golang's consistency checks (descriptors, label
// sets, histogram shape).
func gatherPebble(t *testing.T, l *Ledger) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(l.PebbleCollector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("cannot gather Pebble metrics: %v", err)
	}
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// TestPebbleCollectorExportsWALAndDisk protects the exporter's contract with
// the alerts and the dashboard: after synced writes the WAL fsync histogram
// counts them in seconds with ascending exact buckets, disk usage and free
// space are reported, and every limit has its gauge.
func TestPebbleCollectorExportsWALAndDisk(t *testing.T) {
	l, err := Open(Config{Dir: t.TempDir(), Programme: domain.DefaultProgramme()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 5 {
		id := fmt.Sprintf("PC%d", i)
		_, err := l.PutStore(Store{ID: id, Name: "Shop " + id, BIN: "260140001231",
			City: "Pavlodar", BankBIC: "HSBKKZKX", IBAN: "KZ89125KZT0000012345"})
		if err != nil {
			t.Fatal(err)
		}
	}

	mfs := gatherPebble(t, l)
	fsync := mfs["azyq_pebble_wal_fsync_duration_seconds"]
	if fsync == nil || fsync.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("WAL fsync histogram missing or not a histogram: %v", fsync)
	}
	h := fsync.Metric[0].Histogram
	if h.GetSampleCount() < 5 {
		t.Errorf("fsyncs = %d after 5 synced writes, want at least 5", h.GetSampleCount())
	}
	if h.GetSampleSum() <= 0 || h.GetSampleSum() > float64(h.GetSampleCount())*10 {
		t.Errorf("fsync seconds sum = %g for %d fsyncs: not in seconds", h.GetSampleSum(), h.GetSampleCount())
	}
	bounds := make([]float64, 0, len(h.Bucket))
	var prev uint64
	for _, b := range h.Bucket {
		bounds = append(bounds, b.GetUpperBound())
		if b.GetCumulativeCount() < prev {
			t.Errorf("bucket le=%g count %d below the previous %d", b.GetUpperBound(), b.GetCumulativeCount(), prev)
		}
		prev = b.GetCumulativeCount()
	}
	if !sort.Float64sAreSorted(bounds) || len(bounds) < 10 || len(bounds) > 30 {
		t.Errorf("fsync bucket bounds = %v, want 10..30 ascending", bounds)
	}
	if bounds[0] != 0.0001 || bounds[len(bounds)-1] < 5 {
		t.Errorf("fsync buckets span %g..%g s, want 100µs up to at least 5s", bounds[0], bounds[len(bounds)-1])
	}

	for name, positive := range map[string]bool{
		"azyq_pebble_disk_usage_bytes":           true,
		"azyq_pebble_filesystem_avail_bytes":     true,
		"azyq_pebble_filesystem_size_bytes":      true,
		"azyq_pebble_wal_written_bytes_total":    true,
		"azyq_pebble_memtables_max":              true,
		"azyq_pebble_l0_sublevels_max":           true,
		"azyq_pebble_block_cache_capacity_bytes": true,
		"azyq_pebble_compaction_debt_bytes":      false,
		"azyq_pebble_write_stalled":              false,
	} {
		mf := mfs[name]
		if mf == nil {
			t.Errorf("%s not exported", name)
			continue
		}
		v := mf.Metric[0].GetGauge().GetValue() + mf.Metric[0].GetCounter().GetValue()
		if positive && v <= 0 {
			t.Errorf("%s = %g, want > 0", name, v)
		}
	}
	if got := len(mfs["azyq_pebble_write_stalls_total"].GetMetric()); got != 3 {
		t.Errorf("write stall reasons exported = %d, want memtable, l0 and other", got)
	}
}

// TestPebbleCollectorAfterClose protects shutdown: a scrape that races the
// ledger's Close must neither panic nor fail the whole scrape.
func TestPebbleCollectorAfterClose(t *testing.T) {
	l, err := Open(Config{Dir: t.TempDir(), Programme: domain.DefaultProgramme()})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if mfs := gatherPebble(t, l); mfs["azyq_pebble_disk_usage_bytes"] == nil {
		t.Error("disk usage missing after Close")
	}
}

// recordHandler keeps log records for assertions.
type recordHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

// TestPebbleWatchStalls protects the write-stall accounting the paging alert
// relies on: a running stall counts in the seconds total before it ends, the
// total never goes backwards when it ends, reasons map onto a bounded label
// set, and stall logs are throttled to one line per interval carrying the
// number suppressed.
func TestPebbleWatchStalls(t *testing.T) {
	clock := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	logs := &recordHandler{}
	w := &pebbleWatch{now: func() time.Time { return clock }}
	opts := &pebble.Options{}
	opts.EnsureDefaults()
	w.attach(t.TempDir(), opts, slog.New(logs))

	opts.EventListener.WriteStallBegin(pebble.WriteStallBeginInfo{Reason: "memtable count limit reached"})
	clock = clock.Add(3 * time.Second)
	counts, seconds, running := w.stallTotals()
	if !running || seconds != 3 || counts["memtable"] != 1 {
		t.Fatalf("during a stall: counts %v, seconds %g, running %v; want memtable 1, 3, true", counts, seconds, running)
	}
	clock = clock.Add(2 * time.Second)
	opts.EventListener.WriteStallEnd()
	_, seconds, running = w.stallTotals()
	if running || seconds != 5 {
		t.Fatalf("after the stall: seconds %g, running %v; want 5, false", seconds, running)
	}

	// A second stall within the log interval is counted but not logged.
	opts.EventListener.WriteStallBegin(pebble.WriteStallBeginInfo{Reason: "L0 file count limit exceeded"})
	clock = clock.Add(time.Second)
	opts.EventListener.WriteStallEnd()
	opts.EventListener.WriteStallEnd() // an unmatched end changes nothing
	counts, seconds, _ = w.stallTotals()
	if counts["l0"] != 1 || seconds != 6 {
		t.Fatalf("after an L0 stall: counts %v, seconds %g; want l0 1, 6", counts, seconds)
	}
	if len(logs.records) != 1 {
		t.Fatalf("logged %d lines for two stalls within %v, want 1", len(logs.records), watchLogInterval)
	}

	// After the interval the next line says how many were suppressed.
	clock = clock.Add(watchLogInterval)
	opts.EventListener.WriteStallBegin(pebble.WriteStallBeginInfo{Reason: "something new"})
	opts.EventListener.WriteStallEnd()
	if len(logs.records) != 2 {
		t.Fatalf("logged %d lines, want 2", len(logs.records))
	}
	var suppressed int64
	logs.records[1].Attrs(func(a slog.Attr) bool {
		if a.Key == "suppressed" {
			suppressed = a.Value.Int64()
		}
		return true
	})
	if suppressed != 1 {
		t.Errorf("suppressed = %d, want 1", suppressed)
	}
	if counts, _, _ := w.stallTotals(); counts["other"] != 1 {
		t.Errorf("unknown reason counted as %v, want other 1", counts)
	}
	if msg := logs.records[0].Message; !strings.Contains(msg, "stall") {
		t.Errorf("log line %q does not say stall", msg)
	}
}
