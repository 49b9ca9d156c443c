package gateway

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"azyq/domain"
)

// redemptionOut is the contract's redemption body; decoding it with
// unknown fields disallowed pins the field set.
type redemptionOut struct {
	RedemptionID string    `json:"redemption_id"`
	VoucherID    string    `json:"voucher_id"`
	StoreID      string    `json:"store_id"`
	TerminalID   string    `json:"terminal_id"`
	Status       string    `json:"status"`
	Requested    int64     `json:"requested"`
	Approved     int64     `json:"approved"`
	Balance      int64     `json:"balance"`
	CreatedAt    string    `json:"created_at"`
	Lines        []lineOut `json:"lines"`
	Refunded     *int64    `json:"refunded"`
}

type lineOut struct {
	SKU      string `json:"sku"`
	Category string `json:"category"`
	Amount   int64  `json:"amount"`
	Eligible bool   `json:"eligible"`
	Discount int64  `json:"discount"`
	Payable  int64  `json:"payable"`
	Covered  int64  `json:"covered"`
}

type voucherOut struct {
	VoucherID   string  `json:"voucher_id"`
	FamilyID    string  `json:"family_id"`
	Month       string  `json:"month"`
	Members     int     `json:"members"`
	City        string  `json:"city"`
	FaceValue   int64   `json:"face_value"`
	Balance     int64   `json:"balance"`
	Status      string  `json:"status"`
	ActivatedAt *string `json:"activated_at"`
	ExpiresAt   string  `json:"expires_at"`
}

