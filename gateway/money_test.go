package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReplay protects the idempotency contract: the same key and body get
// the first answer back byte for byte (declines included, the first
// request_id kept) with Idempotent-Replayed and a new X-Request-Id, after
// the token expired and after a restart; nothing moves twice.
func TestReplay(t *testing.T) {
	e := newEnv(t)
	term := e.shop("S1", "T1", 1000)
	id := e.voucher("F-1", 1) // 432,500

	type sent struct {
		path, body, key string
		first           *resp
	}
	var all []*sent
	send := func(path, body string) *sent {
		s := &sent{path: path, body: body, key: newKey()}
		s.first = e.do("POST", path, term, body, "Idempotency-Key", s.key)
		all = append(all, s)
		return s
	}
	approved := send("/v1/redemptions", fmt.Sprintf(`{"qr":%q,"amount":100000}`, e.qr(id)))
	e.expect(approved.first, 201, "")
	declined := send("/v1/redemptions", fmt.Sprintf(`{"qr":%q,"amount":999999}`, e.qr(id)))
	e.expect(declined.first, 402, "insufficient_funds")
	garbled := send("/v1/redemptions", `{"qr":"NOT-A-TOKEN","amount":1}`)
	e.expect(garbled.first, 402, "qr_invalid")
	stale := e.qr(id)
	e.clock.add(3 * time.Minute)
	expired := send("/v1/redemptions", fmt.Sprintf(`{"qr":%q,"amount":1}`, stale))
	e.expect(expired.first, 402, "qr_expired")
	var red redemptionOut
	approved.first.decode(t, &red)
	refund := send("/v1/redemptions/"+red.RedemptionID+"/refunds", `{"amount":40000}`)
	e.expect(refund.first, 201, "")
	overRefund := send("/v1/redemptions/"+red.RedemptionID+"/refunds", `{"amount":70000}`)
	e.expect(overRefund.first, 422, "refund_exceeds_redemption")

	replayAll := func(when string) {
		t.Helper()
		for _, s := range all {
			r := e.do("POST", s.path, term, s.body, "Idempotency-Key", s.key)
			if r.status != s.first.status || !bytes.Equal(r.body, s.first.body) {
				t.Fatalf("%s: replay of %s gave %s, first %s", when, s.key, r, s.first)
			}
			if r.header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("%s: replay without Idempotent-Replayed", when)
			}
			if r.header.Get("X-Request-Id") == s.first.header.Get("X-Request-Id") {
				t.Fatalf("%s: replay reused the X-Request-Id header", when)
			}
			if s.first.header.Get("Idempotent-Replayed") != "" {
				t.Fatalf("first answer marked as replayed")
			}
		}
	}
	// The approval's token has expired by now; the replay still wins.
	replayAll("after expiry")
	if got := e.balance(id); got != 432_500-100_000+40_000 {
		t.Fatalf("balance %d after replays", got)
	}
	e.restart()
	replayAll("after restart")
	if got := e.balance(id); got != 432_500-100_000+40_000 {
		t.Fatalf("balance %d after restart and replays", got)
	}

	// Another body under a used key is refused; the same key from another
	// terminal is another key.
	r := e.do("POST", approved.path, term, strings.Replace(approved.body, "100000", "100001", 1), "Idempotency-Key", approved.key)
	e.expect(r, 409, "idempotency_key_reused")
	other := e.shop("S1", "T9", 1000)
	r = e.do("POST", approved.path, other, approved.body, "Idempotency-Key", approved.key)
	e.expect(r, 402, "qr_expired")
	if err := e.led.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestDoubleSpend sends many concurrent redemptions against one voucher:
