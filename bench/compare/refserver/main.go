// Command refserver serves the redemption subset of the azyq v1 API from a
// reference design, so that bench/compare can drive it with the same load
// test as the gateway:
//
//   - pg: PostgreSQL. Each redemption is one transaction that locks the
//     voucher row with SELECT … FOR UPDATE, debits it and inserts the
//     redemption, the used token and the idempotency record, committed
//     with synchronous_commit on.
//   - redis: Redis with appendonly yes and appendfsync always. Each
//     redemption is one Lua script that checks and debits the balance and
//     records the redemption, the used token and the idempotency record.
//   - noop: answers every request without doing any work: the ceiling the
//     machine's HTTP stack and the load generator leave.
//
// These are reference designs, not strawmen: connection pools are sized
// for group commit, statements are prepared (pgx caches them), the hot
// path makes as few round trips as the design allows, terminals are
// authenticated from memory as the gateway does, and the QR token is an
// HMAC checked in the process. What they leave out — settlement, refunds,
// balance inquiries, the full validation of the contract — is not on the
// path the comparison measures.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"azyq/domain"
)

// Limits of the reference servers.
const (
	bodyMax         = 16 << 20
	basketLinesMax  = 200
	issuanceFamMax  = 100_000
	qrLifetime      = 120 * time.Second
	usedTokenTTL    = qrLifetime + time.Minute
	idempotencyKeep = 48 * time.Hour
)

// backend is the storage of one reference design.
type backend interface {
	putStore(ctx context.Context, s store) error
	addTerminal(ctx context.Context, t terminal, keyHash []byte) (conflict bool, err error)
	issue(ctx context.Context, month domain.Month, fams []family) ([]issued, error)
	activate(ctx context.Context, id string, now time.Time) (voucher, string, error)
	voucher(ctx context.Context, id string) (voucher, bool, error)
	// redeem applies a priced redemption; it returns the stored answer of
	// the idempotency record (fresh or replayed).
	redeem(ctx context.Context, r *redemption) (answer, error)
}

type store struct {
	ID, Name, BIN, City, BIC, IBAN string
	DiscountBP                     int64
}

type terminal struct {
	ID, Store  string
	DiscountBP int64
}

type family struct {
	ID      string
	Members int
	City    string
}

type issued struct {
	FamilyID, VoucherID string
	Face                int64
	Status              string
	Created             bool
}

type voucher struct {
	ID, FamilyID, Month, City, Status string
	Members                           int
	Face, Balance                     int64
	ActivatedAt, ExpiresAt            time.Time
}

// redemption is a decoded, priced redemption request.
type redemption struct {
	Terminal  terminal
	Key       string
	ReqHash   string // sha256 of the body, hex
	VoucherID string
	TokenID   string
	Requested int64
	Partial   bool
	Lines     []line
	Now       time.Time
	Created   string // Now as written in the answer; a replay keeps the first
}

type line struct {
	SKU, Category             string
	Amount, Discount, Payable int64
	Eligible                  bool
}

// answer is what the idempotency record keeps: status and body.
type answer struct {
	Status   int
	Body     []byte
	Replayed bool
}

type server struct {
	kind        string
	be          backend
	adminToken  string
	walletToken string
	qrKey       []byte
	loc         *time.Location
	prog        *domain.Programme
	log         *slog.Logger

	mu struct {
		sync.RWMutex
		terminals map[string]terminal // by sha256(api key)
		discount  map[string]int64    // store id → discount
	}
}

