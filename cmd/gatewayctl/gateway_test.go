package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"azyq/domain"
	"azyq/gateway"
	"azyq/ledger"
)

const (
	testAdminToken      = "admin-test-token"
	testSettlementToken = "settlement-test-token"
)

// testNow is the instant the test gateways live at: inside December 2026,
// whose vouchers can be issued and activated.
var testNow = time.Date(2026, 12, 3, 10, 0, 0, 0, time.FixedZone("ALMT", 5*3600))

// testGateway is the real gateway, served in-process on a loopback port
// over a real ledger in a temporary data directory laid out as gatewayd
// lays it out (DATA/ledger).
type testGateway struct {
	t    *testing.T
	data string
	addr string
	led  *ledger.Ledger
	srv  *gateway.Server
	prog *domain.Programme

	stopOnce sync.Once
	served   chan error
}

func startGateway(t *testing.T, prog *domain.Programme) *testGateway {
	t.Helper()
	if prog == nil {
		prog = domain.DefaultProgramme()
	}
	g := &testGateway{t: t, data: t.TempDir(), prog: prog, served: make(chan error, 1)}
	now := func() time.Time { return testNow }
	led, err := ledger.Open(ledger.Config{Dir: filepath.Join(g.data, "ledger"), Programme: prog, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	g.led = led
	key, err := gateway.NewQRKey(1, testNow)
	if err != nil {
		t.Fatal(err)
	}
	qr, err := gateway.NewQRKeys([]gateway.QRKey{key}, prog.QRLifetime, now)
	if err != nil {
		t.Fatal(err)
	}
	g.srv, err = gateway.New(gateway.Config{Ledger: led, QR: qr, AdminToken: testAdminToken, SettlementToken: testSettlementToken})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.addr = "http://" + ln.Addr().String()
	go func() { g.served <- g.srv.Serve(ln) }()
	g.srv.SetReady(true)

	// Wait until the server answers: fasthttp's Shutdown does not stop a
	// Serve that has not started yet, so a test that stops the gateway at
	// once would otherwise hang.
	for i := 0; ; i++ {
		resp, err := http.Get(g.addr + "/v1/catalogue")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i == 1000 {
			t.Fatalf("gateway does not answer: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	t.Cleanup(g.stop)
	return g
}

// stop shuts the server down and closes the ledger, leaving the data
// directory as a stopped gatewayd would.
func (g *testGateway) stop() {
	g.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.srv.Shutdown(ctx); err != nil {
			g.t.Errorf("shutdown: %v", err)
		}
		<-g.served
		if err := g.led.Close(); err != nil {
			g.t.Errorf("close ledger: %v", err)
		}
	})
}

// ctl runs gatewayctl against the gateway and returns its exit status,
// stdout and stderr. Retries do not wait; onSleep, when set, runs at each
// retry instead.
func (g *testGateway) ctl(onSleep func(), args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	e := &env{stdout: &stdout, stderr: &stderr, sleep: func(ctx context.Context, d time.Duration) error {
		if onSleep != nil {
			onSleep()
		}
		return ctx.Err()
	}}
	all := append([]string{"--addr", g.addr, "--token", testAdminToken, "--data", g.data}, args...)
	status := runEnv(e, all)
	return status, stdout.String(), stderr.String()
}

// summaryValue returns the number after a summary label such as
// "created" or "not posted", or -1 when the summary has no such line.
func summaryValue(out, label string) int {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(line, label+" ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return -1
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			return -1
		}
		return n
	}
	return -1
}