// the same token is approved once, and with many tokens the approvals never
// sum above the face value and always equal face value minus balance.
func TestDoubleSpend(t *testing.T) {
	e := newEnv(t)
	term := e.shop("S1", "T1", 0)
	id := e.voucher("F-1", 1) // 432,500
	const workers = 32

	// One token, many tills.
	qr := e.qr(id)
	var mu sync.Mutex
	var wg sync.WaitGroup
	codes := map[int]int{}
	for range workers {
		wg.Go(func() {
			r := e.redeem(term, qr, 10_000)
			mu.Lock()
			codes[r.status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[201] != 1 || codes[402] != workers-1 {
		t.Fatalf("one token, %d redemptions: %v", workers, codes)
	}

	// Many tokens, more demand than balance.
	tokens := make([]string, workers)
	for i := range tokens {
		tokens[i] = e.qr(id)
	}
	var approved int64
	for i := range workers {
		wg.Go(func() {
			r := e.redeem(term, tokens[i], 50_000)
			if r.status == 201 {
				var out redemptionOut
				json.Unmarshal(r.body, &out)
				mu.Lock()
				approved += out.Approved
				mu.Unlock()
			} else if r.code() != "insufficient_funds" {
				t.Errorf("unexpected answer %s", r)
			}
		})
	}
	wg.Wait()
	balance := e.balance(id)
	spent := 432_500 - balance
	if approved+10_000 != spent || spent > 432_500 || balance < 0 || approved != 400_000 {
		t.Fatalf("approved %d + 10000, balance %d of 432500", approved, balance)
	}
	if err := e.led.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestMalformed sends bad input of every kind: each gets its documented
// 4xx, never a 5xx, and no balance, shop or terminal changes.
func TestMalformed(t *testing.T) {
	e := newEnv(t)
	term := e.shop("S1", "T1", 1000)
	id := e.voucher("F-1", 1)
	qr := e.qr(id)
	books := e.led.Books()

	red := func(body string) string { return strings.ReplaceAll(body, "QR", qr) }
	lines := func(n int) string {
		ls := make([]string, n)
		for i := range ls {
			ls[i] = `{"sku":"1","category":"sugar","amount":100}`
		}
		return red(`{"qr":"QR","lines":[` + strings.Join(ls, ",") + `]}`)
	}
	families := func(n int) string {
		var b strings.Builder
		b.WriteString(`{"month":"2026-12","families":[`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"family_id":"X%d","members":1}`, i)
		}
		b.WriteString("]}")
		return b.String()
	}
	store := func(field, value string) string {
		var m map[string]any
		json.Unmarshal([]byte(shopBody(1000)), &m)
		if value == "" {
			delete(m, field)
		} else {
			var v any
			if err := json.Unmarshal([]byte(value), &v); err != nil {
				panic(err)
			}
			m[field] = v
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	key := func() []string { return []string{"Idempotency-Key", newKey()} }

	cases := []struct {
		name, method, path, token, body string
		hdr                             []string
		status                          int
		code                            string
	}{
		{"not JSON", "POST", "/v1/redemptions", term, `{"qr":`, key(), 400, "invalid_request"},
		{"array", "POST", "/v1/redemptions", term, `[]`, key(), 400, "invalid_request"},
		{"string", "POST", "/v1/redemptions", term, `"x"`, key(), 400, "invalid_request"},
		{"empty body", "POST", "/v1/redemptions", term, ``, key(), 400, "invalid_request"},
		{"qr a number", "POST", "/v1/redemptions", term, `{"qr":1,"amount":1}`, key(), 400, "invalid_request"},
		{"amount a string", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":"100"}`), key(), 400, "invalid_request"},
		{"unknown field", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":100,"tip":1}`), key(), 400, "invalid_request"},
		{"field case", "POST", "/v1/redemptions", term, red(`{"qr":"QR","Amount":100}`), key(), 400, "invalid_request"},
		{"duplicate field", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1,"amount":2}`), key(), 400, "invalid_request"},
		{"trailing object", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":100} {}`), key(), 400, "invalid_request"},
		{"trailing garbage", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":100}x`), key(), 400, "invalid_request"},
		{"zero amount", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":0}`), key(), 400, "invalid_request"},
		{"negative amount", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":-5}`), key(), 400, "invalid_request"},
		{"huge amount", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1000000000000001}`), key(), 400, "invalid_request"},
		{"int64 overflow", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":99999999999999999999}`), key(), 400, "invalid_request"},
		{"float amount", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":100.5}`), key(), 400, "invalid_request"},
		{"integral float", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":100.0}`), key(), 400, "invalid_request"},
		{"exponent", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1e3}`), key(), 400, "invalid_request"},
		{"NaN", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":NaN}`), key(), 400, "invalid_request"},
		{"leading zero", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":0100}`), key(), 400, "invalid_request"},
		{"both amount and lines", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1,"lines":[{"category":"sugar","amount":1}]}`), key(), 400, "invalid_request"},
		{"neither amount nor lines", "POST", "/v1/redemptions", term, red(`{"qr":"QR"}`), key(), 400, "invalid_request"},
		{"no qr", "POST", "/v1/redemptions", term, `{"amount":1}`, key(), 400, "invalid_request"},
		{"empty lines", "POST", "/v1/redemptions", term, red(`{"qr":"QR","lines":[]}`), key(), 400, "invalid_request"},
		{"201 lines", "POST", "/v1/redemptions", term, lines(201), key(), 400, "invalid_request"},
		{"negative line", "POST", "/v1/redemptions", term, red(`{"qr":"QR","lines":[{"category":"sugar","amount":-1}]}`), key(), 400, "invalid_request"},
		{"line unknown field", "POST", "/v1/redemptions", term, red(`{"qr":"QR","lines":[{"category":"sugar","amount":1,"price":1}]}`), key(), 400, "invalid_request"},
		{"line without amount", "POST", "/v1/redemptions", term, red(`{"qr":"QR","lines":[{"category":"sugar"}]}`), key(), 400, "invalid_request"},
		{"line not an object", "POST", "/v1/redemptions", term, red(`{"qr":"QR","lines":[5]}`), key(), 400, "invalid_request"},
		{"partial a string", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1,"partial":"yes"}`), key(), 400, "invalid_request"},
		{"control character", "POST", "/v1/redemptions", term, red("{\"qr\":\"QR\",\"lines\":[{\"sku\":\"a\x01\",\"category\":\"sugar\",\"amount\":1}]}"), key(), 400, "invalid_request"},
		{"bad escape", "POST", "/v1/redemptions", term, red(`{"qr":"QR","lines":[{"sku":"\q","category":"sugar","amount":1}]}`), key(), 400, "invalid_request"},
		{"no key", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1}`), nil, 400, "idempotency_key_missing"},
		{"empty key", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1}`), []string{"Idempotency-Key", ""}, 400, "invalid_request"},
		{"long key", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1}`), []string{"Idempotency-Key", strings.Repeat("k", 256)}, 400, "invalid_request"},
		{"non-ASCII key", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1}`), []string{"Idempotency-Key", "ключ"}, 400, "invalid_request"},
		{"tab in key", "POST", "/v1/redemptions", term, red(`{"qr":"QR","amount":1}`), []string{"Idempotency-Key", "a\tb"}, 400, "invalid_request"},
		{"garbled token", "POST", "/v1/redemptions", term, `{"qr":"garbage","amount":1}`, key(), 402, "qr_invalid"},
		{"tampered token", "POST", "/v1/redemptions", term, fmt.Sprintf(`{"qr":%q,"amount":1}`, tamper(qr, 12)), key(), 402, "qr_invalid"},
		{"no bearer", "POST", "/v1/redemptions", "", red(`{"qr":"QR","amount":1}`), key(), 401, "unauthenticated"},
		{"unknown bearer", "POST", "/v1/redemptions", "azk_nope", red(`{"qr":"QR","amount":1}`), key(), 401, "unauthenticated"},
		{"wrong role", "POST", "/v1/redemptions", walletTok, red(`{"qr":"QR","amount":1}`), key(), 403, "forbidden"},
		{"oversized", "POST", "/v1/redemptions", term, `{"qr":"` + strings.Repeat("A", bodyMax) + `"}`, key(), 413, "body_too_large"},
		{"oversized balance", "POST", "/v1/balance-inquiries", term, strings.Repeat(" ", bodyMax+1), nil, 413, "body_too_large"},
		{"refund zero", "POST", "/v1/redemptions/RD0000000000001/refunds", term, `{"amount":0}`, key(), 400, "invalid_request"},
		{"refund float", "POST", "/v1/redemptions/RD0000000000001/refunds", term, `{"amount":1.5}`, key(), 400, "invalid_request"},
		{"refund bad id", "POST", "/v1/redemptions/RDX/refunds", term, `{"amount":1}`, key(), 404, "not_found"},
		{"balance no qr", "POST", "/v1/balance-inquiries", term, `{}`, nil, 400, "invalid_request"},
		{"balance unknown field", "POST", "/v1/balance-inquiries", term, red(`{"qr":"QR","x":1}`), nil, 400, "invalid_request"},
		{"bad IBAN", "PUT", "/v1/stores/S1", adminTok, store("iban", `"KZ00125KZT0000012345"`), nil, 400, "invalid_request"},
		{"bad BIN", "PUT", "/v1/stores/S1", adminTok, store("bin", `"260140001230"`), nil, 400, "invalid_request"},
		{"BIN a number", "PUT", "/v1/stores/S1", adminTok, store("bin", `260140001231`), nil, 400, "invalid_request"},
		{"bad BIC", "PUT", "/v1/stores/S1", adminTok, store("bank_bic", `"HSBKKZ"`), nil, 400, "invalid_request"},
		{"discount above cap", "PUT", "/v1/stores/S1", adminTok, store("discount_bp", `1501`), nil, 400, "invalid_request"},
		{"negative discount", "PUT", "/v1/stores/S1", adminTok, store("discount_bp", `-1`), nil, 400, "invalid_request"},
		{"no name", "PUT", "/v1/stores/S1", adminTok, store("name", ``), nil, 400, "invalid_request"},
		{"other store_id", "PUT", "/v1/stores/S1", adminTok, store("store_id", `"S2"`), nil, 400, "invalid_request"},
		{"bad store id", "PUT", "/v1/stores/S%20X", adminTok, shopBody(0), nil, 400, "invalid_request"},
		{"bad terminal id", "POST", "/v1/stores/S1/terminals", adminTok, `{"terminal_id":"a b"}`, nil, 400, "invalid_request"},
		{"terminal of no store", "POST", "/v1/stores/S404/terminals", adminTok, `{"terminal_id":"T404"}`, nil, 404, "not_found"},
		{"zero members", "POST", "/v1/issuances", adminTok, `{"month":"2026-12","families":[{"family_id":"Z","members":0}]}`, nil, 400, "invalid_request"},
		{"31 members", "POST", "/v1/issuances", adminTok, `{"month":"2026-12","families":[{"family_id":"Z","members":31}]}`, nil, 400, "invalid_request"},
		{"bad family id", "POST", "/v1/issuances", adminTok, `{"month":"2026-12","families":[{"family_id":"a b","members":1}]}`, nil, 400, "invalid_request"},
		{"long family id", "POST", "/v1/issuances", adminTok, `{"month":"2026-12","families":[{"family_id":"` + strings.Repeat("f", 65) + `","members":1}]}`, nil, 400, "invalid_request"},
		{"bad month", "POST", "/v1/issuances", adminTok, `{"month":"2026-13","families":[{"family_id":"Z","members":1}]}`, nil, 400, "invalid_request"},
		{"no families", "POST", "/v1/issuances", adminTok, `{"month":"2026-12","families":[]}`, nil, 400, "invalid_request"},
		{"100001 families", "POST", "/v1/issuances", adminTok, families(100_001), nil, 400, "invalid_request"},
		{"bad family among good", "POST", "/v1/issuances", adminTok, `{"month":"2026-12","families":[{"family_id":"G","members":1},{"family_id":"H","members":99}]}`, nil, 400, "invalid_request"},
		{"consent a string", "POST", "/v1/vouchers/" + id + "/activation", walletTok, `{"consent":"yes"}`, nil, 400, "invalid_request"},
		{"activation unknown field", "POST", "/v1/vouchers/" + id + "/activation", walletTok, `{"consent":true,"x":1}`, nil, 400, "invalid_request"},
		{"qr mint with a body", "POST", "/v1/vouchers/" + id + "/qr", walletTok, `{"amount":1}`, nil, 400, "invalid_request"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sub := *e
			sub.t = t
			r := sub.do(c.method, c.path, c.token, c.body, c.hdr...)
			if r.status != c.status || r.code() != c.code {
				t.Fatalf("got %d %.300s, want %d %s", r.status, r.body, c.status, c.code)
			}
		})
	}

	// Bodies over the limit are refused on their declared length, before
	// a byte of them is read, and as they stream when chunked.
	for _, c := range []struct{ path, token string }{
		{"/v1/issuances", adminTok}, {"/v1/redemptions", term},
	} {
		limit := bodyMax
		if c.path == "/v1/issuances" {
			limit = issuanceBodyMax
		}
		head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nIdempotency-Key: k\r\n", c.path, c.token)
		status, body := rawRequest(t, e.base, head+fmt.Sprintf("Content-Length: %d\r\n\r\n", limit+1), nil)
		if status != 413 || !strings.Contains(body, `"body_too_large"`) {
			t.Fatalf("%s with a declared length over the limit: %d %s", c.path, status, body)
		}
		status, body = rawRequest(t, e.base, head+"Transfer-Encoding: chunked\r\n\r\n", func(w io.Writer) {
			chunk := fmt.Sprintf("%x\r\n%s\r\n", 32<<10, strings.Repeat(" ", 32<<10))
			for range limit/(32<<10) + 2 {
				if _, err := io.WriteString(w, chunk); err != nil {
					return
				}
			}
		})
		if status != 413 || !strings.Contains(body, `"body_too_large"`) {
			t.Fatalf("%s with a chunked body over the limit: %d %s", c.path, status, body)
		}
	}

	after := e.led.Books()
	if fmt.Sprint(after) != fmt.Sprint(books) {
		t.Fatalf("books changed:\nbefore %+v\nafter  %+v", books, after)
	}
	if n := len(e.led.Stores()); n != 1 {
		t.Fatalf("%d stores after bad input", n)
	}
	if n := len(e.led.Terminals()); n != 1 {
		t.Fatalf("%d terminals after bad input", n)
	}
	// The token survived all of it.
	e.expect(e.redeem(term, qr, 1000), 201, "")
}