func main() {
	kind := flag.String("kind", "noop", "pg, redis or noop")
	listen := flag.String("listen", "127.0.0.1:8090", "API address")
	pgURL := flag.String("pg", "postgres://postgres@127.0.0.1:5432/postgres", "PostgreSQL URL")
	pgConns := flag.Int("pg-conns", 48, "PostgreSQL pool size: enough sessions for group commit")
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	redisConns := flag.Int("redis-conns", 64, "Redis pool size")
	admin := flag.String("admin-token", "admin-ref", "admin token")
	wallet := flag.String("wallet-token", "wallet-ref", "wallet token")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := &server{kind: *kind, adminToken: *admin, walletToken: *wallet, log: log,
		prog: domain.DefaultProgramme()}
	s.loc = s.prog.Location
	s.qrKey = make([]byte, 32)
	rand.Read(s.qrKey)
	s.mu.terminals = map[string]terminal{}
	s.mu.discount = map[string]int64{}

	var err error
	switch *kind {
	case "pg":
		s.be, err = newPG(ctx, *pgURL, *pgConns, s.prog)
	case "redis":
		s.be, err = newRedis(ctx, *redisAddr, *redisConns, s.prog)
	case "noop":
	default:
		err = fmt.Errorf("cannot serve kind %q (--kind): want pg, redis or noop", *kind)
	}
	if err != nil {
		log.Error("cannot start", "kind", *kind, "err", err)
		os.Exit(2)
	}

	handler := s.handle
	if *kind == "noop" {
		handler = noop
	}
	srv := &fasthttp.Server{Handler: handler, MaxRequestBodySize: bodyMax, Name: "refserver-" + *kind}
	go func() {
		<-ctx.Done()
		srv.Shutdown()
	}()
	log.Info("ready", "kind", *kind, "listen", *listen)
	if err := srv.ListenAndServe(*listen); err != nil {
		log.Error("cannot serve", "listen", *listen, "err", err)
		os.Exit(2)
	}
}

// fail writes a contract error body.
func fail(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	fmt.Fprintf(ctx, `{"error":{"code":%q,"message":%q}}`, code, msg)
}

func ok(ctx *fasthttp.RequestCtx, status int, body []byte) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

func bearer(ctx *fasthttp.RequestCtx) string {
	h := string(ctx.Request.Header.Peek("Authorization"))
	t, _ := strings.CutPrefix(h, "Bearer ")
	return t
}

func hashKey(k string) string {
	h := sha256.Sum256([]byte(k))
	return string(h[:])
}

func (s *server) handle(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	method := string(ctx.Method())
	tok := bearer(ctx)
	isAdmin := hmac.Equal([]byte(tok), []byte(s.adminToken))
	isWallet := hmac.Equal([]byte(tok), []byte(s.walletToken))
	parts := strings.Split(strings.TrimPrefix(path, "/v1/"), "/")

	switch {
	case method == "POST" && path == "/v1/redemptions":
		s.mu.RLock()
		t, known := s.mu.terminals[hashKey(tok)]
		s.mu.RUnlock()
		if !known {
			fail(ctx, 401, "unauthenticated", "unknown token")
			return
		}
		s.redeem(ctx, t)
	case method == "PUT" && len(parts) == 2 && parts[0] == "stores":
		if !isAdmin {
			fail(ctx, 401, "unauthenticated", "admin only")
			return
		}
		s.putStore(ctx, parts[1])
	case method == "POST" && len(parts) == 3 && parts[0] == "stores" && parts[2] == "terminals":
		if !isAdmin {
			fail(ctx, 401, "unauthenticated", "admin only")
			return
		}
		s.addTerminal(ctx, parts[1])
	case method == "POST" && path == "/v1/issuances":
		if !isAdmin {
			fail(ctx, 401, "unauthenticated", "admin only")
			return
		}
		s.issue(ctx)
	case method == "POST" && len(parts) == 3 && parts[0] == "vouchers" && parts[2] == "activation":
		if !isWallet {
			fail(ctx, 401, "unauthenticated", "wallet only")
			return
		}
		v, code, err := s.be.activate(ctx, parts[1], time.Now())
		s.answerVoucher(ctx, v, code, err)
	case method == "POST" && len(parts) == 3 && parts[0] == "vouchers" && parts[2] == "qr":
		if !isWallet {
			fail(ctx, 401, "unauthenticated", "wallet only")
			return
		}
		s.mint(ctx, parts[1])
	case method == "GET" && len(parts) == 2 && parts[0] == "vouchers":
		if !isWallet && !isAdmin {
			fail(ctx, 401, "unauthenticated", "wallet or admin only")
			return
		}
		v, found, err := s.be.voucher(ctx, parts[1])
		code := ""
		if !found {
			code = "not_found"
		}
		s.answerVoucher(ctx, v, code, err)
	default:
		fail(ctx, 404, "not_found", "not in the reference subset")
	}
}

