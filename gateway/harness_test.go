package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"azyq/domain"
	"azyq/ledger"
)

// testClock is a settable clock shared by the ledger and the QR keys.
type testClock struct{ ns atomic.Int64 }

func newTestClock(s string) *testClock {
	c := &testClock{}
	c.set(s)
	return c
}

func (c *testClock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *testClock) add(d time.Duration) { c.ns.Add(int64(d)) }
func (c *testClock) set(s string) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	c.ns.Store(t.UnixNano())
}

// stallFS wraps a filesystem so that syncs of the WAL block while the
// gate is closed: a commit can be held in flight on purpose.
type stallFS struct {
	vfs.FS
	mu     sync.Mutex
	closed chan struct{} // nil while open
	held   atomic.Int32  // syncs waiting at the gate
}

func (fs *stallFS) wrap(f vfs.File, name string, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return &stallFile{File: f, fs: fs}, nil
}

func (fs *stallFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.wrap(f, name, err)
}

func (fs *stallFS) ReuseForWrite(old, name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(old, name, c)
	return fs.wrap(f, name, err)
}

func (fs *stallFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, o ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, o...)
	return fs.wrap(f, name, err)
}

// close makes later WAL syncs wait until open is called.
func (fs *stallFS) close() {
	fs.mu.Lock()
	fs.closed = make(chan struct{})
	fs.mu.Unlock()
}

func (fs *stallFS) open() {
	fs.mu.Lock()
	if fs.closed != nil {
		close(fs.closed)
		fs.closed = nil
	}
	fs.mu.Unlock()
}

func (fs *stallFS) wait() {
	fs.mu.Lock()
	ch := fs.closed
	fs.mu.Unlock()
	if ch != nil {
		fs.held.Add(1)
		<-ch
		fs.held.Add(-1)
	}
}

type stallFile struct {
	vfs.File
	fs *stallFS
}

func (f *stallFile) Sync() error     { f.fs.wait(); return f.File.Sync() }
func (f *stallFile) SyncData() error { f.fs.wait(); return f.File.SyncData() }
func (f *stallFile) SyncTo(n int64) (bool, error) {
	f.fs.wait()
	return f.File.SyncTo(n)
}

// env is a real gateway on a loopback port over a real ledger in a
// temporary directory, talked to with net/http.
type env struct {
	t      testing.TB
	dir    string
	clock  *testClock
	fs     *stallFS
	prog   *domain.Programme
	led    *ledger.Ledger
	srv    *Server
	base   string
	client *http.Client
	cfg    Config
	done   chan error
}

const (
	adminTok      = "test-admin-token"
	walletTok     = "test-wallet-token"
	settlementTok = "test-settlement-token"
	testNow       = "2026-12-03T10:00:00+05:00"
)

func newEnv(t testing.TB) *env {
	return newEnvWith(t, domain.DefaultProgramme(), Config{})
}

// newEnvWith starts a gateway with a programme and server settings.
func newEnvWith(t testing.TB, prog *domain.Programme, cfg Config) *env {
	e := &env{
		t: t, dir: t.TempDir(), clock: newTestClock(testNow), prog: prog, cfg: cfg,
		fs:     &stallFS{FS: vfs.Default},
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second},
	}
	e.start()
	t.Cleanup(e.stop)
	return e
}

// start opens the ledger and serves the API on 127.0.0.1:0.
func (e *env) start() {
	e.t.Helper()
	led, err := ledger.Open(ledger.Config{
		Dir: filepath.Join(e.dir, "ledger"), FS: e.fs, Programme: e.prog, Now: e.clock.Now,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.led = led
	secrets, err := LoadSecrets(e.dir)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(secrets.QRKeys) == 0 {
		k, err := NewQRKey(1, e.clock.Now())
		if err != nil {
			e.t.Fatal(err)
		}
		secrets.QRKeys = []QRKey{k}
		if err := secrets.Save(e.dir); err != nil {
			e.t.Fatal(err)
		}
	}
	qr, err := NewQRKeys(secrets.QRKeys, e.prog.QRLifetime, e.clock.Now)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := e.cfg
	cfg.Ledger, cfg.QR = led, qr
	cfg.AdminToken, cfg.WalletToken, cfg.SettlementToken = adminTok, walletTok, settlementTok
	srv, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	e.base = "http://" + ln.Addr().String()
	e.done = make(chan error, 1)
	go func() { e.done <- srv.Serve(ln) }()
	srv.SetReady(true)
}

// stop shuts the server down and closes the ledger; safe to call twice.
func (e *env) stop() {
	if e.srv == nil {
		return
	}
	e.fs.open()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		e.t.Error(err)
	}
	<-e.done
	e.led.Close()
	e.srv, e.led = nil, nil
	e.client.CloseIdleConnections()
}

func (e *env) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

// resp is an answer as the client saw it.
type resp struct {
	status int
	header http.Header
	body   []byte
}

// errBody is the contract's error body.
type errBody struct {
	Error struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		RequestID string `json:"request_id"`
		Balance   *int64 `json:"balance"`
	} `json:"error"`
}

