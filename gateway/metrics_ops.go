package gateway

import (
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/valyala/fasthttp"

	"azyq/ledger"
)

// opsCollectors are the instruments an SRE needs beside the request
// counters: every configured limit next to its current use, the voucher
// census, Pebble's health, online backups and the build. None of them is
// touched on the request path; all are read at scrape time.
func (s *Server) opsCollectors() []prometheus.Collector {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	limit := func(name, help string, v float64) prometheus.Collector {
		return gauge(name, help, func() float64 { return v })
	}
	// The fasthttp server is built after the metrics: read it at scrape.
	openConns := func() float64 {
		if s.http == nil {
			return 0
		}
		return float64(s.http.GetOpenConnectionsCount())
	}
	connMax := func() float64 {
		if s.http == nil || s.http.Concurrency <= 0 {
			return fasthttp.DefaultConcurrency
		}
		return float64(s.http.Concurrency)
	}
	bodyLimits := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "azyq_http_request_body_max_bytes",
		Help: "Largest request body accepted, by route; larger ones are answered 413 body_too_large.",
	}, []string{"route"})
	for id := range routeTable {
		max := bodyMax
		if routeID(id) == routeIssuances {
			max = issuanceBodyMax
		}
		bodyLimits.WithLabelValues(routeTable[id].pattern).Set(float64(max))
	}

	return []prometheus.Collector{
		// Connections and the in-flight limit (azyq_http_inflight_* are
		// registered with the request metrics).
		gauge("azyq_http_open_connections", "API connections open now; compare with azyq_http_connections_max.",
			openConns),
		gauge("azyq_http_connections_max", "API connections served at once before new ones are refused.",
			connMax),
		bodyLimits,

		// Idempotency and QR tokens: how long records are kept, beside
		// azyq_ledger_idempotency_in_flight and azyq_ledger_used_tokens.
		limit("azyq_idempotency_retention_seconds", "How long idempotency records are kept (programme idempotency_retention).",
			s.prog.IdempotencyRetention.Seconds()),
		limit("azyq_qr_lifetime_seconds", "How long a minted QR token is valid (programme qr_lifetime).",
			s.prog.QRLifetime.Seconds()),

		newVoucherCollector(s.led, voucherStatsMaxAge),
		s.led.PebbleCollector(),
		checkpointCollector{s},

		collectors.NewBuildInfoCollector(),
		buildInfo(),
	}
}

// buildInfo is azyq_build_info{version, revision, go_version} = 1, from
// the module and VCS stamps the Go toolchain writes into the binary.
func buildInfo() prometheus.Collector {
	version, revision, goVersion := "(devel)", "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" {
				revision = kv.Value
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "azyq_build_info",
		Help:        "The running gateway's version, VCS revision and Go version; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "go_version": goVersion},
	})
	g.Set(1)
	return g
}

// voucherStatsMaxAge bounds how stale the voucher census may be. Taking it
// locks every voucher in turn (about 30 ns each, ~0.1 s for a country's
// month), too much for every scrape of every Prometheus replica.
const voucherStatsMaxAge = 30 * time.Second

// voucherCollector exports vouchers and their balances by status from a
// census at most maxAge old. Its mutex also keeps two scrapes from taking
// the census at once.
type voucherCollector struct {
	led    *ledger.Ledger
	maxAge time.Duration

	mu struct {
		sync.Mutex
		stats ledger.VoucherStats
		taken time.Time // by the ledger's clock; zero before the first
	}
}

var (
	vdCount = prometheus.NewDesc("azyq_vouchers",
		"Vouchers by the status a client sees (issued, active, expired).", []string{"status"}, nil)
	vdBalance = prometheus.NewDesc("azyq_voucher_balance_tiyn",
		"Sum of voucher balances by status, in tiyn; issued plus active is what can still be spent.",
		[]string{"status"}, nil)
	vdAge = prometheus.NewDesc("azyq_voucher_census_timestamp_seconds",
		"When the census behind azyq_vouchers was taken.", nil, nil)
)

func newVoucherCollector(led *ledger.Ledger, maxAge time.Duration) *voucherCollector {
	return &voucherCollector{led: led, maxAge: maxAge}
}

func (c *voucherCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- vdCount
	ch <- vdBalance
	ch <- vdAge
}

func (c *voucherCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	now := c.led.Now()
	if c.mu.taken.IsZero() || now.Sub(c.mu.taken) >= c.maxAge || now.Before(c.mu.taken) {
		c.mu.stats, c.mu.taken = c.led.VoucherStats(), now
	}
	st := c.mu.stats
	c.mu.Unlock()

	for status := ledger.StatusIssued; status <= ledger.StatusExpired; status++ {
		label := status.String()
		ch <- prometheus.MustNewConstMetric(vdCount, prometheus.GaugeValue, float64(st.Count[status]), label)
		ch <- prometheus.MustNewConstMetric(vdBalance, prometheus.GaugeValue, float64(st.Balance[status]), label)
	}
	ch <- prometheus.MustNewConstMetric(vdAge, prometheus.GaugeValue, float64(st.At.UnixNano())/1e9)
}