func (s *server) putStore(ctx *fasthttp.RequestCtx, id string) {
	v, err := fastjson.ParseBytes(ctx.PostBody())
	if err != nil {
		fail(ctx, 400, "invalid_request", err.Error())
		return
	}
	st := store{ID: id, Name: string(v.GetStringBytes("name")), BIN: string(v.GetStringBytes("bin")),
		City: string(v.GetStringBytes("city")), BIC: string(v.GetStringBytes("bank_bic")),
		IBAN: string(v.GetStringBytes("iban")), DiscountBP: v.GetInt64("discount_bp")}
	if !domain.ValidBIN(st.BIN) || !domain.ValidIBAN(st.IBAN) || !domain.ValidBIC(st.BIC) ||
		st.DiscountBP < 0 || st.DiscountBP > 1500 {
		fail(ctx, 400, "invalid_request", "invalid store")
		return
	}
	if err := s.be.putStore(ctx, st); err != nil {
		s.internal(ctx, err)
		return
	}
	s.mu.Lock()
	s.mu.discount[id] = st.DiscountBP
	s.mu.Unlock()
	ok(ctx, 200, fmt.Appendf(nil, `{"store_id":%q,"name":%q,"discount_bp":%d}`, id, st.Name, st.DiscountBP))
}

func (s *server) addTerminal(ctx *fasthttp.RequestCtx, storeID string) {
	id := string(fastjson.GetBytes(ctx.PostBody(), "terminal_id"))
	s.mu.RLock()
	bp, known := s.mu.discount[storeID]
	s.mu.RUnlock()
	if id == "" || !known {
		fail(ctx, 400, "invalid_request", "unknown store or no terminal_id")
		return
	}
	key := make([]byte, 24)
	rand.Read(key)
	apiKey := hex.EncodeToString(key)
	t := terminal{ID: id, Store: storeID, DiscountBP: bp}
	conflict, err := s.be.addTerminal(ctx, t, []byte(hashKey(apiKey)))
	if err != nil {
		s.internal(ctx, err)
		return
	}
	if conflict {
		fail(ctx, 409, "conflict", "terminal exists")
		return
	}
	s.mu.Lock()
	s.mu.terminals[hashKey(apiKey)] = t
	s.mu.Unlock()
	ok(ctx, 201, fmt.Appendf(nil, `{"terminal_id":%q,"store_id":%q,"api_key":%q}`, id, storeID, apiKey))
}

func (s *server) issue(ctx *fasthttp.RequestCtx) {
	v, err := fastjson.ParseBytes(ctx.PostBody())
	if err != nil {
		fail(ctx, 400, "invalid_request", err.Error())
		return
	}
	month, err := domain.ParseMonth(string(v.GetStringBytes("month")))
	if err != nil {
		fail(ctx, 400, "invalid_request", err.Error())
		return
	}
	if _, known := s.prog.FaceValue(month, 1); !known {
		fail(ctx, 422, "mrp_unknown", "no MRP for "+month.String())
		return
	}
	arr := v.GetArray("families")
	if len(arr) == 0 || len(arr) > issuanceFamMax {
		fail(ctx, 400, "invalid_request", "families: 1-100000")
		return
	}
	fams := make([]family, len(arr))
	for i, f := range arr {
		fams[i] = family{ID: string(f.GetStringBytes("family_id")), Members: f.GetInt("members"),
			City: string(f.GetStringBytes("city"))}
		if fams[i].ID == "" || fams[i].Members < 1 || fams[i].Members > 30 {
			fail(ctx, 400, "invalid_request", "invalid family "+strconv.Itoa(i))
			return
		}
	}
	out, err := s.be.issue(ctx, month, fams)
	if err != nil {
		s.internal(ctx, err)
		return
	}
	created := 0
	body := make([]byte, 0, 128*len(out))
	body = append(body, `{"month":"`+month.String()+`","vouchers":[`...)
	for i, o := range out {
		if i > 0 {
			body = append(body, ',')
		}
		if o.Created {
			created++
		}
		body = fmt.Appendf(body, `{"family_id":%q,"voucher_id":%q,"face_value":%d,"status":%q,"created":%t}`,
			o.FamilyID, o.VoucherID, o.Face, o.Status, o.Created)
	}
	body = fmt.Appendf(body, `],"created":%d,"existing":%d}`, created, len(out)-created)
	ok(ctx, 200, body)
}

func (s *server) internal(ctx *fasthttp.RequestCtx, err error) {
	s.log.Error("cannot serve request", "path", string(ctx.Path()), "err", err)
	fail(ctx, 500, "internal", "internal error")
}

