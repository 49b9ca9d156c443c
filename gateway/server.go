package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"azyq/domain"
	"azyq/ledger"
	"azyq/settlement"
)

// Config configures New. Ledger and QR are required.
type Config struct {
	// Ledger holds the vouchers; the server never closes it.
	Ledger *ledger.Ledger
	// QR signs and verifies QR tokens.
	QR *QRKeys
	// AdminToken, WalletToken and SettlementToken are the role bearer
	// tokens. An empty token disables its role.
	AdminToken, WalletToken, SettlementToken string
	// Logger receives lifecycle events and faults. Nil discards them.
	Logger *slog.Logger
	// Registry receives the gateway's and the ledger's metrics. Nil makes
	// a new one (see Server.Registry).
	Registry *prometheus.Registry
	// InflightMax caps the API requests being served at once; more are
	// answered 429 rate_limited with Retry-After. Zero means 4096.
	InflightMax int
	// Settlement keeps the settlement batches. Nil opens one over Ledger.
	Settlement *settlement.Settlement
	// Limits are the per-terminal rate limit, connection caps and
	// timeouts (limits.go); zero fields take their defaults.
	Limits Limits
	// QRKeyStore keeps QR signing keys durable when they rotate through
	// the admin API (keys.go). Nil disables rotation through the API.
	QRKeyStore QRKeyStore
}

// inflightMaxDefault is InflightMax's default: far above what a 2-core
// node can use (a redemption waits mostly on the shared fsync), low enough
// that a flood of stalled requests cannot grow memory without bound.
const inflightMaxDefault = 4096

// Server is the HTTP API of azyq on fasthttp.
//
// Design: a request is handled entirely on the goroutine fasthttp gives
// it, with per-request scratch (the decoder, the response buffer) taken
// from a pool, so the redemption path allocates only what the ledger keeps.
//
// Invariants:
//
//  1. Every response carries X-Request-Id; every error body repeats it.
//  2. A business outcome is answered with the status its code has in
//     codeTable and nowhere else.
//  3. Bad input is rejected before the ledger is called, so it changes
//     nothing; a 400 is never stored under an idempotency key.
//  4. An answer stored under an idempotency key is the exact byte slice
//     sent to the client: the ledger stores what Render returns, and the
//     gateway sends that same slice.
//  5. Nothing is logged that carries a token, a key or a body.
//
// The simpler design, net/http with encoding/json and a router library,
// was rejected for the hot path: it allocates a few kilobytes per request
// and reflection-decodes bodies, which alone costs more than the 5 µs the
// HTTP layer may add to a redemption.
type Server struct {
	led  *ledger.Ledger
	prog *domain.Programme
	qr   *QRKeys
	log  *slog.Logger
	met  *metrics

	settle *settlement.Settlement // see settlement.go

	// tokens holds the SHA-256 of each configured role token.
	tokens [3]struct {
		role role
		hash [32]byte
		set  bool
	}

	ridPrefix [ridPrefixLen]byte
	ridSeq    atomic.Uint64

	inflight    atomic.Int64
	inflightMax int64
	ready       atomic.Bool

	limits    Limits           // with defaults applied
	limiter   *terminalLimiter // nil when terminals are not rate limited
	qrRotator *qrRotator

	http  *fasthttp.Server
	calls sync.Pool
}

const ridPrefixLen = 8

