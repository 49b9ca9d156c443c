package gateway

import (
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"azyq/ledger"
)

// metrics are the gateway's instruments. Series are labelled by route
// pattern (never by raw ids) and resolved once at start, so the hot path
// only increments.
type metrics struct {
	reg *prometheus.Registry

	requests *prometheus.CounterVec
	// statusSlots caches the request counters of the statuses the API
	// gives, by route; other statuses go through the vector.
	byStatus [routeCount + 1][len(statusSlots)]prometheus.Counter
	latency  [routeCount + 1]prometheus.Observer

	redemptions   *prometheus.CounterVec // by outcome: approved or the decline code
	approved      prometheus.Counter
	redeemed      prometheus.Counter
	refunded      prometheus.Counter
	replays       prometheus.Counter
	tokenRejects  [3]prometheus.Counter // by qrFault; qr_used via redemptions
	tokenUsed     prometheus.Counter
	limitRejected prometheus.Counter
	qrMinted      prometheus.Counter
}

var statusSlots = [...]int{200, 201, 304, 400, 401, 402, 403, 404, 405, 409, 413, 422, 429, 500, 503}

func statusSlot(status int) int {
	for i, s := range statusSlots {
		if s == status {
			return i
		}
	}
	return -1
}

func routeLabel(id routeID) string {
	if id == routeUnmatched {
		return unmatched.pattern
	}
	return routeTable[id].pattern
}

func newMetrics(reg *prometheus.Registry, s *Server) (*metrics, error) {
	m := &metrics{reg: reg}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "azyq_http_requests_total",
		Help: "API requests answered, by route pattern and status.",
	}, []string{"route", "status"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "azyq_http_request_duration_seconds",
		Help: "Time from a request's arrival to its answer, by route pattern.",
		Buckets: []float64{
			.00005, .0001, .00025, .0005, .00075, .001, .0015, .002, .003, .005,
			.0075, .01, .025, .05, .1, .25, .5, 1, 2.5,
		},
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}, []string{"route"})
	for id := routeID(0); id <= routeUnmatched; id++ {
		label := routeLabel(id)
		m.latency[id] = latency.WithLabelValues(label)
		for i, st := range statusSlots {
			m.byStatus[id][i] = m.requests.WithLabelValues(label, strconv.Itoa(st))
		}
	}

	m.redemptions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "azyq_redemptions_total",
		Help: "Redemption requests decided (not replays), by outcome: approved or the decline code.",
	}, []string{"outcome"})
	m.approved = m.redemptions.WithLabelValues("approved")
	for _, c := range ledger.Codes() {
		m.redemptions.WithLabelValues(c.String())
	}
	m.redeemed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "azyq_redeemed_tiyn_total",
		Help: "Amount approved by redemptions, in tiyn.",
	})
	m.refunded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "azyq_refunded_tiyn_total",
		Help: "Amount returned by refunds, in tiyn.",
	})
	m.replays = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "azyq_idempotent_replays_total",
		Help: "Requests answered with a stored response (Idempotent-Replayed: true).",
	})
	rejects := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "azyq_qr_rejections_total",
		Help: "QR tokens refused, by reason: invalid (tampered, garbled, unknown key), expired, used.",
	}, []string{"reason"})
	m.tokenRejects[qrInvalid] = rejects.WithLabelValues("invalid")
	m.tokenRejects[qrExpired] = rejects.WithLabelValues("expired")
	m.tokenUsed = rejects.WithLabelValues("used")
	m.limitRejected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "azyq_http_inflight_rejections_total",
		Help: "Requests answered 429 because the in-flight limit was reached.",
	})
	m.qrMinted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "azyq_qr_minted_total",
		Help: "QR tokens minted for the wallet.",
	})
	inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "azyq_http_inflight_requests",
		Help: "API requests being served now; compare with azyq_http_inflight_max.",
	}, func() float64 { return float64(s.inflight.Load()) })
	inflightMax := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "azyq_http_inflight_max",
		Help: "The in-flight limit above which requests are answered 429.",
	}, func() float64 { return float64(s.inflightMax) })
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "azyq_ready",
		Help: "1 while the API accepts requests.",
	}, func() float64 { return float64(boolInt(s.Ready())) })

	cs := []prometheus.Collector{
		m.requests, latency, m.redemptions, m.redeemed, m.refunded, m.replays, rejects,
		m.limitRejected, m.qrMinted, inflight, inflightMax, ready,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	cs = append(cs, s.led.Collectors()...)
	cs = append(cs, s.opsCollectors()...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("cannot register metrics: %w", err)
		}
	}
	return m, nil
}

// observe counts an answered request.
func (m *metrics) observe(id routeID, status int, d time.Duration) {
	if i := statusSlot(status); i >= 0 {
		m.byStatus[id][i].Inc()
	} else {
		m.requests.WithLabelValues(routeLabel(id), strconv.Itoa(status)).Inc()
	}
	m.latency[id].Observe(d.Seconds())
}

// Registry returns the registry holding the gateway's and the ledger's
// metrics, for the operations listener.
func (s *Server) Registry() *prometheus.Registry { return s.met.reg }
