package gateway

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"azyq/ledger"
)

// movableClock is a clock tests move by hand.
type movableClock struct{ ns atomic.Int64 }

func newMovableClock(t time.Time) *movableClock {
	c := &movableClock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *movableClock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *movableClock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// TestTerminalKeyRotation protects terminal key rotation through the API:
// the new key is shown once and works at once, the old one keeps working
// for the grace and is refused after it, grace 0 revokes at once, only the
// admin may rotate, a terminal of another shop is not found, and each
// rotation is in the admin log with who did it, never the keys.
func TestTerminalKeyRotation(t *testing.T) {
	clock := newMovableClock(fzNow)
	g := newFzGatewayWith(t, clock.Now, func(*Config) {})
	rotate := func(body string) (int, map[string]string) {
		status, resp := g.do("POST", "/v1/stores/S1/terminals/TS1/key", fzAdmin, "", []byte(body))
		out := map[string]string{}
		json.Unmarshal(resp, &out)
		return status, out
	}
	catalogue := func(key string) int {
		status, _ := g.do("GET", "/v1/catalogue", key, "", nil)
		return status
	}

	status, got := rotate(`{"grace_seconds":3600}`)
	if status != 200 || got["terminal_id"] != "TS1" || got["store_id"] != "S1" ||
		!strings.HasPrefix(got["api_key"], "azk_") || got["previous_key_valid_until"] == "" {
		t.Fatalf("rotation: %d %v", status, got)
	}
	newKey := got["api_key"]
	if catalogue(newKey) != 200 || catalogue(fzTermKey) != 200 {
		t.Fatal("the new key and the old one within its grace must both work")
	}
	clock.Add(time.Hour)
	if catalogue(fzTermKey) != 401 || catalogue(newKey) != 200 {
		t.Fatal("after the grace the old key must be refused and the new one work")
	}

	status, got = rotate(`{"grace_seconds":0}`)
	if status != 200 || catalogue(newKey) != 401 || catalogue(got["api_key"]) != 200 {
		t.Fatalf("a rotation with grace 0 must revoke the old key at once: %d %v", status, got)
	}
	if status, _ := rotate(``); status != 200 {
		t.Fatalf("a rotation without a body (default grace): %d", status)
	}

	for _, c := range []struct {
		method, uri, who, body string
		want                   int
	}{
		{"POST", "/v1/stores/S2/terminals/TS1/key", fzAdmin, ``, 404},
		{"POST", "/v1/stores/S1/terminals/nope/key", fzAdmin, ``, 404},
		{"POST", "/v1/stores/S1/terminals/TS1/key", fzAdmin, `{"grace_seconds":604801}`, 400},
		{"POST", "/v1/stores/S1/terminals/TS1/key", fzAdmin, `{"grace_seconds":-1}`, 400},
		{"POST", "/v1/stores/S1/terminals/TS1/key", fzAdmin, `{"grace":"1h"}`, 400},
		{"POST", "/v1/stores/S1/terminals/TS1/key", fzWallet, ``, 403},
		{"POST", "/v1/stores/S2/terminals/TS2/key", fzOtherKey, ``, 403},
		{"GET", "/v1/stores/S1/terminals/TS1/key", fzAdmin, ``, 405},
	} {
		if status, body := g.do(c.method, c.uri, c.who, "", []byte(c.body)); status != c.want {
			t.Errorf("%s %s %s: %d %s, want %d", c.method, c.uri, c.body, status, body, c.want)
		}
	}

	recs, err := g.led.AdminLog(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	rotations := 0
	for _, r := range recs {
		if r.Action != ledger.ActionTerminalKeyRotate {
			continue
		}
		rotations++
		if r.Actor.Role != "admin" || r.Actor.ID != ledger.CredentialID(fzAdmin) || r.Actor.Remote != "127.0.0.1" {
			t.Errorf("rotation recorded as done by %+v", r.Actor)
		}
		if strings.Contains(string(r.Before)+string(r.After), "azk_") {
			t.Errorf("the admin log holds a key: %s %s", r.Before, r.After)
		}
	}
	if rotations != 3 {
		t.Fatalf("%d rotations in the admin log, want 3", rotations)
	}
}

// memKeyStore is a QRKeyStore in memory that can be made to fail.
type memKeyStore struct {
	mu    sync.Mutex
	keys  []QRKey
	saves int
	fail  bool
}

func (m *memKeyStore) SaveQRKeys(keys []QRKey) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return fmt.Errorf("disk full")
	}
	m.keys = append([]QRKey(nil), keys...)
	m.saves++
	return nil
}