// tamper changes one character of a token to another of the alphabet.
func tamper(tok string, i int) string {
	b := []byte(tok)
	if b[i] == '0' {
		b[i] = '1'
	} else {
		b[i] = '0'
	}
	return string(b)
}

// TestRandomBodies throws random mutations of a valid redemption body at
// the server: whatever it gets, it answers a 4xx or a 201 (a mutation that
// is still valid), never a 5xx. The seed is printed; set GATEWAY_SEED to
// replay it.
func TestRandomBodies(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("GATEWAY_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (GATEWAY_SEED=%d to replay)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	e := newEnv(t)
	term := e.shop("S1", "T1", 1000)
	id := e.voucher("F-1", 30)
	base := fmt.Sprintf(`{"qr":%q,"partial":true,"lines":[{"sku":"1","category":"sugar","amount":100}]}`, e.qr(id))
	const alphabet = `{}[]",:0123456789-.eE \tnulltruefalse\\qr"amount"lines"sku"`
	for range 300 {
		b := []byte(base)
		for range 1 + rng.IntN(4) {
			i := rng.IntN(len(b))
			switch rng.IntN(3) {
			case 0:
				b[i] = alphabet[rng.IntN(len(alphabet))]
			case 1:
				b = append(b[:i], b[i+1:]...)
			case 2:
				b = append(b[:i], append([]byte{alphabet[rng.IntN(len(alphabet))]}, b[i:]...)...)
			}
		}
		r := e.do("POST", "/v1/redemptions", term, string(b), "Idempotency-Key", newKey())
		if r.status >= 500 || r.status < 200 || r.status == 200 || r.status > 201 && r.status < 400 {
			t.Fatalf("seed %d: body %q got %s", seed, b, r)
		}
	}
	if err := e.led.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// rawRequest writes a request by hand (head, then what body writes) and
// reads the status and body of the answer.
func rawRequest(t *testing.T, base, head string, body func(io.Writer)) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	if body != nil {
		go body(conn)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("cannot read the answer: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}