func (r *resp) code() string {
	var eb errBody
	if err := json.Unmarshal(r.body, &eb); err != nil {
		return ""
	}
	return eb.Error.Code
}

func (r *resp) decode(t testing.TB, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("cannot decode %d answer %s: %v", r.status, r.body, err)
	}
}

func (r *resp) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// do sends a request; hdr holds header name/value pairs.
func (e *env) do(method, path, token, body string, hdr ...string) *resp {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if res.Header.Get("X-Request-Id") == "" {
		e.t.Errorf("%s %s: answer %d without X-Request-Id", method, path, res.StatusCode)
	}
	if res.StatusCode >= 500 && res.StatusCode != 503 {
		e.t.Errorf("%s %s: server error %d %s", method, path, res.StatusCode, b)
	}
	return &resp{status: res.StatusCode, header: res.Header, body: b}
}

// expect checks an answer's status and, for errors, its code.
func (e *env) expect(r *resp, status int, code string) {
	e.t.Helper()
	if r.status != status || code != "" && r.code() != code {
		e.t.Fatalf("got %s, want %d %s", r, status, code)
	}
}

// shop creates a store and a terminal through the API and returns the
// terminal's key.
func (e *env) shop(store, terminal string, discountBP int) string {
	e.t.Helper()
	r := e.do("PUT", "/v1/stores/"+store, adminTok, shopBody(discountBP))
	e.expect(r, 200, "")
	r = e.do("POST", "/v1/stores/"+store+"/terminals", adminTok, fmt.Sprintf(`{"terminal_id":%q}`, terminal))
	e.expect(r, 201, "")
	var out struct{ TerminalID, StoreID, APIKey string }
	if err := json.Unmarshal(r.body, &struct {
		T *string `json:"terminal_id"`
		S *string `json:"store_id"`
		K *string `json:"api_key"`
	}{&out.TerminalID, &out.StoreID, &out.APIKey}); err != nil || out.APIKey == "" {
		e.t.Fatalf("terminal: %s %v", r, err)
	}
	return out.APIKey
}

func shopBody(discountBP int) string {
	return fmt.Sprintf(`{"name":"Corner shop","bin":%q,"city":"Pavlodar","bank_bic":"HSBKKZKX","iban":%q,"discount_bp":%d}`,
		testBIN, testIBAN, discountBP)
}

var (
	testBIN  = func() string { b, _ := domain.BINWithCheck("26014000123"); return b }()
	testIBAN = domain.IBANWithCheck("125", "KZT0000012345")
)

// voucher issues and activates a voucher of the current month.
func (e *env) voucher(family string, members int) string {
	e.t.Helper()
	r := e.do("POST", "/v1/issuances", adminTok,
		fmt.Sprintf(`{"month":"2026-12","families":[{"family_id":%q,"members":%d,"city":"Pavlodar"}]}`, family, members))
	e.expect(r, 200, "")
	var out struct {
		Vouchers []struct {
			VoucherID string `json:"voucher_id"`
		} `json:"vouchers"`
	}
	json.Unmarshal(r.body, &out)
	id := out.Vouchers[0].VoucherID
	e.expect(e.do("POST", "/v1/vouchers/"+id+"/activation", walletTok, `{"consent":true}`), 200, "")
	return id
}

// qr mints a QR token for a voucher.
func (e *env) qr(voucher string) string {
	e.t.Helper()
	r := e.do("POST", "/v1/vouchers/"+voucher+"/qr", walletTok, "")
	e.expect(r, 201, "")
	var out struct {
		QR        string `json:"qr"`
		ExpiresAt string `json:"expires_at"`
	}
	r.decode(e.t, &out)
	return out.QR
}

var keySeq atomic.Int64

func newKey() string { return fmt.Sprintf("key-%d", keySeq.Add(1)) }

// redeem posts a redemption by amount with a fresh key.
func (e *env) redeem(term, qr string, amount int64) *resp {
	e.t.Helper()
	return e.do("POST", "/v1/redemptions", term, fmt.Sprintf(`{"qr":%q,"amount":%d}`, qr, amount),
		"Idempotency-Key", newKey())
}

// balance reads a voucher's balance through the wallet API.
func (e *env) balance(voucher string) int64 {
	e.t.Helper()
	r := e.do("GET", "/v1/vouchers/"+voucher, walletTok, "")
	e.expect(r, 200, "")
	var v struct {
		Balance int64 `json:"balance"`
	}
	json.Unmarshal(r.body, &v)
	return v.Balance
}
