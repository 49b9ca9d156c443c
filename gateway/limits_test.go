package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
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

// TestTerminalRateLimitHTTP protects the 429 answer of the per-terminal
// limit: past its burst a terminal gets rate_limited with the contract's
// error body and a Retry-After that is long enough, nothing reaches the
// ledger, and other terminals and roles are not affected.
func TestTerminalRateLimitHTTP(t *testing.T) {
	clock := newMovableClock(fzNow)
	g := newFzGatewayWith(t, clock.Now, func(c *Config) { c.Limits = Limits{TerminalRate: 2, TerminalBurst: 3} })
	clock.Add(2 * time.Second) // refill the bucket the set-up redemption used
	before := g.state()
	tok, _ := g.token(g.vouchers[1])

	for i := range 3 {
		if status, body := g.do("POST", "/v1/balance-inquiries", fzTermKey, "", []byte(`{"qr":"`+tok+`"}`)); status != 200 {
			t.Fatalf("request %d within the burst: %d %s", i, status, body)
		}
	}
	resp := g.doResp("POST", "/v1/redemptions", fzTermKey, "over-limit", []byte(`{"qr":"`+tok+`","amount":100}`))
	if resp.StatusCode() != 429 || !strings.Contains(string(resp.Body()), `"code":"rate_limited"`) ||
		string(resp.Header.Peek("Retry-After")) != "1" || len(resp.Header.Peek("X-Request-Id")) == 0 {
		t.Fatalf("request past the burst: %d %s Retry-After %q", resp.StatusCode(), resp.Body(), resp.Header.Peek("Retry-After"))
	}
	if after := g.state(); !before.equal(after) {
		t.Fatal("a rate-limited redemption changed the ledger")
	}
	if status, _ := g.do("GET", "/v1/catalogue", fzOtherKey, "", nil); status != 200 {
		t.Fatal("another terminal was limited")
	}
	if status, _ := g.do("GET", "/v1/catalogue", fzAdmin, "", nil); status != 200 {
		t.Fatal("the admin was limited by a terminal's bucket")
	}

	clock.Add(time.Second) // what Retry-After asked for
	if status, body := g.do("POST", "/v1/redemptions", fzTermKey, "after-wait", []byte(`{"qr":"`+tok+`","amount":100}`)); status != 201 {
		t.Fatalf("after waiting Retry-After: %d %s", status, body)
	}
}

// serveLoopback serves g on a loopback port and returns its address.
func serveLoopback(t *testing.T, g *fzGateway) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.srv.Serve(ln) }()
	t.Cleanup(func() { g.srv.http.Shutdown(); <-done })
	return ln.Addr().String()
}

// TestSlowClientsAreDisconnected protects the read timeout: a client that
// trickles its headers (slowloris) or opens a connection and sends nothing
// is disconnected instead of holding a connection, while the server keeps
// answering well-behaved clients.
func TestSlowClientsAreDisconnected(t *testing.T) {
	g := newFzGatewayWith(t, func() time.Time { return fzNow }, func(c *Config) {
		c.Limits = Limits{ReadTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	})
	addr := serveLoopback(t, g)

	// trickle reports whether the server gave up on conn (closed it, or
	// answered the request it never finished, 408) before the client had
	// trickled for long: a byte every 50ms, for at most 10s.
	trickle := func(conn net.Conn, data string) bool {
		for i := range 200 {
			conn.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := conn.Write([]byte{data[i%len(data)]}); err != nil {
				return true
			}
			conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			var b [1]byte
			if n, err := conn.Read(b[:]); n > 0 || err != nil && !isTimeout(err) {
				return true
			}
		}
		return false
	}
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if !trickle(slow, "GET /v1/catalogue HTTP/1.1\r\nHost: azyq\r\nX-Slow: "+strings.Repeat("a", 400)) {
		t.Fatal("a client trickling its headers held the connection for 10 s")
	}

	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// The server may answer 408 before it closes; read to the end.
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, silent); err != nil && isTimeout(err) {
		t.Fatalf("a silent connection was not closed within 10 s: %v", err)
	}

	// Once the slow clients are gone, others are served.
	waitServed(t, addr)
}

// TestConnectionCap protects the cap on open connections: when idle
// connections hold every slot, a new one is refused at once with 503
// instead of waiting, and the server serves again once they close.
func TestConnectionCap(t *testing.T) {
	g := newFzGatewayWith(t, func() time.Time { return fzNow }, func(c *Config) {
		c.Limits = Limits{ReadTimeout: time.Minute, IdleTimeout: time.Minute, ConnectionsMax: 3}
	})
	addr := serveLoopback(t, g)

	// Three idle connections take every slot; a fourth is refused.
	var idle []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	// The server takes a connection's slot when it accepts it: wait until
	// it has accepted all three.
	for range 500 {
		if g.srv.http.GetOpenConnectionsCount() == 3 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.Write([]byte("GET /v1/catalogue HTTP/1.1\r\nHost: azyq\r\nAuthorization: Bearer " + fzAdmin + "\r\n\r\n"))
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [64]byte
	n, _ := extra.Read(b[:])
	if !strings.HasPrefix(string(b[:n]), "HTTP/1.1 503") {
		t.Fatalf("a connection past the cap got %q, want a 503", b[:n])
	}
	for _, c := range idle {
		c.Close()
	}
	waitServed(t, addr)
}

// waitServed waits until a normal client is served.
func waitServed(t *testing.T, addr string) {
	t.Helper()
	ok := false
	for range 50 {
		client := &http.Client{Timeout: 5 * time.Second}
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/catalogue", nil)
		req.Header.Set("Authorization", "Bearer "+fzAdmin)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				ok = true
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !ok {
		t.Fatal("the server did not serve a normal client after the others left")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
