package gateway

import (
	"fmt"
	"testing"
	"time"
)

// TestTerminalLimiter protects the per-terminal token bucket (invariants
// of terminalLimiter): a terminal gets its burst at once, then one request
// per 1/rate; the refusal says how long to wait, and waiting that long is
// enough; one terminal's flood never costs another terminal a token.
func TestTerminalLimiter(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	l := newTerminalLimiter(4, 10, clock)

	for i := range 10 {
		if ok, _ := l.allow("T1"); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := l.allow("T1")
	if ok || wait <= 0 || wait > 250*time.Millisecond {
		t.Fatalf("request after the burst: allowed %v, wait %v; want refused with a wait up to 250ms", ok, wait)
	}
	if ok, _ := l.allow("T2"); !ok {
		t.Fatal("another terminal was refused because of T1")
	}

	now = now.Add(wait)
	if ok, _ := l.allow("T1"); !ok {
		t.Fatalf("refused after waiting the %v the refusal named", wait)
	}
	if ok, _ := l.allow("T1"); ok {
		t.Fatal("a second request got through on one refilled token")
	}

	// Over a minute at the limit's rate, a terminal sending as fast as it
	// can gets rate·t + whatever the bucket held, never more.
	allowed := 0
	for range 60 * 100 {
		now = now.Add(10 * time.Millisecond)
		if ok, _ := l.allow("T1"); ok {
			allowed++
		}
	}
	if allowed < 239 || allowed > 241 {
		t.Fatalf("allowed %d requests in 60s at 4/s", allowed)
	}

	l.forget("T1")
	for i := range 10 {
		if ok, _ := l.allow("T1"); !ok {
			t.Fatalf("request %d of a fresh bucket refused after forget", i)
		}
	}
}

// TestRetryAfterSeconds protects the Retry-After header: whole seconds,
// rounded up, never 0.
func TestRetryAfterSeconds(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{{0, "1"}, {time.Millisecond, "1"}, {time.Second, "1"}, {1001 * time.Millisecond, "2"}, {90 * time.Second, "90"}} {
		if got := retryAfterSeconds(c.d); got != c.want {
			t.Errorf("retryAfterSeconds(%v) = %s, want %s", c.d, got, c.want)
		}
	}
}

// BenchmarkTerminalLimiter measures the cost the limiter adds to every
// terminal request, across many terminals in parallel.
func BenchmarkTerminalLimiter(b *testing.B) {
	l := newTerminalLimiter(1e9, 1e9, time.Now)
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("T%d", i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.allow(ids[i%len(ids)])
			i++
		}
	})
}
