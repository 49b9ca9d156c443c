package gateway

import (
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Limits are the gateway's protections against overload and abuse. Each
// field's zero value takes the default named beside it.
type Limits struct {
	// TerminalRate is how many requests per second one terminal may make
	// on average, and TerminalBurst how many it may make at once; beyond
	// that it is answered 429 rate_limited with Retry-After. Zero or less
	// disables the limit; gatewayd's --terminal-rate sets 100/s with a
	// burst of 200 by default (TerminalBurst zero means twice the rate):
	// a till makes a request every few seconds, so that only stops a
	// runaway integration or a flood with a stolen key, while a load test
	// driving few terminals hard stays below it.
	TerminalRate  float64
	TerminalBurst int
	// ConnectionsMax caps open API connections (fasthttp's Concurrency);
	// more are refused with 503 and closed. Default 10,000.
	ConnectionsMax int
	// ConnectionsPerIPMax caps open connections from one address;
	// more are refused with 429 and closed. Default 0: no cap, since
	// many tills may share one NAT address.
	ConnectionsPerIPMax int
	// ReadTimeout bounds reading one request, headers and body, so a
	// slow client cannot hold a connection (default 30 s); WriteTimeout
	// bounds writing the answer (default 30 s); IdleTimeout bounds the
	// wait for the next request on a kept-alive connection (default 60 s).
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
}

// Defaults of Limits.
const (
	TerminalRateDefault   = 100 // gatewayd's --terminal-rate
	connectionsMaxDefault = 10_000
	readTimeoutDefault    = 30 * time.Second
	writeTimeoutDefault   = 30 * time.Second
	idleTimeoutDefault    = 60 * time.Second
)

// withDefaults returns the limits with every zero field set to its default.
func (l Limits) withDefaults() Limits {
	if l.TerminalRate > 0 && l.TerminalBurst <= 0 {
		l.TerminalBurst = max(1, int(math.Ceil(2*l.TerminalRate)))
	}
	if l.ConnectionsMax <= 0 {
		l.ConnectionsMax = connectionsMaxDefault
	}
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = readTimeoutDefault
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = writeTimeoutDefault
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = idleTimeoutDefault
	}
	return l
}

// terminalLimiter gives every terminal a token bucket.
//
// Invariants:
//  1. A terminal makes at most burst + rate·t requests in any interval of
//     length t; every request beyond that is refused before it reaches the
//     ledger, so it changes nothing.
//  2. Buckets are kept only for terminals that authenticated, so their
//     number is bounded by the terminal table, not by what clients send.
//  3. Time comes from the injected clock, so tests move it instead of
//     sleeping.
//
// The buckets are sharded by terminal id, so tills of different shops
// never wait on one lock. A single global limiter was rejected: one busy
// chain would starve every other shop.
type terminalLimiter struct {
	limit  rate.Limit
	burst  int
	now    func() time.Time
	shards [limiterShards]struct {
		sync.Mutex
		buckets map[string]*rate.Limiter
	}
	refused prometheus.Counter
}

const limiterShards = 64

func newTerminalLimiter(perSecond float64, burst int, now func() time.Time) *terminalLimiter {
	l := &terminalLimiter{limit: rate.Limit(perSecond), burst: burst, now: now}
	for i := range l.shards {
		l.shards[i].buckets = make(map[string]*rate.Limiter)
	}
	l.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "azyq_http_terminal_rate_limited_total",
		Help: "Terminal requests refused 429 rate_limited by the per-terminal token bucket.",
	})
	return l
}

// allow takes a token of the terminal's bucket. When none is left it
// returns false and how long until one will be.
func (l *terminalLimiter) allow(terminal string) (bool, time.Duration) {
	now := l.now()
	s := &l.shards[shardOf(terminal)]
	s.Lock()
	b, ok := s.buckets[terminal]
	if !ok {
		b = rate.NewLimiter(l.limit, l.burst)
		s.buckets[terminal] = b
	}
	if b.AllowN(now, 1) {
		s.Unlock()
		return true, 0
	}
	wait := time.Duration((1 - b.TokensAt(now)) / float64(l.limit) * float64(time.Second))
	s.Unlock()
	l.refused.Inc()
	return false, wait
}

// forget drops the bucket of a terminal whose key was rotated or which was
// removed; a new bucket starts full.
func (l *terminalLimiter) forget(terminal string) {
	s := &l.shards[shardOf(terminal)]
	s.Lock()
	delete(s.buckets, terminal)
	s.Unlock()
}

func shardOf(s string) int {
	// FNV-1a: terminal ids are short and chosen by the operator.
	h := uint32(2166136261)
	for i := range len(s) {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return int(h % limiterShards)
}

// retryAfterSeconds renders a wait as the Retry-After header: whole
// seconds, rounded up, at least 1.
func retryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10)
}

// limitCollectors export each configured limit of Limits beside its use
// (the in-flight and connection gauges are with the request metrics and
// the operations collectors).
func (l Limits) collectors(tl *terminalLimiter, rejectedConns func() float64) []prometheus.Collector {
	limit := func(name, help string, v float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return v })
	}
	cs := []prometheus.Collector{
		limit("azyq_http_terminal_rate_limit", "Requests per second one terminal may make on average (--terminal-rate); 0 when unlimited.",
			max(0, l.TerminalRate)),
		limit("azyq_http_terminal_rate_burst", "Requests one terminal may make at once (--terminal-burst).",
			float64(l.TerminalBurst)),
		limit("azyq_http_connections_per_ip_max", "Open API connections allowed from one address (--max-conns-per-ip); 0 when unlimited.",
			float64(l.ConnectionsPerIPMax)),
		limit("azyq_http_read_timeout_seconds", "Time allowed to read one request (--read-timeout).", l.ReadTimeout.Seconds()),
		limit("azyq_http_write_timeout_seconds", "Time allowed to write one answer (--write-timeout).", l.WriteTimeout.Seconds()),
		limit("azyq_http_idle_timeout_seconds", "Time a kept-alive connection may wait for its next request (--idle-timeout).",
			l.IdleTimeout.Seconds()),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "azyq_http_connections_rejected_total",
			Help: "API connections refused and closed because azyq_http_connections_max or the per-address cap was reached.",
		}, rejectedConns),
	}
	if tl != nil {
		cs = append(cs, tl.refused)
	}
	return cs
}
