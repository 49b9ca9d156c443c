package ledger

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the ledger's own instruments. The gateway registers them with
// Collectors; Pebble's internals are exported separately from PebbleMetrics.
type Metrics struct {
	commitSeconds prometheus.Histogram
	commitBytes   prometheus.Counter
	stopped       atomic.Bool
}

func (m *Metrics) init() {
	m.commitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "azyq_ledger_commit_duration_seconds",
		Help: "Time to commit one ledger batch with sync, including the shared WAL fsync.",
		Buckets: []float64{
			.0001, .00025, .0005, .00075, .001, .0015, .002, .003, .005, .0075,
			.01, .025, .05, .1, .25, .5, 1,
		},
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	})
	m.commitBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "azyq_ledger_commit_bytes_total",
		Help: "Bytes of ledger batches committed.",
	})
}

func (m *Metrics) observeCommit(d time.Duration, bytes int) {
	m.commitSeconds.Observe(d.Seconds())
	m.commitBytes.Add(float64(bytes))
}

// Collectors returns the ledger's collectors, and gauges read at scrape
// time: vouchers, sequence, open period, whether the ledger has stopped.
func (l *Ledger) Collectors() []prometheus.Collector {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	return []prometheus.Collector{
		l.metrics.commitSeconds,
		l.metrics.commitBytes,
		gauge("azyq_ledger_vouchers", "Vouchers held in memory.",
			func() float64 { return float64(l.vouchers.len()) }),
		gauge("azyq_ledger_sequence", "Last movement sequence number handed out.",
			func() float64 { return float64(l.seq.Load()) }),
		gauge("azyq_ledger_open_period", "Settlement period that new movements join.",
			func() float64 { return float64(l.epoch.Load().period) }),
		gauge("azyq_ledger_stopped", "1 once the ledger stopped after a failed write (fail-stop).",
			func() float64 {
				if l.metrics.stopped.Load() {
					return 1
				}
				return 0
			}),
		gauge("azyq_ledger_used_tokens", "QR token nonces remembered until their expiry.",
			func() float64 { return float64(l.nonces.count()) }),
		gauge("azyq_ledger_idempotency_in_flight", "Idempotency keys reserved by running requests.",
			func() float64 { return float64(l.idem.count()) }),
		gauge("azyq_ledger_idempotency_known_keys",
			"Hashes of idempotency keys remembered so that new keys need no disk read; about the records kept for the retention.",
			func() float64 { return float64(l.idem.known.count()) }),
	}
}