func (s *server) answerVoucher(ctx *fasthttp.RequestCtx, v voucher, code string, err error) {
	switch {
	case err != nil:
		s.internal(ctx, err)
	case code == "not_found":
		fail(ctx, 404, code, "no such voucher")
	case code != "":
		fail(ctx, 422, code, "activation refused")
	default:
		ok(ctx, 200, s.voucherJSON(v))
	}
}

func (s *server) voucherJSON(v voucher) []byte {
	status := v.Status
	if !time.Now().Before(v.ExpiresAt) {
		status = "expired"
	}
	b := fmt.Appendf(nil, `{"voucher_id":%q,"family_id":%q,"month":%q,"members":%d,"city":%q,`+
		`"face_value":%d,"balance":%d,"status":%q`, v.ID, v.FamilyID, v.Month, v.Members, v.City,
		v.Face, v.Balance, status)
	if !v.ActivatedAt.IsZero() {
		b = fmt.Appendf(b, `,"activated_at":%q`, v.ActivatedAt.In(s.loc).Format(time.RFC3339))
	}
	return fmt.Appendf(b, `,"expires_at":%q}`, v.ExpiresAt.In(s.loc).Format(time.RFC3339))
}

// QR tokens: "Q" voucher "." expiry (unix seconds) "." nonce "." MAC, all
// upper-case hex or the voucher id's own alphabet, so within the QR
// alphanumeric set.
func (s *server) mint(ctx *fasthttp.RequestCtx, id string) {
	v, found, err := s.be.voucher(ctx, id)
	switch {
	case err != nil:
		s.internal(ctx, err)
		return
	case !found:
		fail(ctx, 404, "not_found", "no such voucher")
		return
	case v.Status != "active":
		fail(ctx, 402, "voucher_not_active", "voucher is not active")
		return
	}
	exp := time.Now().Add(qrLifetime)
	nonce := make([]byte, 8)
	rand.Read(nonce)
	payload := fmt.Sprintf("Q%s.%d.%s", id, exp.Unix(), strings.ToUpper(hex.EncodeToString(nonce)))
	token := payload + "." + s.mac(payload)
	ok(ctx, 201, fmt.Appendf(nil, `{"qr":%q,"expires_at":%q}`, token, exp.In(s.loc).Format(time.RFC3339)))
}

func (s *server) mac(payload string) string {
	m := hmac.New(sha256.New, s.qrKey)
	m.Write([]byte(payload))
	return strings.ToUpper(hex.EncodeToString(m.Sum(nil)[:12]))
}

// verify returns the voucher id and token id of a QR token, or a decline.
func (s *server) verify(qr string, now time.Time) (voucherID, tokenID, code string) {
	i := strings.LastIndexByte(qr, '.')
	if len(qr) < 2 || qr[0] != 'Q' || i < 0 || !hmac.Equal([]byte(s.mac(qr[:i])), []byte(qr[i+1:])) {
		return "", "", "qr_invalid"
	}
	f := strings.Split(qr[1:i], ".")
	if len(f) != 3 {
		return "", "", "qr_invalid"
	}
	exp, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return "", "", "qr_invalid"
	}
	if now.Unix() >= exp {
		return "", "", "qr_expired"
	}
	return f[0], f[2], ""
}

