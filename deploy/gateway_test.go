package deploy_test

import (
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

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"azyq/domain"
	"azyq/gateway"
	"azyq/ledger"
)

const (
	adminTok  = "deploy-admin-token"
	walletTok = "deploy-wallet-token"
	settleTok = "deploy-settlement-token"
)

// gw is a real gateway in process: the API and the operations listener on
// loopback ports of their own.
type gw struct {
	t      testing.TB
	api    string // http://127.0.0.1:port
	ops    string
	client *http.Client
	term   string // the terminal's API key

	mu struct {
		sync.Mutex
		ids map[string]bool // every id the traffic created or saw
	}
}

// saw records ids the traffic created or was given.
func (g *gw) saw(ids ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, id := range ids {
		g.mu.ids[id] = true
	}
}

func (g *gw) isID(v string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mu.ids[v]
}

func startGateway(t testing.TB) *gw {
	t.Helper()
	dir := t.TempDir()
	prog := domain.DefaultProgramme()
	led, err := ledger.Open(ledger.Config{Dir: filepath.Join(dir, "ledger"), Programme: prog})
	if err != nil {
		t.Fatal(err)
	}
	key, err := gateway.NewQRKey(1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	qr, err := gateway.NewQRKeys([]gateway.QRKey{key}, prog.QRLifetime, led.Now)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.New(gateway.Config{Ledger: led, QR: qr,
		AdminToken: adminTok, WalletToken: walletTok, SettlementToken: settleTok})
	if err != nil {
		t.Fatal(err)
	}

	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(apiLn) }()
	ops := &http.Server{Handler: srv.OpsHandler(), ReadHeaderTimeout: 10 * time.Second}
	go ops.Serve(opsLn)
	srv.SetReady(true)

	g := &gw{t: t, api: "http://" + apiLn.Addr().String(), ops: "http://" + opsLn.Addr().String(),
		client: &http.Client{Timeout: 30 * time.Second}}
	g.mu.ids = map[string]bool{}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		ops.Close()
		led.Close()
		g.client.CloseIdleConnections()
	})
	return g
}

// do sends one API request and returns the status and decoded JSON body.
func (g *gw) do(method, path, token, body string, hdr ...string) (int, map[string]any) {
	g.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, g.api+path, rd)
	if err != nil {
		g.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := g.client.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	g.saw(res.Header.Get("X-Request-Id"))
	out := map[string]any{}
	json.Unmarshal(raw, &out)
	return res.StatusCode, out
}

func (g *gw) must(want int, method, path, token, body string, hdr ...string) map[string]any {
	g.t.Helper()
	st, out := g.do(method, path, token, body, hdr...)
	if st != want {
		g.t.Fatalf("%s %s: status %d %v, want %d", method, path, st, out, want)
	}
	return out
}

var idemSeq atomic.Int64

// setup creates a shop with a terminal and returns nothing; the terminal's
// key is kept on g.
func (g *gw) setup() {
	bin, _ := domain.BINWithCheck("26014000123")
	iban := domain.IBANWithCheck("125", "KZT0000012345")
	g.must(200, "PUT", "/v1/stores/S-OPS-1", adminTok, fmt.Sprintf(
		`{"name":"Ops shop","bin":%q,"city":"Pavlodar","bank_bic":"HSBKKZKX","iban":%q,"discount_bp":1000}`, bin, iban))
	out := g.must(201, "POST", "/v1/stores/S-OPS-1/terminals", adminTok, `{"terminal_id":"T-OPS-1"}`)
	g.term = out["api_key"].(string)
	g.saw("S-OPS-1", "T-OPS-1", g.term)
}

// vouchers issues and activates n vouchers of the current month.
func (g *gw) vouchers(first, n int) []string {
	month := time.Now().In(domain.DefaultProgramme().Location).Format("2006-01")
	fams := make([]string, n)
	for i := range fams {
		fams[i] = fmt.Sprintf(`{"family_id":"F-OPS-%05d","members":4,"city":"Pavlodar"}`, first+i)
		g.saw(fmt.Sprintf("F-OPS-%05d", first+i))
	}
	out := g.must(200, "POST", "/v1/issuances", adminTok,
		fmt.Sprintf(`{"month":%q,"families":[%s]}`, month, strings.Join(fams, ",")))
	var ids []string
	for _, v := range out["vouchers"].([]any) {
		id := v.(map[string]any)["voucher_id"].(string)
		g.saw(id)
		g.must(200, "POST", "/v1/vouchers/"+id+"/activation", walletTok, `{"consent":true}`)
		ids = append(ids, id)
	}
	return ids
}

// redeem mints a token, redeems amount with it and replays the request
// once; it returns the status. Safe to call from several goroutines: it
// reports failures with Errorf.
func (g *gw) redeem(voucher string, amount int64) int {
	st, out := g.do("POST", "/v1/vouchers/"+voucher+"/qr", walletTok, "")
	qr, _ := out["qr"].(string)
	if st != 201 || qr == "" {
		g.t.Errorf("minting a QR token answered %d %v", st, out)
		return 0
	}
	key := fmt.Sprintf("idem-%d", idemSeq.Add(1))
	g.saw(qr, key)
	body := fmt.Sprintf(`{"qr":%q,"amount":%d}`, qr, amount)
	st, out = g.do("POST", "/v1/redemptions", g.term, body, "Idempotency-Key", key)
	if id, ok := out["redemption_id"].(string); ok {
		g.saw(id)
	}
	// Replay it once: the replay counter and its path must be exported.
	if st2, _ := g.do("POST", "/v1/redemptions", g.term, body, "Idempotency-Key", key); st2 != st {
		g.t.Errorf("replay answered %d, first answer %d", st2, st)
	}
	return st
}

// traffic drives every kind of answer the metrics distinguish: approvals,
// declines, replays, token rejections, auth failures, unknown routes and a
// balance inquiry.
func (g *gw) traffic() {
	g.t.Helper()
	g.setup()
	vs := g.vouchers(0, 3)
	for _, v := range vs {
		if st := g.redeem(v, 100_000); st != 201 {
			g.t.Fatalf("redemption answered %d", st)
		}
	}
	if st := g.redeem(vs[0], 1_000_000_000); st != 402 {
		g.t.Fatalf("oversized redemption answered %d, want 402", st)
	}
	g.must(402, "POST", "/v1/redemptions", g.term, `{"qr":"GARBAGE","amount":1}`, "Idempotency-Key", "k-garbage")
	g.must(401, "GET", "/v1/vouchers/"+vs[0], "nobody", "")
	g.must(404, "GET", "/v1/nowhere/V1234567", adminTok, "")
	qr := g.must(201, "POST", "/v1/vouchers/"+vs[1]+"/qr", walletTok, "")["qr"].(string)
	g.saw(qr)
	g.must(200, "POST", "/v1/balance-inquiries", g.term, fmt.Sprintf(`{"qr":%q}`, qr))
	g.must(201, "POST", "/v1/admin/checkpoints", adminTok, "")
}

// scrape reads the operations listener's /metrics in the text format.
func (g *gw) scrape() map[string]*dto.MetricFamily {
	g.t.Helper()
	res, err := g.client.Get(g.ops + "/metrics")
	if err != nil {
		g.t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		g.t.Fatalf("GET /metrics: %d", res.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		g.t.Fatalf("cannot parse /metrics: %v", err)
	}
	return mfs
}

// seriesNames lists the series names a scrape exposes: histograms and
// summaries expand to their _bucket, _sum and _count series.
func seriesNames(mfs map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for name, mf := range mfs {
		out[name] = true
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out
}
