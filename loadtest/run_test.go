package loadtest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// fakeGateway is just enough of the v1 API, in memory, for a whole run:
// set-up, every operation of the mix, and the read-back. Its one planted
// fault, debitOnReplay, debits a voucher again when an approved
// redemption is replayed while answering byte for byte — the kind of bug
// only the book check can see.
type fakeGateway struct {
	debitOnReplay bool

	mu          sync.Mutex
	seq         int
	balance     map[string]int64
	face        map[string]int64
	tokens      map[string]string // qr → voucher; deleted when used
	terminals   map[string]string // api key → terminal id
	idem        map[string]idemRecord
	redemptions map[string]*[2]int64 // id → approved, refunded
	redVoucher  map[string]string
}

type idemRecord struct {
	status int
	body   string
}

func newFakeGateway() *fakeGateway {
	return &fakeGateway{balance: map[string]int64{}, face: map[string]int64{},
		tokens: map[string]string{}, terminals: map[string]string{}, idem: map[string]idemRecord{},
		redemptions: map[string]*[2]int64{}, redVoucher: map[string]string{}}
}

func (g *fakeGateway) serve(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: g.handle}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

func (g *fakeGateway) handle(ctx *fasthttp.RequestCtx) {
	g.mu.Lock()
	defer g.mu.Unlock()
	path, body := string(ctx.Path()), ctx.PostBody()
	auth := strings.TrimPrefix(string(ctx.Request.Header.Peek("Authorization")), "Bearer ")
	reply := func(status int, format string, args ...any) {
		ctx.SetStatusCode(status)
		ctx.SetBodyString(fmt.Sprintf(format, args...))
	}
	g.seq++
	switch {
	case strings.HasPrefix(path, "/v1/stores/") && strings.HasSuffix(path, "/terminals"):
		id := string(fastjson.GetBytes(body, "terminal_id"))
		g.terminals["k-"+id] = id
		reply(201, `{"terminal_id":%q,"api_key":"k-%s"}`, id, id)
	case strings.HasPrefix(path, "/v1/stores/"):
		reply(200, `{}`)
	case path == "/v1/issuances":
		var out []string
		for _, f := range fastjson.MustParseBytes(body).GetArray("families") {
			id := fmt.Sprintf("V%d", len(g.face)+1)
			g.face[id] = int64(f.GetInt("members")) * 432_500
			g.balance[id] = g.face[id]
			out = append(out, fmt.Sprintf(`{"family_id":%q,"voucher_id":%q,"face_value":%d,"created":true}`,
				f.GetStringBytes("family_id"), id, g.face[id]))
		}
		reply(200, `{"vouchers":[%s]}`, strings.Join(out, ","))
	case strings.HasSuffix(path, "/activation"):
		reply(200, `{}`)
	case strings.HasSuffix(path, "/qr"):
		qr := fmt.Sprintf("Q%d", g.seq)
		g.tokens[qr] = strings.TrimSuffix(strings.TrimPrefix(path, "/v1/vouchers/"), "/qr")
		reply(201, `{"qr":%q,"expires_at":%q}`, qr, time.Now().Add(2*time.Minute).Format(time.RFC3339))
	case strings.HasPrefix(path, "/v1/vouchers/"):
		id := strings.TrimPrefix(path, "/v1/vouchers/")
		reply(200, `{"voucher_id":%q,"face_value":%d,"balance":%d}`, id, g.face[id], g.balance[id])
	case path == "/v1/balance-inquiries":
		v := g.tokens[string(fastjson.GetBytes(body, "qr"))]
		reply(200, `{"voucher_id":%q,"balance":%d}`, v, g.balance[v])
	default:
		g.money(ctx, g.terminals[auth], path, body)
	}
}

// money serves redemptions and refunds with idempotent replay.
func (g *fakeGateway) money(ctx *fasthttp.RequestCtx, term, path string, body []byte) {
	key := term + "/" + string(ctx.Request.Header.Peek("Idempotency-Key"))
	if first, ok := g.idem[key]; ok {
		if g.debitOnReplay && path == "/v1/redemptions" && first.status == 201 {
			v := fastjson.GetString([]byte(first.body), "voucher_id")
			g.balance[v] -= int64(fastjson.GetInt([]byte(first.body), "approved"))
		}
		ctx.Response.Header.Set("Idempotent-Replayed", "true")
		ctx.SetStatusCode(first.status)
		ctx.SetBodyString(first.body)
		return
	}
	status, answer := g.moveMoney(path, body)
	g.idem[key] = idemRecord{status, answer}
	ctx.SetStatusCode(status)
	ctx.SetBodyString(answer)
}

