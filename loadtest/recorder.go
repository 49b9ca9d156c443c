package loadtest

import (
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds: latencies are recorded in microseconds, from 1 µs to
// latencyMax, with three significant digits overall and two per second of
// the time series (which only feeds a plot).
const (
	latencyMax         = 60 * time.Second
	latencyDigits      = 3
	seriesDigits       = 2
	seriesSecondsMax   = 3600 // the time series covers at most an hour
	outcomeApproved    = "approved"
	outcomeOK          = "ok"
	outcomeTransport   = "transport_error"
	outcomeReplayWrong = "replay_mismatch"
)

// Recorder collects latencies and outcomes of the timed phase. It is safe
// for concurrent use.
//
// One mutex guards everything. Recording is a few array increments, tens
// of nanoseconds, against requests that take tens of microseconds at the
// very least; a per-worker recorder merged at the end was the alternative
// and would complicate the per-second series for no measurable gain on
// the two-core machines this runs on.
type Recorder struct {
	start time.Time

	mu struct {
		sync.Mutex
		latency  [kindCount]*hdr.Histogram
		outcomes [kindCount]map[string]int64
		series   []*second
		// startLag is, in the open loop, how late a worker picked up
		// each request after its scheduled start: all of it is in the
		// latency, and when it is large the load generator or the
		// machine, not the server, is what is being measured.
		startLag *hdr.Histogram
	}
}

// RecordStartLag adds how late an open-loop request started.
func (r *Recorder) RecordStartLag(lag time.Duration) {
	us := min(max(lag.Microseconds(), 1), latencyMax.Microseconds())
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.startLag.RecordValue(us)
}

// second is one second of the run: how many operations ended in it and the
// latency of its POS operations.
type second struct {
	count   [kindCount]int64
	errors  int64
	latency *hdr.Histogram
}

func newLatencyHistogram(digits int) *hdr.Histogram {
	return hdr.New(1, latencyMax.Microseconds(), digits)
}

// NewRecorder returns a recorder whose time series starts at start.
func NewRecorder(start time.Time) *Recorder {
	r := &Recorder{start: start}
	r.mu.startLag = newLatencyHistogram(latencyDigits)
	for k := range kindCount {
		r.mu.latency[k] = newLatencyHistogram(latencyDigits)
		r.mu.outcomes[k] = make(map[string]int64)
	}
	return r
}

// Record adds one operation that ended at end after taking latency, with
// its outcome: "approved", "ok", a decline or error code of the contract,
// "transport_error" or "replay_mismatch".
func (r *Recorder) Record(k Kind, end time.Time, latency time.Duration, outcome string) {
	us := max(latency.Microseconds(), 1)
	us = min(us, latencyMax.Microseconds())
	sec := int(end.Sub(r.start) / time.Second)
	failed := isFailure(outcome)

	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.latency[k].RecordValue(us)
	r.mu.outcomes[k][outcome]++
	if sec < 0 || sec >= seriesSecondsMax {
		return
	}
	for len(r.mu.series) <= sec {
		r.mu.series = append(r.mu.series, &second{latency: newLatencyHistogram(seriesDigits)})
	}
	s := r.mu.series[sec]
	s.count[k]++
	if failed {
		s.errors++
	}
	if k != KindQRMint {
		s.latency.RecordValue(us)
	}
}

// isFailure tells the outcomes that are faults of the system (or of the
// load test) from business answers such as declines.
func isFailure(outcome string) bool {
	switch outcome {
	case outcomeTransport, outcomeReplayWrong, "unavailable", "invalid_request",
		"unauthenticated", "forbidden", "http_5xx", "unexpected":
		return true
	}
	return false
}
