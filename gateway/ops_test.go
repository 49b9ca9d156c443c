package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// manualClock ticks only when the test says so.
type manualClock struct {
	*testClock
	ticks chan time.Time
}

func (c manualClock) Tick(time.Duration) (<-chan time.Time, func()) { return c.ticks, func() {} }

// TestHousekeeping protects the timed work: on a tick, idempotency records
// older than the retention are forgotten and ended months lapse, driven by
// the injected clock alone.
func TestHousekeeping(t *testing.T) {
	e := newEnv(t)
	term := e.shop("S1", "T1", 0)
	id := e.voucher("F-1", 1)
	key := newKey()
	body := fmt.Sprintf(`{"qr":%q,"amount":1000}`, e.qr(id))
	first := e.do("POST", "/v1/redemptions", term, body, "Idempotency-Key", key)
	e.expect(first, 201, "")

	clock := manualClock{e.clock, make(chan time.Time)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Housekeep(ctx, e.led, clock, slog.New(slog.DiscardHandler)) }()
	tick := func() {
		clock.ticks <- clock.Now()
		clock.ticks <- clock.Now() // the second send waits for the first tick's work
	}

	// Within the retention the key still replays.
	e.clock.add(47 * time.Hour)
	tick()
	if r := e.do("POST", "/v1/redemptions", term, body, "Idempotency-Key", key); r.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay within retention: %s", r)
	}
	// The month ends: the voucher lapses; past the retention the key is
	// forgotten, so the request runs again (and its token has expired).
	e.clock.set("2027-01-01T00:00:01+05:00")
	tick()
	if b := e.led.Books(); b.Lapsed != 432_500-1000 || b.Accounts["lapsed"] != 432_500-1000 {
		t.Fatalf("after month end: lapsed %d, account %d", b.Lapsed, b.Accounts["lapsed"])
	}
	r := e.do("POST", "/v1/redemptions", term, body, "Idempotency-Key", key)
	e.expect(r, 402, "qr_expired")
	cancel()
	<-done
	if err := e.led.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestGracefulShutdown protects a clean stop: once shutdown starts /readyz
// says 503 and new connections are refused, but a redemption already in
// its commit finishes and is answered.
func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t)
	term := e.shop("S1", "T1", 0)
	id := e.voucher("F-1", 1)
	ops := httptest.NewServer(e.srv.OpsHandler())
	defer ops.Close()
	readyz := func() int {
		res, err := http.Get(ops.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if readyz() != 200 {
		t.Fatal("not ready")
	}

	qr := e.qr(id)
	e.fs.close()
	var wg sync.WaitGroup
	var inflight *resp
	wg.Go(func() { inflight = e.redeem(term, qr, 1000) })
	waitFor(t, "a commit held at the WAL sync", func() bool { return e.fs.held.Load() > 0 })

	shut := make(chan error, 1)
	go func() { shut <- e.srv.Shutdown(context.Background()) }()
	waitFor(t, "/readyz to turn 503", func() bool { return readyz() == 503 })
	waitFor(t, "the listener to close", func() bool {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		res, err := c.Get(e.base + "/v1/catalogue")
		if err == nil {
			res.Body.Close()
		}
		return err != nil
	})
	select {
	case err := <-shut:
		t.Fatalf("shutdown returned (%v) with a request in flight", err)
	default:
	}
	e.fs.open()
	wg.Wait()
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	e.expect(inflight, 201, "")
	<-e.done
	e.led.Close()
	e.srv, e.led = nil, nil
}

// TestMetrics protects what an SRE sees: requests by route pattern (never
// a raw id) and status, latencies, redemption outcomes, amounts, replays
// and token rejections, with the ledger's own series beside them.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	term := e.shop("S1", "T1", 0)
	id := e.voucher("F-1", 1)
	key := newKey()
	body := fmt.Sprintf(`{"qr":%q,"amount":1500}`, e.qr(id))
	e.do("POST", "/v1/redemptions", term, body, "Idempotency-Key", key)
	e.do("POST", "/v1/redemptions", term, body, "Idempotency-Key", key)
	e.redeem(term, "garbage", 1)
	e.redeem(term, e.qr(id), 10_000_000)
	e.do("GET", "/v1/vouchers/"+id, walletTok, "")

	ops := httptest.NewServer(e.srv.OpsHandler())
	defer ops.Close()
	res, err := http.Get(ops.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	text := string(b)
	for _, want := range []string{
		`azyq_http_requests_total{route="/v1/redemptions",status="201"} 2`,
		`azyq_http_requests_total{route="/v1/redemptions",status="402"} 2`,
		`azyq_http_requests_total{route="/v1/vouchers/{voucher_id}",status="200"} 1`,
		`azyq_http_request_duration_seconds_bucket{route="/v1/redemptions",le="0.001"}`,
		`azyq_redemptions_total{outcome="approved"} 1`,
		`azyq_redemptions_total{outcome="insufficient_funds"} 1`,
		`azyq_redeemed_tiyn_total 1500`,
		`azyq_idempotent_replays_total 1`,
		`azyq_qr_rejections_total{reason="invalid"} 1`,
		`azyq_ledger_vouchers 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(text, id) {
		t.Errorf("a voucher id appears in the metrics")
	}
}