// TestLifecycle walks the whole API once, as a shop, the wallet and the
// operator would: shop and till, issuance (twice), activation, QR, balance
// inquiry, redemptions by amount and by basket, reading a redemption back,
// a refund and the catalogue with its ETag.
func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	term := e.shop("S1", "T1", 1000)

	// Issuance is idempotent per (month, family), member count included.
	body := `{"month":"2026-12","families":[{"family_id":"F-000123","members":4,"city":"Pavlodar"}]}`
	r := e.do("POST", "/v1/issuances", adminTok, body)
	e.expect(r, 200, "")
	type issued struct {
		Month    string `json:"month"`
		Created  int    `json:"created"`
		Existing int    `json:"existing"`
		Vouchers []struct {
			FamilyID  string `json:"family_id"`
			VoucherID string `json:"voucher_id"`
			FaceValue int64  `json:"face_value"`
			Status    string `json:"status"`
			Created   bool   `json:"created"`
		} `json:"vouchers"`
	}
	var is issued
	r.decode(t, &is)
	if is.Created != 1 || is.Existing != 0 || is.Vouchers[0].FaceValue != 1_730_000 ||
		is.Vouchers[0].Status != "issued" || !is.Vouchers[0].Created {
		t.Fatalf("issuance: %s", r)
	}
	id := is.Vouchers[0].VoucherID
	r = e.do("POST", "/v1/issuances", adminTok, strings.Replace(body, `"members":4`, `"members":5`, 1))
	var again issued
	r.decode(t, &again)
	if again.Created != 0 || again.Existing != 1 || again.Vouchers[0].VoucherID != id ||
		again.Vouchers[0].FaceValue != 1_730_000 || again.Vouchers[0].Created {
		t.Fatalf("second issuance: %s", r)
	}

	// The voucher before and after activation.
	var v voucherOut
	e.do("GET", "/v1/vouchers/"+id, adminTok, "").decode(t, &v)
	if v.Status != "issued" || v.ActivatedAt != nil || v.ExpiresAt != "2027-01-01T00:00:00+05:00" {
		t.Fatalf("issued voucher: %+v", v)
	}
	r = e.do("POST", "/v1/vouchers/"+id+"/activation", walletTok, `{"consent":true}`)
	e.expect(r, 200, "")
	r.decode(t, &v)
	if v.Status != "active" || v.ActivatedAt == nil || *v.ActivatedAt != "2026-12-03T10:00:00+05:00" ||
		v.FamilyID != "F-000123" || v.Members != 4 || v.City != "Pavlodar" || v.Month != "2026-12" {
		t.Fatalf("activated voucher: %s", r)
	}
	e.expect(e.do("POST", "/v1/vouchers/"+id+"/activation", walletTok, `{"consent":true}`), 200, "")

	// A QR token, a balance inquiry (which does not consume it), and a
	// redemption by amount.
	qr := e.qr(id)
	if len(qr) > 96 || strings.Trim(qr, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ$%*+-./:") != "" {
		t.Fatalf("token %q is not QR alphanumeric of at most 96 characters", qr)
	}
	r = e.do("POST", "/v1/balance-inquiries", term, fmt.Sprintf(`{"qr":%q}`, qr))
	e.expect(r, 200, "")
	var bal struct {
		VoucherID string `json:"voucher_id"`
		Balance   int64  `json:"balance"`
		Status    string `json:"status"`
		ExpiresAt string `json:"expires_at"`
	}
	r.decode(t, &bal)
	if bal.VoucherID != id || bal.Balance != 1_730_000 || bal.Status != "active" {
		t.Fatalf("balance inquiry: %s", r)
	}
	r = e.redeem(term, qr, 180_000)
	e.expect(r, 201, "")
	var red redemptionOut
	r.decode(t, &red)
	if red.Approved != 180_000 || red.Requested != 180_000 || red.Balance != 1_550_000 ||
		red.Status != "approved" || red.StoreID != "S1" || red.TerminalID != "T1" ||
		red.VoucherID != id || red.Lines != nil || red.Refunded != nil ||
		red.CreatedAt != "2026-12-03T10:00:00+05:00" {
		t.Fatalf("redemption: %s", r)
	}
	e.expect(e.redeem(term, qr, 1), 402, "qr_used")

	// A basket: the contract's example, priced with the shop's 10 %.
	basket := `{"qr":%q,"partial":true,"lines":[
		{"sku":"4870001234567","category":"sugar","amount":98000},
		{"sku":"4870009999999","category":"","amount":55000}]}`
	r = e.do("POST", "/v1/redemptions", term, fmt.Sprintf(basket, e.qr(id)), "Idempotency-Key", newKey())
	e.expect(r, 201, "")
	var byLines redemptionOut
	r.decode(t, &byLines)
	want := []lineOut{
		{"4870001234567", "sugar", 98000, true, 9800, 88200, 88200},
		{"4870009999999", "", 55000, false, 0, 55000, 0},
	}
	if fmt.Sprint(byLines.Lines) != fmt.Sprint(want) || byLines.Requested != 88200 ||
		byLines.Approved != 88200 || byLines.Balance != 1_550_000-88200 {
		t.Fatalf("basket redemption: %s", r)
	}

	// A partial redemption above the balance takes the whole balance.
	rich := e.voucher("F-PARTIAL", 1)
	r = e.do("POST", "/v1/redemptions", term, fmt.Sprintf(`{"qr":%q,"amount":500000,"partial":true}`, e.qr(rich)),
		"Idempotency-Key", newKey())
	var part redemptionOut
	r.decode(t, &part)
	if r.status != 201 || part.Requested != 500_000 || part.Approved != 432_500 || part.Balance != 0 {
		t.Fatalf("partial redemption: %s", r)
	}

	// Reading the redemption back gives every field of its 201, plus
	// refunded; a refund goes back to the voucher.
	r = e.do("GET", "/v1/redemptions/"+red.RedemptionID, term, "")
	e.expect(r, 200, "")
	var back redemptionOut
	r.decode(t, &back)
	if back.Refunded == nil || *back.Refunded != 0 {
		t.Fatalf("redemption read back: %s", r)
	}
	back.Refunded = nil
	if fmt.Sprint(back) != fmt.Sprint(red) {
		t.Fatalf("redemption read back %+v, answered %+v", back, red)
	}
	r = e.do("POST", "/v1/redemptions/"+red.RedemptionID+"/refunds", term, `{"amount":50000}`, "Idempotency-Key", newKey())
	e.expect(r, 201, "")
	var ref struct {
		RefundID     string `json:"refund_id"`
		RedemptionID string `json:"redemption_id"`
		Amount       int64  `json:"amount"`
		CreditedTo   string `json:"credited_to"`
		Balance      int64  `json:"balance"`
		CreatedAt    string `json:"created_at"`
	}
	r.decode(t, &ref)
	if ref.Amount != 50000 || ref.CreditedTo != "voucher" || ref.Balance != 1_550_000-88200+50000 ||
		ref.RedemptionID != red.RedemptionID || ref.RefundID == "" {
		t.Fatalf("refund: %s", r)
	}
	e.do("GET", "/v1/redemptions/"+red.RedemptionID, adminTok, "").decode(t, &back)
	if *back.Refunded != 50000 || back.Approved != 180_000 {
		t.Fatalf("redemption after refund: %+v", back)
	}
	if got := e.balance(id); got != 1_550_000-88200+50000 {
		t.Fatalf("balance %d", got)
	}

	// The catalogue carries the shop's discount and an ETag.
	r = e.do("GET", "/v1/catalogue", term, "")
	e.expect(r, 200, "")
	var cat struct {
		Version    string `json:"version"`
		Categories []struct {
			Code string `json:"code"`
			Name string `json:"name"`
		} `json:"categories"`
		DiscountBP int64 `json:"discount_bp"`
	}
	r.decode(t, &cat)
	if cat.DiscountBP != 1000 || len(cat.Categories) < 27 || cat.Version == "" {
		t.Fatalf("catalogue: %s", r)
	}
	etag := r.header.Get("ETag")
	e.expect(e.do("GET", "/v1/catalogue", term, "", "If-None-Match", etag), 304, "")
	e.expect(e.do("GET", "/v1/catalogue", term, "", "If-None-Match", `"other"`), 200, "")
	if err := e.led.CheckBooks(); err != nil {
		t.Fatal(err)
	}
}