// redeem decodes and prices the request, then hands it to the backend.
func (s *server) redeem(ctx *fasthttp.RequestCtx, t terminal) {
	key := string(ctx.Request.Header.Peek("Idempotency-Key"))
	if key == "" || len(key) > 255 {
		fail(ctx, 400, "idempotency_key_missing", "Idempotency-Key is required")
		return
	}
	body := ctx.PostBody()
	var p fastjson.Parser
	v, err := p.ParseBytes(body)
	if err != nil {
		fail(ctx, 400, "invalid_request", err.Error())
		return
	}
	now := time.Now()
	sum := sha256.Sum256(body)
	r := &redemption{Terminal: t, Key: key, ReqHash: hex.EncodeToString(sum[:16]), Now: now,
		Created: now.In(s.loc).Format(time.RFC3339Nano), Partial: v.GetBool("partial")}

	// Pricing, as the contract says: discount on eligible lines, the
	// voucher covers payable amounts.
	if lines := v.GetArray("lines"); lines != nil {
		if len(lines) > basketLinesMax {
			fail(ctx, 400, "invalid_request", "too many lines")
			return
		}
		for _, lv := range lines {
			l := line{SKU: string(lv.GetStringBytes("sku")), Category: string(lv.GetStringBytes("category")),
				Amount: lv.GetInt64("amount")}
			if l.Amount < 0 || l.Amount > int64(domain.AmountMax) {
				fail(ctx, 400, "invalid_request", "bad line amount")
				return
			}
			l.Payable = l.Amount
			if s.prog.Eligible(l.Category) {
				l.Eligible = true
				l.Discount = int64(domain.Tiyn(l.Amount).Discount(t.DiscountBP))
				l.Payable = l.Amount - l.Discount
				r.Requested += l.Payable
			}
			r.Lines = append(r.Lines, l)
		}
	} else {
		r.Requested = v.GetInt64("amount")
		if r.Requested <= 0 || r.Requested > int64(domain.AmountMax) {
			fail(ctx, 400, "invalid_request", "amount must be positive")
			return
		}
	}

	var code string
	r.VoucherID, r.TokenID, code = s.verify(string(v.GetStringBytes("qr")), now)
	if code == "" && r.Lines != nil && r.Requested == 0 {
		// Not eligible: still recorded as the key's answer, below.
		code = "no_eligible_items"
	}
	if code != "" {
		// Token faults and baskets with nothing eligible are answered
		// without touching storage, so they are not kept under the
		// idempotency key: a retry gets the same body, but not the
		// Idempotent-Replayed header. The comparison sends no retries;
		// the contract's full replay rule is the gateway's, tested by
		// the load test's idempotent_retry operation.
		fail(ctx, 402, code, "declined")
		return
	}

	a, err := s.be.redeem(ctx, r)
	if err != nil {
		s.internal(ctx, err)
		return
	}
	if a.Replayed {
		ctx.Response.Header.Set("Idempotent-Replayed", "true")
	}
	ctx.SetStatusCode(a.Status)
	ctx.SetContentType("application/json")
	ctx.SetBody(a.Body)
}

// answerBody renders a redemption's answer from what the storage decided.
// The backends store the rendered body as the idempotency record, so a
// replay is byte for byte.
func answerBody(r *redemption, code, id string, approved, balance int64) answer {
	if code != "" {
		b := fmt.Appendf(nil, `{"error":{"code":%q,"message":"declined"`, code)
		if code == "insufficient_funds" {
			b = fmt.Appendf(b, `,"balance":%d`, balance)
		}
		status := 402
		switch code {
		case "idempotency_key_reused":
			status = 409
		case "not_found":
			status = 404
		}
		return answer{Status: status, Body: append(b, "}}"...)}
	}
	b := fmt.Appendf(nil, `{"redemption_id":%q,"voucher_id":%q,"store_id":%q,"terminal_id":%q,`+
		`"status":"approved","requested":%d,"approved":%d,"balance":%d,"created_at":%q`,
		id, r.VoucherID, r.Terminal.Store, r.Terminal.ID, r.Requested, approved, balance,
		r.Created)
	if r.Lines != nil {
		b = append(b, `,"lines":[`...)
		left := approved
		for i, l := range r.Lines {
			if i > 0 {
				b = append(b, ',')
			}
			covered := int64(0)
			if l.Eligible {
				covered = min(l.Payable, left)
				left -= covered
			}
			b = fmt.Appendf(b, `{"sku":%q,"category":%q,"amount":%d,"eligible":%t,"discount":%d,`+
				`"payable":%d,"covered":%d}`, l.SKU, l.Category, l.Amount, l.Eligible, l.Discount,
				l.Payable, covered)
		}
		b = append(b, ']')
	}
	return answer{Status: 201, Body: append(b, '}')}
}

// decide applies the money rule to a locked voucher's state: the approved
// amount, or a decline code.
func decide(r *redemption, status string, balance int64, expires time.Time, used bool) (int64, string) {
	switch {
	case used:
		return 0, "qr_used"
	case status != "active":
		return 0, "voucher_not_active"
	case !r.Now.Before(expires):
		return 0, "voucher_expired"
	case balance >= r.Requested:
		return r.Requested, ""
	case r.Partial && balance > 0:
		return balance, ""
	}
	return 0, "insufficient_funds"
}

var errNotFound = errors.New("not found")