// TestQRKeyRotation protects QR signing key rotation with overlap: after a
// rotation the new key signs, tokens signed by the old key keep working
// until they expire, the old key is retired one QR lifetime later (and
// then verifies nothing), every change is saved before it is used, a
// failed save leaves the old key signing, and the admin log records it.
func TestQRKeyRotation(t *testing.T) {
	clock := newMovableClock(fzNow)
	store := &memKeyStore{}
	g := newFzGatewayWith(t, clock.Now, func(c *Config) { c.QRKeyStore = store })

	oldTok, _ := g.token(g.vouchers[1])
	status, body := g.do("POST", "/v1/qr-keys", fzAdmin, "", nil)
	if status != 201 {
		t.Fatalf("rotation: %d %s", status, body)
	}
	var list struct {
		Keys []qrKeyView `json:"keys"`
	}
	if err := json.Unmarshal(body, &list); err != nil || len(list.Keys) != 2 ||
		list.Keys[0].Signing || list.Keys[0].RetiresAfter == nil || !list.Keys[1].Signing {
		t.Fatalf("keys after rotation: %s", body)
	}
	if strings.Contains(string(body), "secret") {
		t.Fatalf("the key list shows secrets: %s", body)
	}
	if store.saves != 1 || len(store.keys) != 2 {
		t.Fatalf("saved %d times, %d keys", store.saves, len(store.keys))
	}
	newTok, _ := g.token(g.vouchers[1])
	if newTok[1:3] == oldTok[1:3] {
		t.Fatalf("new tokens are still signed by key %s", oldTok[1:3])
	}
	balance := func(tok string) int {
		status, _ := g.do("POST", "/v1/balance-inquiries", fzTermKey, "", []byte(`{"qr":"`+tok+`"}`))
		return status
	}
	if balance(oldTok) != 200 || balance(newTok) != 200 {
		t.Fatal("tokens of the old and the new key must both verify during the overlap")
	}

	// One QR lifetime later the old key retires.
	clock.Add(g.qr.Lifetime())
	g.srv.qrRotator.mu.Lock()
	retired, err := g.srv.qrRotator.retireDueLocked()
	g.srv.qrRotator.mu.Unlock()
	if err != nil || len(retired) != 1 || retired[0] != list.Keys[0].ID {
		t.Fatalf("retired %v, %v; want key %d", retired, err, list.Keys[0].ID)
	}
	if store.saves != 2 || !store.keys[0].Retired && !store.keys[1].Retired {
		t.Fatalf("the retirement was not saved: %+v", store.keys)
	}
	forged := make([]byte, len(oldTok))
	copy(forged, oldTok)
	if _, fault := g.qr.Verify(forged); fault != qrInvalid {
		t.Fatalf("a token of the retired key verified: fault %d", fault)
	}

	// A restart with the saved keys signs with the new key.
	restarted, err := NewQRKeys(store.keys, g.qr.Lifetime(), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, _ := restarted.Mint(g.vouchers[1])
	if tok[1:3] != newTok[1:3] {
		t.Fatalf("after a restart tokens are signed by key %s, want %s", tok[1:3], newTok[1:3])
	}

	// A failed save changes nothing.
	store.fail = true
	if status, _ := g.do("POST", "/v1/qr-keys", fzAdmin, "", nil); status != 500 {
		t.Fatalf("rotation with a failing key store: %d", status)
	}
	if tok, _ := g.token(g.vouchers[1]); tok[1:3] != newTok[1:3] {
		t.Fatal("a rotation whose save failed changed the signing key")
	}

	if status, _ := g.do("POST", "/v1/qr-keys", fzWallet, "", nil); status != 403 {
		t.Fatalf("rotation by the wallet: %d", status)
	}
	if status, _ := g.do("POST", "/v1/qr-keys", fzAdmin, "", []byte(`{"x":1}`)); status != 400 {
		t.Fatalf("rotation with a body: %d", status)
	}
	recs, _ := g.led.AdminLog(0, 100)
	found := false
	for _, r := range recs {
		if r.Action == "qr.key_rotate" && r.Actor.Role == "admin" {
			found = true
		}
	}
	if !found {
		t.Fatal("the rotation is not in the admin log")
	}
}
