package gateway

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/valyala/fasthttp"

	"azyq/domain"
	"azyq/ledger"
)

// The fuzz targets below feed arbitrary bytes to every request body the
// API decodes, through the real handler over a real ledger (Pebble on an
// in-memory filesystem, so a commit costs no fsync). They protect the
// contract's promise that bad input always gets a documented 4xx with the
// error body and changes nothing:
//
//   - no panic, no 5xx: the ledger stays healthy;
//   - every error body is {"error":{"code","message","request_id"}} with the
//     code's own status and the response's X-Request-Id;
//   - a 400 or 413 leaves the ledger exactly as it was;
//   - the books balance after every request.
//
// `go test` runs the seeds under testdata/fuzz/<Target>/; `make fuzz`
// explores further. Seeds hold real QR tokens: the key and the clock are
// fixed, so they stay valid. Regenerate them with
// AZYQ_WRITE_FUZZ_SEEDS=1 go test -run TestWriteGatewayFuzzSeeds ./gateway
// when the token format changes.

const (
	fzAdmin      = "fuzz-admin-token"
	fzWallet     = "fuzz-wallet-token"
	fzSettlement = "fuzz-settlement-token"
	fzTermKey    = "fuzz-terminal-key"
	fzOtherKey   = "fuzz-other-terminal-key"
)

var fzNow = time.Date(2026, 12, 3, 10, 0, 0, 0, time.FixedZone("+05", 5*3600))

// fzQRKey is the fixed signing key of the fuzz gateway.
func fzQRKey() QRKey {
	secret := sha256.Sum256([]byte("azyq fuzz QR key"))
	return QRKey{ID: 1, Secret: secret[:], Created: fzNow.Add(-time.Hour)}
}

// fzGateway is a gateway with a shop, two terminals of two shops, five
// active vouchers and one approved redemption.
type fzGateway struct {
	t          testing.TB
	led        *ledger.Ledger
	srv        *Server
	qr         *QRKeys
	vouchers   []ledger.VoucherID
	redemption string
	seq        atomic.Uint64
}

func newFzGateway(t testing.TB) *fzGateway {
	t.Helper()
	return newFzGatewayWith(t, func() time.Time { return fzNow }, func(*Config) {})
}

