package settlement

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"azyq/ledger"
)

// metrics are the settlement's own instruments; gauges are read at scrape
// time from the batch heads and the ledger's accounts.
type metrics struct {
	cutoffSeconds prometheus.Histogram
	batchesTotal  prometheus.Counter
}

func (m *metrics) init() {
	m.cutoffSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "azyq_settlement_cutoff_duration_seconds",
		Help:    "Time one cut-off took: cutting the ledger, reading the periods, committing the batches.",
		Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	m.batchesTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "azyq_settlement_batches_total",
		Help: "Settlement batches built since start.",
	})
}

// unacked summarises the batches waiting for their bank.
func (s *Settlement) unacked() (count, late int, oldestAge float64) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.mu.heads {
		if b.Status != StatusReady {
			continue
		}
		count++
		age := now.Sub(b.PeriodEnd)
		if age > s.prog.AckDeadline {
			late++
		}
		oldestAge = max(oldestAge, age.Seconds())
	}
	return count, late, oldestAge
}

// Collectors returns the settlement's collectors for the gateway to
// register: the cut-off duration, batches built, and gauges read at scrape
// time — unacknowledged batches, how many of them are past the programme's
// ack_deadline, the oldest one's age, the last cut-off's time, and the
// amount owed to shops that no batch has paid yet.
func (s *Settlement) Collectors() []prometheus.Collector {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	return []prometheus.Collector{
		s.metrics.cutoffSeconds,
		s.metrics.batchesTotal,
		gauge("azyq_settlement_unacknowledged_batches", "Batches ready but not yet acknowledged by their bank.",
			func() float64 { n, _, _ := s.unacked(); return float64(n) }),
		gauge("azyq_settlement_late_batches",
			"Unacknowledged batches older than the programme's ack_deadline; alert when above zero.",
			func() float64 { _, n, _ := s.unacked(); return float64(n) }),
		gauge("azyq_settlement_oldest_unacknowledged_age_seconds",
			"Age of the oldest unacknowledged batch since its cut-off; zero when none waits.",
			func() float64 { _, _, age := s.unacked(); return age }),
		gauge("azyq_settlement_ack_deadline_seconds", "The programme's ack_deadline, the limit beside the age above.",
			func() float64 { return s.prog.AckDeadline.Seconds() }),
		gauge("azyq_settlement_last_cutoff_timestamp_seconds", "Unix time of the last cut-off.",
			func() float64 {
				s.mu.Lock()
				defer s.mu.Unlock()
				return float64(s.mu.lastCutoff.UnixNano()) / 1e9
			}),
		gauge("azyq_settlement_unsettled_tiyn",
			"Owed to shops and not yet in a paid batch: the sum of the shops' payable accounts, in tiyn.",
			func() float64 {
				var sum int64
				for name, v := range s.l.Accounts() {
					if strings.HasPrefix(name, ledger.AccountStore("")) {
						sum += int64(v)
					}
				}
				return float64(sum)
			}),
	}
}