// New builds a server; call Serve to start it and SetReady once the API
// should accept requests.
func New(cfg Config) (*Server, error) {
	if cfg.Ledger == nil || cfg.QR == nil {
		return nil, errors.New("cannot build gateway: Ledger and QR are required")
	}
	s := &Server{
		led: cfg.Ledger, prog: cfg.Ledger.Programme(), qr: cfg.QR, log: cfg.Logger,
		inflightMax: int64(cfg.InflightMax),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.inflightMax <= 0 {
		s.inflightMax = inflightMaxDefault
	}

	toks := []struct {
		r   role
		tok string
	}{{roleAdmin, cfg.AdminToken}, {roleWallet, cfg.WalletToken}, {roleSettlement, cfg.SettlementToken}}
	for i, t := range toks {
		s.tokens[i].role = t.r
		if t.tok == "" {
			continue
		}
		for j := range i {
			if toks[j].tok == t.tok {
				return nil, fmt.Errorf("cannot build gateway: the %s and %s tokens are the same", toks[j].r, t.r)
			}
		}
		s.tokens[i].hash, s.tokens[i].set = sha256.Sum256([]byte(t.tok)), true
	}

	var seed [ridPrefixLen]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("cannot seed request ids: %w", err)
	}
	for i, b := range seed {
		s.ridPrefix[i] = crockford[b&31]
	}

	// The server exists before any collector is registered: the operations
	// listener may scrape the registry while New runs.
	s.limits = cfg.Limits.withDefaults()
	s.http = &fasthttp.Server{
		Handler:               s.handle,
		ErrorHandler:          s.handleParseError,
		HeaderReceived:        headerReceived,
		Name:                  "azyq",
		MaxRequestBodySize:    issuanceBodyMax,
		ReadTimeout:           s.limits.ReadTimeout,
		WriteTimeout:          s.limits.WriteTimeout,
		IdleTimeout:           s.limits.IdleTimeout,
		Concurrency:           s.limits.ConnectionsMax,
		MaxConnsPerIP:         s.limits.ConnectionsPerIPMax,
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		CloseOnShutdown:       true,
		Logger:                fasthttpLogger{s.log},
	}

	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	met, err := newMetrics(reg, s)
	if err != nil {
		return nil, err
	}
	s.met = met
	if err := s.initSettlement(cfg.Settlement, reg); err != nil {
		return nil, err
	}

	s.calls.New = func() any {
		c := &call{s: s, buf: make([]byte, 0, 1024)}
		c.renderRedemptionFn, c.renderRefundFn = c.renderRedemption, c.renderRefund
		return c
	}
	if s.limits.TerminalRate > 0 {
		s.limiter = newTerminalLimiter(s.limits.TerminalRate, s.limits.TerminalBurst, cfg.Ledger.Now)
	}
	rejectedConns := func() float64 { return float64(s.http.GetRejectedConnectionsCount()) }
	for _, c := range s.limits.collectors(s.limiter, rejectedConns) {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("cannot register the limit metrics: %w", err)
		}
	}
	s.qrRotator = newQRRotator(cfg.QR, cfg.QRKeyStore, cfg.Ledger.Now, s.log)
	if cfg.QRKeyStore != nil {
		if err := s.qrRotator.start(); err != nil {
			return nil, err
		}
	}

	return s, nil
}

// Serve serves the API on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.http.Serve(ln) }

// SetReady opens (or closes) the API: until it is set, and again once
// shutdown begins, every API request is answered 503 unavailable.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Ready reports whether the API accepts requests: set ready and the
// ledger still serving.
func (s *Server) Ready() bool { return s.ready.Load() && s.led.Err() == nil }

// Shutdown stops accepting connections, closes idle ones and waits for
// in-flight requests to finish, or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.SetReady(false)
	return s.http.ShutdownWithContext(ctx)
}

// call is the state of one API request; pooled.
type call struct {
	s      *Server
	ctx    *fasthttp.RequestCtx
	route  *route
	id     routeID
	params [paramsMax][]byte
	status int

	who      role
	terminal ledger.Terminal // set when who is roleTerminal

	ridBuf [ridPrefixLen + 1 + 13]byte
	rid    []byte

	parser fastjson.Parser
	buf    []byte // response scratch

	// The money path's request and renderers, kept with the call so that
	// neither is allocated per request. rendered is the status of what a
	// renderer put in buf, zero when none ran.
	redeem             ledger.RedeemRequest
	rendered           int
	renderRedemptionFn func(*ledger.Redemption, *ledger.Refusal) ledger.Response
	renderRefundFn     func(*ledger.Refund, *ledger.Refusal) ledger.Response
}

// unmatched labels requests that match no route.
var unmatched = &route{pattern: "unmatched"}

func (s *Server) getCall(ctx *fasthttp.RequestCtx) *call {
	c := s.calls.Get().(*call)
	c.ctx, c.route, c.id, c.status, c.who = ctx, unmatched, routeUnmatched, 0, roleNone
	c.params = [paramsMax][]byte{}
	c.terminal = ledger.Terminal{}
	c.rid = s.appendRequestID(c.ridBuf[:0])
	return c
}

func (s *Server) putCall(c *call) {
	c.ctx = nil
	c.params = [paramsMax][]byte{}
	if cap(c.buf) > 64<<10 {
		c.buf = make([]byte, 0, 1024)
	}
	s.calls.Put(c)
}

// appendRequestID appends a fresh request id: the server's random prefix,
// '-', and a counter in base 32.
func (s *Server) appendRequestID(b []byte) []byte {
	b = append(b, s.ridPrefix[:]...)
	b = append(b, '-')
	return strconv.AppendUint(b, s.ridSeq.Add(1), 32)
}

var headerRequestID = []byte("X-Request-Id")

// handle is fasthttp's handler for the API.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	c := s.getCall(ctx)
	ctx.Response.Header.SetCanonical(headerRequestID, c.rid)
	s.route(c)
	s.met.observe(c.id, c.status, time.Since(start))
	s.putCall(c)
}