// newFzGatewayWith builds the gateway with a clock and a hook that adjusts
// its configuration.
func newFzGatewayWith(t testing.TB, now func() time.Time, configure func(*Config)) *fzGateway {
	t.Helper()
	led, err := ledger.Open(ledger.Config{Dir: "fuzz", FS: vfs.NewMem(), Programme: domain.DefaultProgramme(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { led.Close() })
	qr, err := NewQRKeys([]QRKey{fzQRKey()}, 2*time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Ledger: led, QR: qr, AdminToken: fzAdmin, WalletToken: fzWallet, SettlementToken: fzSettlement}
	configure(&cfg)
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetReady(true)
	g := &fzGateway{t: t, led: led, srv: srv, qr: qr}

	for i, id := range []string{"S1", "S2"} {
		st := ledger.Store{ID: id, Name: "Shop " + id, BIN: "260140001231", City: "Pavlodar",
			BankBIC: "HSBKKZKX", IBAN: "KZ89125KZT0000012345", DiscountBP: 1000}
		if _, err := led.PutStore(st); err != nil {
			t.Fatal(err)
		}
		key := []string{fzTermKey, fzOtherKey}[i]
		if _, err := led.AddTerminal(id, "T"+id, sha256.Sum256([]byte(key))); err != nil {
			t.Fatal(err)
		}
	}
	var fams []ledger.Family
	for i := range 5 {
		fams = append(fams, ledger.Family{FamilyID: fmt.Sprintf("F-%d", i), Members: 4, City: "Pavlodar"})
	}
	out, err := led.Issue(domain.MonthOf(fzNow, led.Programme().Location), fams)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range out {
		if _, err := led.Activate(o.Voucher.ID); err != nil {
			t.Fatal(err)
		}
		g.vouchers = append(g.vouchers, o.Voucher.ID)
	}
	tok, _ := g.token(g.vouchers[0])
	status, body := g.do("POST", "/v1/redemptions", fzTermKey, "setup-1",
		[]byte(`{"qr":"`+tok+`","amount":500000}`))
	var red struct {
		ID string `json:"redemption_id"`
	}
	if status != 201 || json.Unmarshal(body, &red) != nil {
		t.Fatalf("setup redemption: %d %s", status, body)
	}
	g.redemption = red.ID
	return g
}

func (g *fzGateway) token(id ledger.VoucherID) (string, time.Time) {
	tok, exp, err := g.qr.Mint(id)
	if err != nil {
		g.t.Fatal(err)
	}
	return tok, exp
}

// do runs one request through the server's handler, as fasthttp would
// after reading it from a connection.
func (g *fzGateway) do(method, uri, bearer, idem string, body []byte) (int, []byte) {
	resp := g.doResp(method, uri, bearer, idem, body)
	return resp.StatusCode(), resp.Body()
}

// doResp is do returning the whole response, headers included.
func (g *fzGateway) doResp(method, uri, bearer, idem string, body []byte) *fasthttp.Response {
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	req.Header.SetContentType("application/json")
	req.SetBody(body)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, nil)
	g.srv.handle(&ctx)
	var resp fasthttp.Response
	ctx.Response.CopyTo(&resp)
	return &resp
}

// fzState is what a rejected request must not change.
type fzState struct {
	books     ledger.Books
	stores    int
	terminals int
	adminLog  int
}

func (g *fzGateway) state() fzState {
	recs, err := g.led.AdminLog(0, ledger.AdminLogPageMax)
	if err != nil {
		g.t.Fatal(err)
	}
	return fzState{g.led.Books(), len(g.led.Stores()), len(g.led.Terminals()), len(recs)}
}

func (a fzState) equal(b fzState) bool {
	if a.stores != b.stores || a.terminals != b.terminals || a.adminLog != b.adminLog ||
		a.books.Vouchers != b.books.Vouchers || a.books.Spent != b.books.Spent ||
		a.books.Issued != b.books.Issued || len(a.books.Accounts) != len(b.books.Accounts) {
		return false
	}
	for k, v := range a.books.Accounts {
		if b.books.Accounts[k] != v {
			return false
		}
	}
	return true
}

// check sends one fuzzed request and asserts the contract's promises.
func (g *fzGateway) check(t *testing.T, method, uri, bearer, idem string, body []byte) {
	before := g.state()
	status, resp := g.do(method, uri, bearer, idem, body)

	switch {
	case status >= 500:
		t.Fatalf("%s %s %q: status %d %s", method, uri, body, status, resp)
	case status >= 400:
		var e struct {
			Error struct {
				Code      string `json:"code"`
				Message   string `json:"message"`
				RequestID string `json:"request_id"`
			} `json:"error"`
		}
		if err := json.Unmarshal(resp, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" || e.Error.RequestID == "" {
			t.Fatalf("%s %s %q: status %d with a malformed error body %s", method, uri, body, status, resp)
		}
		if want := fzStatusOf(e.Error.Code); want != status {
			t.Fatalf("%s %s %q: code %s with status %d, want %d", method, uri, body, e.Error.Code, status, want)
		}
	case status >= 200 && status < 300:
		if len(resp) > 0 && !json.Valid(resp) {
			t.Fatalf("%s %s %q: status %d with invalid JSON %s", method, uri, body, status, resp)
		}
	default:
		t.Fatalf("%s %s %q: unexpected status %d %s", method, uri, body, status, resp)
	}

	if status == 400 || status == 413 {
		if after := g.state(); !before.equal(after) {
			t.Fatalf("%s %s %q was refused with %d but changed the ledger:\n%+v\n%+v", method, uri, body, status, before, after)
		}
	}
	if err := g.led.CheckBooks(); err != nil {
		t.Fatalf("%s %s %q: %v", method, uri, body, err)
	}
}

func fzStatusOf(code string) int {
	for c := range codeCount {
		if codeTable[c].name == code {
			return codeTable[c].status
		}
	}
	return -1
}

// fzSeeds are the seed bodies of each target; the QR token placeholder
// "@QR" is replaced by a token valid under the fixed key and clock.
var fzSeeds = map[string][]string{
	"FuzzRedemptionBody": {
		`{"qr":"@QR","amount":180000}`,
		`{"qr":"@QR","partial":true,"lines":[{"sku":"4870001234567","category":"sugar","amount":98000},{"sku":"4870009999999","category":"","amount":55000}]}`,
		`{"qr":"@QR","lines":[{"sku":"1","category":"vodka","amount":1}]}`,
		`{"qr":"@QR","amount":1000000000000001}`,
		`{"qr":"@QR","amount":1e3}`,
		`{"qr":"@QR","amount":18.5}`,
		`{"qr":"@QR","amount":-1}`,
		`{"qr":"@QR","amount":0}`,
		`{"qr":"@QR","amount":1,"lines":[]}`,
		`{"qr":"@QR","amount":1,"amount":2}`,
		`{"qr":"@QR","amount":1,"extra":null}`,
		`{"qr":"@QR","amount":1} {}`,
		`{"qr":"1AB","amount":1}`,
		`{"qr":"\u0031","amount":1}`,
		`{"qr":"@QR","lines":[{"sku":"\ud800","category":"sugar","amount":5}]}`,
		`[]`, `null`, ``, `{`, `{"qr":`, "{\"qr\":\"\x00\"}",
	},
	"FuzzRefundBody": {
		`{"amount":50000}`, `{"amount":500001}`, `{"amount":0}`, `{"amount":"5"}`,
		`{"amount":1,"reason":"x"}`, `{}`, `{"amount":01}`, `{"amount":1}x`,
	},
	"FuzzBalanceBody": {
		`{"qr":"@QR"}`, `{"qr":""}`, `{"qr":null}`, `{"qr":"@QR","amount":1}`, `{}`, `"@QR"`,
	},
	"FuzzActivationBody": {
		`{"consent":true}`, `{"consent":false}`, `{}`, ``, `{"consent":1}`, `{"consent":true,"x":1}`,
	},
	"FuzzQRMintBody": {``, `{}`, `{"x":1}`, `[]`, `{} {}`},
	"FuzzIssuanceBody": {
		`{"month":"2026-12","families":[{"family_id":"F-000123","members":4,"city":"Pavlodar"}]}`,
		`{"month":"2099-01","families":[{"family_id":"F-1","members":1}]}`,
		`{"month":"2026-13","families":[]}`,
		`{"month":"2026-12","families":[{"family_id":"F 1","members":31}]}`,
		`{"month":"2026-12","families":[{"family_id":"F-1","members":4},{"family_id":"F-1","members":5}]}`,
		`{"month":"2025-01","families":[{"family_id":"OLD","members":2,"city":"Almaty"}]}`,
	},
	"FuzzStoreBody": {
		`{"name":"Magnum","bin":"260140001231","city":"Kokshetau","bank_bic":"HSBKKZKX","iban":"KZ89125KZT0000012345","discount_bp":1000}`,
		`{"name":"Magnum","bin":"260140001232","bank_bic":"HSBKKZKX","iban":"KZ89125KZT0000012345","discount_bp":1000}`,
		`{"name":"Magnum","bin":"260140001231","bank_bic":"hsbk","iban":"KZ00125KZT0000012345","discount_bp":1501}`,
		`{"store_id":"S9","name":"x","bin":"260140001231","bank_bic":"HSBKKZKX","iban":"KZ89125KZT0000012345","discount_bp":0}`,
	},
	"FuzzTerminalBody":        {`{"terminal_id":"T-new"}`, `{"terminal_id":"TS1"}`, `{"terminal_id":""}`, `{"terminal_id":"a/b"}`, `{}`},
	"FuzzAcknowledgementBody": {`{"reference":"BANK-REF-1"}`, `{"reference":""}`, `{}`, `{"reference":1}`},
	"FuzzCutoffBody":          {``, `{}`, `{"at":"2026-12-03T23:59:59+05:00"}`},
}

// addFzSeeds adds a target's seeds with real QR tokens.
func addFzSeeds(f *testing.F, g *fzGateway, target string) {
	for _, s := range fzSeeds[target] {
		f.Add([]byte(fzWithToken(g, s)))
	}
}

func fzWithToken(g *fzGateway, s string) string {
	if strings.Contains(s, "@QR") {
		tok, _ := g.token(g.vouchers[1+int(g.seq.Add(1))%(len(g.vouchers)-1)])
		s = strings.ReplaceAll(s, "@QR", tok)
	}
	return s
}

func (g *fzGateway) idem() string { return fmt.Sprintf("fz-%d", g.seq.Add(1)) }

// FuzzRedemptionBody fuzzes POST /v1/redemptions, the hot path.
func FuzzRedemptionBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzRedemptionBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		g.check(t, "POST", "/v1/redemptions", fzTermKey, g.idem(), body)
	})
}

