package gateway

import (
	"strings"
	"testing"
	"time"

	"azyq/ledger"
)

func qrTestKeys(t testing.TB, clock *testClock, keys ...QRKey) *QRKeys {
	t.Helper()
	if len(keys) == 0 {
		k, err := NewQRKey(1, clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		keys = []QRKey{k}
	}
	q, err := NewQRKeys(keys, 2*time.Minute, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// TestQRToken protects the token's form and meaning: QR alphanumeric, at
// most 96 characters, naming the voucher, and refused when any character
// changes or its time is up.
func TestQRToken(t *testing.T) {
	clock := newTestClock(testNow)
	q := qrTestKeys(t, clock)
	tok, exp, err := q.Mint(ledger.VoucherID(1<<32 - 1))
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) > 96 || strings.Trim(tok, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ$%*+-./:") != "" {
		t.Fatalf("token %q is not QR alphanumeric of at most 96 characters", tok)
	}
	if !exp.Equal(clock.Now().Add(2 * time.Minute)) {
		t.Fatalf("expiry %s", exp)
	}
	got, fault := q.Verify([]byte(tok))
	if fault != qrOK || got.Voucher != 1<<32-1 || !got.Expires.Equal(exp) {
		t.Fatalf("verify: %+v %d", got, fault)
	}

	// Every single-character change is refused, whatever it hits.
	for i := range len(tok) {
		for _, c := range []byte("0Z$a") {
			if tok[i] == c {
				continue
			}
			b := []byte(tok)
			b[i] = c
			if _, f := q.Verify(b); f != qrInvalid {
				t.Fatalf("token changed at %d to %q: fault %d", i, c, f)
			}
		}
	}
	for _, bad := range []string{"", tok[:55], tok + "0", strings.ToLower(tok), "2" + tok[1:]} {
		if _, f := q.Verify([]byte(bad)); f != qrInvalid {
			t.Fatalf("%q: fault %d", bad, f)
		}
	}

	// Valid until the second before expiry, expired from then on.
	clock.add(2*time.Minute - time.Nanosecond)
	if _, f := q.Verify([]byte(tok)); f != qrOK {
		t.Fatalf("just before expiry: fault %d", f)
	}
	clock.add(time.Nanosecond)
	if _, f := q.Verify([]byte(tok)); f != qrExpired {
		t.Fatalf("at expiry: fault %d", f)
	}

	// Two tokens of one voucher differ (their nonces do).
	a, _, _ := q.Mint(7)
	b, _, _ := q.Mint(7)
	if a == b {
		t.Fatal("two tokens are equal")
	}
}

// TestQRRotation protects key rotation with overlap: a new key signs, the
// old one still verifies until it is retired, and an unknown key verifies
// nothing.
func TestQRRotation(t *testing.T) {
	clock := newTestClock(testNow)
	old, _ := NewQRKey(1, clock.Now())
	q := qrTestKeys(t, clock, old)
	oldTok, _, _ := q.Mint(5)

	clock.add(time.Second)
	fresh, _ := NewQRKey(2, clock.Now())
	if err := q.Install([]QRKey{old, fresh}); err != nil {
		t.Fatal(err)
	}
	newTok, _, _ := q.Mint(5)
	if newTok[1:3] != "02" || oldTok[1:3] != "01" {
		t.Fatalf("key ids %q %q", oldTok[1:3], newTok[1:3])
	}
	for _, tok := range []string{oldTok, newTok} {
		if _, f := q.Verify([]byte(tok)); f != qrOK {
			t.Fatalf("during the overlap %s: fault %d", tok, f)
		}
	}

	old.Retired = true
	if err := q.Install([]QRKey{old, fresh}); err != nil {
		t.Fatal(err)
	}
	if _, f := q.Verify([]byte(oldTok)); f != qrInvalid {
		t.Fatalf("retired key: fault %d", f)
	}
	if _, f := q.Verify([]byte(newTok)); f != qrOK {
		t.Fatalf("new key: fault %d", f)
	}

	// Another gateway's key of the same id does not verify ours.
	stranger := qrTestKeys(t, clock, QRKey{ID: 2, Secret: make([]byte, 32), Created: clock.Now()})
	if _, f := stranger.Verify([]byte(newTok)); f != qrInvalid {
		t.Fatalf("foreign key: fault %d", f)
	}
	if err := q.Install([]QRKey{old}); err == nil {
		t.Fatal("installed a set with only retired keys")
	}
}

// BenchmarkQRVerify measures what a redemption pays to check its token;
// the target is about a microsecond.
func BenchmarkQRVerify(b *testing.B) {
	clock := newTestClock(testNow)
	q := qrTestKeys(b, clock)
	tok, _, _ := q.Mint(42)
	raw := []byte(tok)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, f := q.Verify(raw); f != qrOK {
				b.Fatal(f)
			}
		}
	})
}

func BenchmarkQRMint(b *testing.B) {
	clock := newTestClock(testNow)
	q := qrTestKeys(b, clock)
	b.ReportAllocs()
	for b.Loop() {
		q.Mint(42)
	}
}