// route authenticates and dispatches one request.
func (s *Server) route(c *call) {
	ctx := c.ctx
	r, params, found := match(ctx.Method(), ctx.Path())
	if r == nil {
		if found {
			ctx.Response.Header.Set("Allow", allowed(ctx.Path()))
			c.failf(codeMethodNotAllowed, "method %s is not allowed on %s", ctx.Method(), ctx.Path())
			return
		}
		c.failf(codeNotFound, "no endpoint %s %s", ctx.Method(), ctx.Path())
		return
	}
	c.route, c.params = r, params
	c.id = r.id

	if !s.authenticate(c) {
		c.fail(codeUnauthenticated, "missing or unknown bearer token (Authorization: Bearer <token>)")
		return
	}
	if !r.roles.has(c.who) {
		c.failf(codeForbidden, "the %s role may not call %s %s", c.who, r.method, r.pattern)
		return
	}
	if !s.Ready() {
		c.fail(codeUnavailable, "the gateway is starting, recovering or shutting down; retry later")
		return
	}
	if c.who == roleTerminal && s.limiter != nil {
		if ok, wait := s.limiter.allow(c.terminal.ID); !ok {
			c.failf(codeRateLimited, "terminal %q sends more than %g requests a second; retry after the Retry-After seconds",
				c.terminal.ID, s.limits.TerminalRate)
			c.ctx.Response.Header.Set("Retry-After", retryAfterSeconds(wait))
			return
		}
	}
	if n := s.inflight.Add(1); n > s.inflightMax {
		s.inflight.Add(-1)
		s.met.limitRejected.Inc()
		c.failf(codeRateLimited, "more than %d requests are being served; retry after a second", s.inflightMax)
		return
	}
	r.serve(c)
	s.inflight.Add(-1)
}

// authenticate finds the caller's role from the bearer token. Role tokens
// are compared by their SHA-256 in constant time, all three every time;
// terminal keys are looked up by their SHA-256, which is all the ledger
// keeps of them.
func (s *Server) authenticate(c *call) bool {
	tok, ok := bearer(c.ctx.Request.Header.Peek("Authorization"))
	if !ok {
		return false
	}
	h := sha256.Sum256(tok)
	found := roleNone
	for i := range s.tokens {
		t := &s.tokens[i]
		if subtle.ConstantTimeCompare(t.hash[:], h[:])&boolInt(t.set) == 1 {
			found = t.role
		}
	}
	if found != roleNone {
		c.who = found
		return true
	}
	t, ok := s.led.TerminalByKey(h)
	if !ok {
		return false
	}
	c.who, c.terminal = roleTerminal, t
	return true
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// bearer extracts the token of an "Authorization: Bearer <token>" header;
// the scheme is case-insensitive.
func bearer(h []byte) ([]byte, bool) {
	const scheme = "bearer "
	if len(h) <= len(scheme) {
		return nil, false
	}
	for i := range len(scheme) {
		c := h[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != scheme[i] {
			return nil, false
		}
	}
	tok := h[len(scheme):]
	for len(tok) > 0 && tok[0] == ' ' {
		tok = tok[1:]
	}
	return tok, len(tok) > 0 && len(tok) <= tokenMax
}

// tokenMax bounds a bearer token; longer ones cannot be ours.
const tokenMax = 512

// headerReceived sets the body limit of a request from its path, before
// the body is read: fasthttp then refuses a larger declared length without
// reading it, and stops reading a chunked body at the limit.
func headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	uri := h.RequestURI()
	for i, c := range uri {
		if c == '?' {
			uri = uri[:i]
			break
		}
	}
	if string(uri) == "/v1/issuances" {
		return fasthttp.RequestConfig{MaxRequestBodySize: issuanceBodyMax}
	}
	return fasthttp.RequestConfig{MaxRequestBodySize: bodyMax}
}

// handleParseError answers requests fasthttp could not read: a body over
// its limit, or malformed HTTP.
func (s *Server) handleParseError(ctx *fasthttp.RequestCtx, err error) {
	var ridBuf [ridPrefixLen + 1 + 13]byte
	rid := s.appendRequestID(ridBuf[:0])
	ctx.Response.Header.SetCanonical(headerRequestID, rid)
	id := routeUnmatched
	if r, _, _ := match(ctx.Method(), ctx.Path()); r != nil {
		id = r.id
	}
	code := codeInvalidRequest
	msg := "cannot read the HTTP request"
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		code = codeBodyTooLarge
		msg = fmt.Sprintf("the body is larger than %d bytes (16 MiB for /v1/issuances, 64 KiB elsewhere)",
			headerReceived(&ctx.Request.Header).MaxRequestBodySize)
	}
	replyRaw(ctx, code, msg, rid)
	s.met.observe(id, code.Status(), 0)
}

func isUnavailable(err error) bool { return errors.Is(err, ledger.ErrUnavailable) }

// fasthttpLogger sends fasthttp's rare messages to slog at debug level;
// they are connection-level noise (resets, timeouts).
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "component", "fasthttp")
}