func (g *fakeGateway) moveMoney(path string, body []byte) (int, string) {
	j := fastjson.MustParseBytes(body)
	if path != "/v1/redemptions" {
		id := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/redemptions/"), "/refunds")
		r, amount := g.redemptions[id], j.GetInt64("amount")
		if r == nil || r[1]+amount > r[0] {
			return 422, `{"error":{"code":"refund_exceeds_redemption"}}`
		}
		r[1] += amount
		g.balance[g.redVoucher[id]] += amount
		return 201, fmt.Sprintf(`{"refund_id":"RF%d","amount":%d,"credited_to":"voucher"}`, g.seq, amount)
	}
	qr := string(j.GetStringBytes("qr"))
	v, ok := g.tokens[qr]
	if !ok {
		return 402, `{"error":{"code":"qr_used"}}`
	}
	want := j.GetInt64("amount")
	for _, l := range j.GetArray("lines") {
		if len(l.GetStringBytes("category")) > 0 {
			want += l.GetInt64("amount")
		}
	}
	if want > g.balance[v] {
		return 402, fmt.Sprintf(`{"error":{"code":"insufficient_funds","balance":%d}}`, g.balance[v])
	}
	delete(g.tokens, qr)
	g.balance[v] -= want
	id := fmt.Sprintf("RD%d", g.seq)
	g.redemptions[id] = &[2]int64{want, 0}
	g.redVoucher[id] = v
	return 201, fmt.Sprintf(`{"redemption_id":%q,"voucher_id":%q,"status":"approved","approved":%d,"balance":%d}`,
		id, v, want, g.balance[v])
}

func fakeRun(t *testing.T, g *fakeGateway, mode string) *Report {
	t.Helper()
	cfg := Config{Addr: g.serve(t), AdminToken: "a", WalletToken: "w", Mode: mode, Rate: 2000,
		Workers: 8, Duration: 400 * time.Millisecond, Stores: 2, TerminalsPerStore: 2,
		Vouchers: 50, HotVouchers: 2, HotShare: 0.1, Seed: 5, Check: true,
		Mix: Mix{RedeemAmount: 30, RedeemBasket: 30, Balance: 10, Refund: 10, Retry: 20}}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return rep
}

// TestRunAgainstFakeGateway runs the whole load test, both loops, against
// an honest fake: every operation of the mix happens and the books balance.
func TestRunAgainstFakeGateway(t *testing.T) {
	for _, mode := range []string{"closed", "open"} {
		t.Run(mode, func(t *testing.T) {
			rep := fakeRun(t, newFakeGateway(), mode)
			if !rep.OK() || rep.Failures != 0 {
				t.Fatalf("honest gateway failed the run: problems %v, books %+v", rep.Problems, rep.Books)
			}
			seen := map[string]bool{}
			for _, o := range rep.Ops {
				seen[o.Op] = o.Count > 0
			}
			for _, op := range []string{"redeem_amount", "redeem_basket", "balance_inquiry", "refund",
				"idempotent_retry", "qr_mint"} {
				if !seen[op] {
					t.Errorf("no %s in the run", op)
				}
			}
			if rep.Books.Checked != 50 {
				t.Errorf("checked %d vouchers, want 50", rep.Books.Checked)
			}
		})
	}
}

// TestRunCatchesDoubleDebitOnReplay plants a gateway that answers replays
// correctly but moves the money again: the run must fail on the books.
func TestRunCatchesDoubleDebitOnReplay(t *testing.T) {
	g := newFakeGateway()
	g.debitOnReplay = true
	rep := fakeRun(t, g, "closed")
	if rep.OK() || rep.Books == nil || len(rep.Books.Violations) == 0 {
		t.Fatalf("double debit on replay went unnoticed: %+v", rep.Books)
	}
}