// TestErrorCodes produces every error code of the contract through HTTP,
// each with its documented status, and checks that none is missed.
func TestErrorCodes(t *testing.T) {
	prog, err := domain.ParseProgramme([]byte(`{"mrp": {"2027": 4600}}`))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, prog, Config{InflightMax: 2})
	term := e.shop("S1", "T1", 1000)
	other := e.shop("S2", "T2", 0)
	id := e.voucher("F-1", 1) // 432,500 tiyn
	seen := map[string]bool{}
	check := func(r *resp, status int, code string) {
		t.Helper()
		e.expect(r, status, code)
		var eb errBody
		if err := json.Unmarshal(r.body, &eb); err != nil || eb.Error.Message == "" ||
			eb.Error.RequestID != r.header.Get("X-Request-Id") {
			t.Fatalf("error body %s does not follow the contract (request id %q)", r.body, r.header.Get("X-Request-Id"))
		}
		if (eb.Error.Balance != nil) != (code == "insufficient_funds") {
			t.Fatalf("%s: balance present is %v", r.body, eb.Error.Balance != nil)
		}
		seen[code] = true
	}

	check(e.do("POST", "/v1/redemptions", term, `{"qr":`, "Idempotency-Key", "k"), 400, "invalid_request")
	check(e.do("POST", "/v1/vouchers/"+id+"/activation", walletTok, `{}`), 400, "consent_required")
	check(e.do("POST", "/v1/vouchers/"+id+"/activation", walletTok, `{"consent":false}`), 400, "consent_required")
	check(e.do("POST", "/v1/redemptions", term, `{"qr":"X","amount":1}`), 400, "idempotency_key_missing")
	check(e.do("GET", "/v1/catalogue", "", ""), 401, "unauthenticated")
	check(e.do("GET", "/v1/catalogue", "nope", ""), 401, "unauthenticated")
	check(e.redeem(term, "1"+strings.Repeat("0", 55), 100), 402, "qr_invalid")

	qr := e.qr(id)
	e.clock.add(2 * time.Minute)
	check(e.redeem(term, qr, 100), 402, "qr_expired")
	check(e.do("POST", "/v1/balance-inquiries", term, fmt.Sprintf(`{"qr":%q}`, qr)), 402, "qr_expired")

	qr = e.qr(id)
	e.expect(e.redeem(term, qr, 100_000), 201, "")
	check(e.redeem(term, qr, 100), 402, "qr_used")
	check(e.do("POST", "/v1/balance-inquiries", term, fmt.Sprintf(`{"qr":%q}`, qr)), 402, "qr_used")

	r := e.redeem(term, e.qr(id), 400_000)
	check(r, 402, "insufficient_funds")
	var eb errBody
	json.Unmarshal(r.body, &eb)
	if *eb.Error.Balance != 332_500 {
		t.Fatalf("insufficient_funds balance: %s", r.body)
	}
	r = e.do("POST", "/v1/redemptions", term, fmt.Sprintf(`{"qr":%q,"lines":[{"sku":"1","category":"vodka","amount":5000}]}`, e.qr(id)),
		"Idempotency-Key", newKey())
	check(r, 402, "no_eligible_items")

	// Status declines: a voucher not activated, one of a past month, and
	// an active one whose month ends while its token is still valid.
	r = e.do("POST", "/v1/issuances", adminTok, `{"month":"2026-12","families":[{"family_id":"F-2","members":1}]}`)
	e.expect(r, 200, "")
	issuedID := voucherIDOf(t, r)
	check(e.do("POST", "/v1/vouchers/"+issuedID+"/qr", walletTok, ""), 402, "voucher_not_active")
	r = e.do("POST", "/v1/issuances", adminTok, `{"month":"2026-11","families":[{"family_id":"F-3","members":1}]}`)
	pastID := voucherIDOf(t, r)
	check(e.do("POST", "/v1/vouchers/"+pastID+"/qr", walletTok, "{}"), 402, "voucher_expired")
	check(e.do("POST", "/v1/vouchers/"+pastID+"/activation", walletTok, `{"consent":true}`), 422, "activation_window_closed")
	r = e.do("POST", "/v1/issuances", adminTok, `{"month":"2027-01","families":[{"family_id":"F-4","members":1}]}`)
	check(e.do("POST", "/v1/vouchers/"+voucherIDOf(t, r)+"/activation", walletTok, `{"consent":true}`), 422, "activation_window_not_open")
	check(e.do("POST", "/v1/issuances", adminTok, `{"month":"2030-01","families":[{"family_id":"F-5","members":1}]}`), 422, "mrp_unknown")

	// Roles and other shops.
	check(e.do("POST", "/v1/redemptions", walletTok, `{}`), 403, "forbidden")
	check(e.do("POST", "/v1/settlement/cutoffs", settlementTok, ""), 403, "forbidden")
	red := e.redeem(term, e.qr(id), 1000)
	e.expect(red, 201, "")
	var out redemptionOut
	red.decode(t, &out)
	check(e.do("GET", "/v1/redemptions/"+out.RedemptionID, other, ""), 403, "forbidden")
	check(e.do("POST", "/v1/redemptions/"+out.RedemptionID+"/refunds", other, `{"amount":1}`, "Idempotency-Key", newKey()), 403, "forbidden")
	check(e.do("POST", "/v1/redemptions/"+out.RedemptionID+"/refunds", term, `{"amount":1001}`, "Idempotency-Key", newKey()), 422, "refund_exceeds_redemption")

	check(e.do("GET", "/v1/vouchers/V0000ZZZ", walletTok, ""), 404, "not_found")
	check(e.do("GET", "/v1/vouchers/nonsense", walletTok, ""), 404, "not_found")
	check(e.do("GET", "/v1/redemptions/RD00000000000ZZ", adminTok, ""), 404, "not_found")
	check(e.do("GET", "/v1/nothing", adminTok, ""), 404, "not_found")
	check(e.do("GET", "/v1/settlement/batches/B0000000001", settlementTok, ""), 404, "not_found")
	r = e.do("DELETE", "/v1/catalogue", adminTok, "")
	check(r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "GET" {
		t.Fatalf("Allow: %q", r.header.Get("Allow"))
	}
	check(e.do("POST", "/v1/stores/S1/terminals", adminTok, `{"terminal_id":"T1"}`), 409, "conflict")
	key := newKey()
	e.expect(e.do("POST", "/v1/redemptions", term, fmt.Sprintf(`{"qr":%q,"amount":5}`, e.qr(id)), "Idempotency-Key", key), 201, "")
	check(e.do("POST", "/v1/redemptions", term, fmt.Sprintf(`{"qr":%q,"amount":6}`, e.qr(id)), "Idempotency-Key", key), 409, "idempotency_key_reused")
	check(e.do("POST", "/v1/redemptions", term, `{"qr":"x","amount":1}`+strings.Repeat(" ", bodyMax), "Idempotency-Key", newKey()), 413, "body_too_large")

	// In progress and rate limited: hold two redemptions in their commit
	// (the in-flight limit is 2), then a third request is refused.
	key = newKey()
	body := fmt.Sprintf(`{"qr":%q,"amount":7}`, e.qr(id))
	body2 := fmt.Sprintf(`{"qr":%q,"amount":8}`, e.qr(id))
	e.fs.close()
	var wg sync.WaitGroup
	results := make([]*resp, 2)
	wg.Go(func() { results[0] = e.do("POST", "/v1/redemptions", term, body, "Idempotency-Key", key) })
	waitFor(t, "a commit held at the WAL sync", func() bool { return e.fs.held.Load() > 0 })
	check(e.do("POST", "/v1/redemptions", term, body, "Idempotency-Key", key), 409, "request_in_progress")
	wg.Go(func() { results[1] = e.do("POST", "/v1/redemptions", term, body2, "Idempotency-Key", newKey()) })
	waitFor(t, "two requests in flight", func() bool { return e.srv.inflight.Load() == 2 })
	r = e.do("GET", "/v1/catalogue", term, "")
	check(r, 429, "rate_limited")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	e.fs.open()
	wg.Wait()
	e.expect(results[0], 201, "")
	e.expect(results[1], 201, "")

	// A stopped ledger answers 503 and /readyz follows.
	e.led.Close()
	check(e.do("GET", "/v1/catalogue", term, ""), 503, "unavailable")
	check(e.do("GET", "/v1/vouchers/"+id, walletTok, ""), 503, "unavailable")
	if e.srv.Ready() {
		t.Fatal("ready with a closed ledger")
	}

	for c := range codeCount {
		if c != codeInternal && !seen[c.String()] {
			t.Errorf("error code %s was not produced", c)
		}
	}
}

func voucherIDOf(t testing.TB, r *resp) string {
	t.Helper()
	var out struct {
		Vouchers []struct {
			VoucherID string `json:"voucher_id"`
		} `json:"vouchers"`
	}
	if err := json.Unmarshal(r.body, &out); err != nil || len(out.Vouchers) == 0 {
		t.Fatalf("issuance: %s", r)
	}
	return out.Vouchers[0].VoucherID
}

// waitFor polls a condition that another goroutine will make true; it
// bounds the wait so a broken test fails instead of hanging.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
