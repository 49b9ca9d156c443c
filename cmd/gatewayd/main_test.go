package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"azyq/gateway"
)

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// started is a running gatewayd.
type started struct {
	api, ops       string
	stdout, stderr *syncBuffer
	stop           func() error
}

func start(t *testing.T, env map[string]string, args ...string) *started {
	t.Helper()
	s := &started{stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]net.Addr, 1)
	errc := make(chan error, 1)
	args = append([]string{"--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"}, args...)
	getenv := func(k string) string { return env[k] }
	go func() {
		errc <- run(ctx, args, getenv, s.stdout, s.stderr, func(api, ops net.Addr) { addrs <- [2]net.Addr{api, ops} })
	}()
	select {
	case a := <-addrs:
		s.api, s.ops = "http://"+a[0].String(), "http://"+a[1].String()
	case err := <-errc:
		cancel()
		t.Fatalf("gatewayd did not start: %v\n%s", err, s.stderr)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("gatewayd did not start in 30s")
	}
	done := false
	s.stop = func() error {
		if done {
			return nil
		}
		done = true
		cancel()
		return <-errc
	}
	t.Cleanup(func() { s.stop() })
	return s
}

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

var tokenLine = regexp.MustCompile(`(?m)^\s*(admin|wallet) token:\s+(\S+)`)

// TestDemo protects the README's first minute: --demo on an empty data
// directory prints tokens and curl commands that, pasted into bash, mint a
// QR token and redeem it; the operations listener answers; a stop is clean;
// --demo again prints the same credentials without seeding twice.
func TestDemo(t *testing.T) {
	dir := t.TempDir()
	s := start(t, nil, "--data", dir, "--demo")
	out := s.stdout.String()
	if !strings.Contains(out, "Generated role tokens") || !strings.Contains(out, "terminal key:") {
		t.Fatalf("demo output:\n%s", out)
	}
	if !strings.Contains(s.stderr.String(), `"msg":"gateway ready"`) {
		t.Fatalf("no ready line in the log:\n%s", s.stderr)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if st, _ := get(t, s.ops+p, ""); st != 200 {
			t.Fatalf("%s: %d", p, st)
		}
	}
	if st, body := get(t, s.ops+"/metrics", ""); st != 200 || !strings.Contains(body, "azyq_http_requests_total") ||
		!strings.Contains(body, "azyq_ledger_vouchers") {
		t.Fatalf("/metrics: %d", st)
	}

	// Paste the printed commands into bash.
	var script []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "QR=") || strings.HasPrefix(l, "curl ") {
			script = append(script, l)
		}
	}
	if len(script) != 3 {
		t.Fatalf("want 3 commands, got %d:\n%s", len(script), out)
	}
	bash, errBash := exec.LookPath("bash")
	_, errCurl := exec.LookPath("curl")
	if errBash != nil || errCurl != nil {
		t.Log("bash or curl missing: the printed commands were not run")
	} else {
		cmd := exec.Command(bash, "-e", "-c", strings.Join(script, "\n"))
		res, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(res), `"status":"approved"`) ||
			!strings.Contains(string(res), `"approved":150000`) {
			t.Fatalf("the demo commands failed: %v\n%s", err, res)
		}
	}

	// The secrets file is private.
	fi, err := os.Stat(filepath.Join(dir, gateway.SecretsFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secrets file: %v %v", fi.Mode(), err)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !strings.Contains(s.stderr.String(), `"msg":"gateway stopped"`) {
		t.Fatalf("no stop line:\n%s", s.stderr)
	}

	// Again: same credentials, nothing generated or seeded twice.
	first := tokenLine.FindAllStringSubmatch(out, -1)
	again := start(t, nil, "--data", dir, "--demo")
	out2 := again.stdout.String()
	if strings.Contains(out2, "Generated role tokens") || strings.Contains(again.stderr.String(), "demo seeded") {
		t.Fatalf("second start generated or seeded again:\n%s", out2)
	}
	second := tokenLine.FindAllStringSubmatch(out2, -1)
	if len(first) != 2 || len(second) != 2 || first[0][2] != second[0][2] || first[1][2] != second[1][2] {
		t.Fatalf("tokens changed: %v %v", first, second)
	}
	if !strings.Contains(out2, "balance 282500 of 432500") {
		t.Fatalf("the first voucher does not show the redemption:\n%s", out2)
	}
}

// TestTokensFromEnvironment protects the contract's configuration: a
// GATEWAY_<NAME> variable sets a flag, the command line wins over it, and
// a token given from outside is never written to the data directory.
func TestTokensFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"GATEWAY_ADMIN_TOKEN": "env-admin", "GATEWAY_WALLET_TOKEN": "env-wallet"}
	s := start(t, env, "--data", dir, "--wallet-token", "flag-wallet")
	if st, _ := get(t, s.api+"/v1/catalogue", "env-admin"); st != 200 {
		t.Fatalf("admin token from the environment: %d", st)
	}
	if st, _ := get(t, s.api+"/v1/vouchers/V0000001", "flag-wallet"); st != 404 {
		t.Fatalf("wallet token from the flag: %d", st)
	}
	if st, _ := get(t, s.api+"/v1/vouchers/V0000001", "env-wallet"); st != 401 {
		t.Fatalf("the environment's wallet token beat the flag: %d", st)
	}
	s.stop()
	secrets, err := gateway.LoadSecrets(dir)
	if err != nil {
		t.Fatal(err)
	}
	if secrets.AdminToken != "" || secrets.WalletToken != "" || secrets.SettlementToken == "" || len(secrets.QRKeys) != 1 {
		t.Fatalf("secrets kept: %+v", secrets)
	}
	if !strings.Contains(s.stdout.String(), "settlement:") || strings.Contains(s.stdout.String(), "admin:") {
		t.Fatalf("printed:\n%s", s.stdout)
	}
}

// TestBadConfiguration protects the operator's error messages: each names
// the flag or file to fix, and nothing starts.
func TestBadConfiguration(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "programme.json")
	os.WriteFile(prog, []byte(`{"qr_lifetime": "soon"}`), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--data", dir, "--program", prog}, "qr_lifetime"},
		{[]string{"--data", dir, "--program", filepath.Join(dir, "missing.json")}, "--program"},
		{[]string{"--data", dir, "--listen", "256.0.0.1:1"}, "--listen"},
		{[]string{"--data", dir, "extra"}, "extra"},
	} {
		err := run(context.Background(), append(c.args, "--ops-listen", "127.0.0.1:0"),
			func(string) string { return "" }, io.Discard, io.Discard, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want a message naming %s", c.args, err, c.want)
		}
	}
}