// FuzzRefundBody fuzzes POST /v1/redemptions/{id}/refunds, by the shop
// that redeemed and by another shop's terminal.
func FuzzRefundBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzRefundBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		uri := "/v1/redemptions/" + g.redemption + "/refunds"
		g.check(t, "POST", uri, fzTermKey, g.idem(), body)
		g.check(t, "POST", uri, fzOtherKey, g.idem(), body)
	})
}

// FuzzBalanceBody fuzzes POST /v1/balance-inquiries.
func FuzzBalanceBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzBalanceBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		g.check(t, "POST", "/v1/balance-inquiries", fzTermKey, "", body)
	})
}

// FuzzActivationBody fuzzes POST /v1/vouchers/{id}/activation.
func FuzzActivationBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzActivationBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		g.check(t, "POST", "/v1/vouchers/"+g.vouchers[2].String()+"/activation", fzWallet, "", body)
	})
}

// FuzzQRMintBody fuzzes POST /v1/vouchers/{id}/qr, which takes no body.
func FuzzQRMintBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzQRMintBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		g.check(t, "POST", "/v1/vouchers/"+g.vouchers[3].String()+"/qr", fzWallet, "", body)
	})
}

// FuzzIssuanceBody fuzzes POST /v1/issuances.
func FuzzIssuanceBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzIssuanceBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		g.check(t, "POST", "/v1/issuances", fzAdmin, "", body)
	})
}

