package gateway

import (
	"testing"
	"time"

	"azyq/ledger"
)

// FuzzQRVerify protects QR token parsing against whatever a till's scanner
// sends: Verify never panics, and it accepts only the canonical form (56
// characters, the version, a known key), so a token that passes names a
// voucher and an expiry the gateway signed.
func FuzzQRVerify(f *testing.F) {
	keys, err := NewQRKeys([]QRKey{fzQRKey()}, 2*time.Minute, func() time.Time { return fzNow })
	if err != nil {
		f.Fatal(err)
	}
	for _, id := range []ledger.VoucherID{1, 42, 1<<32 - 1} {
		tok, _, err := keys.Mint(id)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(tok))
		f.Add([]byte(tok[:len(tok)-1]))
		f.Add([]byte(tok + "0"))
	}
	f.Add([]byte(""))
	f.Add([]byte("1"))
	f.Add([]byte("100000000000000000000000000000000000000000000000000000000"))
	f.Add([]byte("1ZZ0000001ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ"))
	f.Fuzz(func(t *testing.T, tok []byte) {
		got, fault := keys.Verify(tok)
		if fault == qrInvalid {
			return
		}
		if len(tok) != qrLen || tok[0] != qrVersion || got.Voucher == 0 {
			t.Fatalf("accepted %q as %+v (fault %d)", tok, got, fault)
		}
		for _, c := range tok {
			if crockfordIndex[c] < 0 {
				t.Fatalf("accepted %q with a character outside the alphabet", tok)
			}
		}
		if (fault == qrExpired) != !fzNow.Before(got.Expires) {
			t.Fatalf("token expiring %v judged fault %d at %v", got.Expires, fault, fzNow)
		}
	})
}

// FuzzQRTamper protects the signature: a minted token verifies and names
// its voucher, and changing any one character of it makes it invalid
// (never another voucher, nonce or expiry).
func FuzzQRTamper(f *testing.F) {
	keys, err := NewQRKeys([]QRKey{fzQRKey()}, 2*time.Minute, func() time.Time { return fzNow })
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint32(1), uint8(0), byte('2'))
	f.Add(uint32(42), uint8(5), byte('Z'))
	f.Add(uint32(1<<32-1), uint8(55), byte('0'))
	f.Add(uint32(7), uint8(29), byte('a'))
	f.Fuzz(func(t *testing.T, voucher uint32, pos uint8, c byte) {
		if voucher == 0 {
			t.Skip("voucher ids start at 1")
		}
		tok, exp, err := keys.Mint(ledger.VoucherID(voucher))
		if err != nil {
			t.Fatal(err)
		}
		got, fault := keys.Verify([]byte(tok))
		if fault != qrOK || got.Voucher != ledger.VoucherID(voucher) || !got.Expires.Equal(exp) {
			t.Fatalf("minted %q for %d expiring %v, verified as %+v fault %d", tok, voucher, exp, got, fault)
		}
		i := int(pos) % len(tok)
		if tok[i] == c {
			return
		}
		bad := []byte(tok)
		bad[i] = c
		if got, fault := keys.Verify(bad); fault != qrInvalid {
			t.Fatalf("changing character %d of %q to %q gave %+v, fault %d", i, tok, c, got, fault)
		}
	})
}