// FuzzStoreBody fuzzes PUT /v1/stores/{id}.
func FuzzStoreBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzStoreBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		g.check(t, "PUT", "/v1/stores/S9", fzAdmin, "", body)
	})
}

// FuzzTerminalBody fuzzes POST /v1/stores/{id}/terminals.
func FuzzTerminalBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzTerminalBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		g.check(t, "POST", "/v1/stores/S1/terminals", fzAdmin, "", body)
	})
}

// FuzzCutoffBody fuzzes POST /v1/settlement/cutoffs, which takes no body.
func FuzzCutoffBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzCutoffBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		g.check(t, "POST", "/v1/settlement/cutoffs", fzAdmin, "", body)
	})
}

// FuzzAcknowledgementBody fuzzes the acknowledgement of a settlement batch
// (the batch may or may not exist: both answers are checked).
func FuzzAcknowledgementBody(f *testing.F) {
	g := newFzGateway(f)
	addFzSeeds(f, g, "FuzzAcknowledgementBody")
	f.Fuzz(func(t *testing.T, body []byte) {
		g.check(t, "POST", "/v1/settlement/batches/B0000000001/acknowledgement", fzSettlement, "", body)
	})
}

// FuzzRequestLine fuzzes the method, path, query and credentials of a
// request: routing and authentication answer every one with a documented
// status, never a panic or a 5xx.
func FuzzRequestLine(f *testing.F) {
	g := newFzGateway(f)
	for _, r := range Routes() {
		path := strings.NewReplacer("{voucher_id}", g.vouchers[0].String(), "{redemption_id}", g.redemption,
			"{store_id}", "S1", "{batch_id}", "B1").Replace(r.Path)
		for _, who := range []string{fzAdmin, fzWallet, fzSettlement, fzTermKey, "", "nope"} {
			f.Add(r.Method, path, who)
		}
	}
	f.Add("GET", "/v1/redemptions/RD000000000000Z?x=1", fzTermKey)
	f.Add("GET", "/v1//vouchers/", fzAdmin)
	f.Add("DELETE", "/v1/stores/S1", fzAdmin)
	f.Add("GET", "/v1/vouchers/V0000001/../../catalogue", fzAdmin)
	f.Add("GET", "/v1/settlement/batches?limit=-1&after=%zz&status=x", fzSettlement)
	f.Fuzz(func(t *testing.T, method, uri, bearer string) {
		if method == "" || strings.ContainsAny(method, " \r\n") || !strings.HasPrefix(uri, "/") ||
			strings.ContainsAny(uri, " \r\n#") || strings.ContainsAny(bearer, "\r\n") {
			t.Skip("not a request line fasthttp would hand to the handler")
		}
		g.check(t, method, uri, bearer, g.idem(), nil)
	})
}

// TestWriteGatewayFuzzSeeds regenerates testdata/fuzz from fzSeeds. It runs
// only when asked: AZYQ_WRITE_FUZZ_SEEDS=1.
func TestWriteGatewayFuzzSeeds(t *testing.T) {
	if os.Getenv("AZYQ_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set AZYQ_WRITE_FUZZ_SEEDS=1 to regenerate testdata/fuzz")
	}
	g := newFzGateway(t)
	for target, seeds := range fzSeeds {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			entry := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", fzWithToken(g, s))
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(entry), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
