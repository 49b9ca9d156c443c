package gateway

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"azyq/ledger"
)

// A QR token is 56 characters of Crockford base32, all in the QR
// alphanumeric set, so a QR code holds it in alphanumeric mode:
//
//	offset  len  field
//	0       1    format version, '1'
//	1       2    key id (0-1023)
//	3       7    voucher id (35 bits)
//	10      13   nonce (64 bits, random)
//	23      7    expiry, Unix seconds (35 bits: until the year 3058)
//	30      26   first 128 bits of HMAC-SHA256(key, characters 0-29)
//
// The MAC covers the text of the first 30 characters, so any change to
// them (or to the key id) fails verification; only the gateway ever
// produces canonical text. Single use is the ledger's part: it remembers
// the (voucher, nonce) of every consumed token until the token expires.
const (
	qrVersion   = '1'
	qrLen       = 56
	qrSignedLen = 30
	qrMACBytes  = 16
	qrKeyIDMax  = 1 << 10
)

// crockford is the Crockford base32 alphabet (as ledger/ids.go): digits and
// upper-case letters without I, L, O and U.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

var crockfordIndex = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i := range len(crockford) {
		t[crockford[i]] = int8(i)
	}
	return t
}()

// QRKey is one signing key as kept in the secrets file.
type QRKey struct {
	ID      int       `json:"id"`
	Secret  []byte    `json:"secret"`
	Created time.Time `json:"created"`
	// Retired keys verify nothing; a key is retired once every token it
	// signed has expired (one QR lifetime after the next key took over).
	Retired bool `json:"retired,omitempty"`
}

// NewQRKey generates a key with a random 256-bit secret.
func NewQRKey(id int, now time.Time) (QRKey, error) {
	if id < 0 || id >= qrKeyIDMax {
		return QRKey{}, fmt.Errorf("cannot make QR key %d: ids are 0-%d", id, qrKeyIDMax-1)
	}
	k := QRKey{ID: id, Secret: make([]byte, 32), Created: now.UTC()}
	if _, err := rand.Read(k.Secret); err != nil {
		return QRKey{}, fmt.Errorf("cannot make QR key %d: %w", id, err)
	}
	return k, nil
}

// QRKeys mints and verifies QR tokens.
//
// Design: the key set is immutable and replaced whole (copy-on-write), so
// verification takes no lock; each key keeps a pool of HMAC states whose
// key pads are computed once, so a verification costs two SHA-256 blocks.
//
// Invariants:
//
//  1. Tokens are signed with the newest key that is not retired.
//  2. A token verifies under any key of the set that is not retired, so a
//     rotation installs the new key, keeps the old one for at least one QR
//     lifetime, then retires it: no valid token is ever refused by it.
//  3. A token is accepted only before its expiry, by the injected clock.
//
// A public-key signature (Ed25519) was rejected: it costs about 50 µs to
// verify, and the wallet and the verifier are the same operator's gateway,
// so a shared secret loses nothing.
type QRKeys struct {
	now      func() time.Time
	lifetime time.Duration
	set      atomic.Pointer[qrKeySet]
}

type qrKeySet struct {
	byID   [qrKeyIDMax]*qrKey
	signer *qrKey
	keys   []QRKey // as installed, retired ones included, for rotation
}

type qrKey struct {
	id   int
	text [2]byte
	pool sync.Pool // of *qrHasher keyed with this key
}

// qrHasher is an HMAC-SHA256 state with room for its sum, so that summing
// through the hash.Hash interface does not move a stack buffer to the heap.
type qrHasher struct {
	h   hash.Hash
	out [sha256.Size]byte
}

// NewQRKeys builds the key set; lifetime is how long a minted token stays
// valid and now the clock tokens are checked against.
func NewQRKeys(keys []QRKey, lifetime time.Duration, now func() time.Time) (*QRKeys, error) {
	if lifetime <= 0 {
		return nil, fmt.Errorf("cannot use QR lifetime %s: it must be positive", lifetime)
	}
	k := &QRKeys{now: now, lifetime: lifetime}
	if err := k.Install(keys); err != nil {
		return nil, err
	}
	return k, nil
}

// Install replaces the key set: the way to rotate keys (see invariant 2).
func (k *QRKeys) Install(keys []QRKey) error {
	set := &qrKeySet{keys: slices.Clone(keys)}
	var newest *QRKey
	for i := range keys {
		key := &keys[i]
		if key.ID < 0 || key.ID >= qrKeyIDMax {
			return fmt.Errorf("cannot install QR key %d: ids are 0-%d", key.ID, qrKeyIDMax-1)
		}
		if len(key.Secret) < 32 {
			return fmt.Errorf("cannot install QR key %d: secret of %d bytes, want 32", key.ID, len(key.Secret))
		}
		if set.byID[key.ID] != nil {
			return fmt.Errorf("cannot install QR key %d: the id appears twice", key.ID)
		}
		if key.Retired {
			continue
		}
		secret := append([]byte(nil), key.Secret...)
		qk := &qrKey{id: key.ID}
		qk.text[0], qk.text[1] = crockford[key.ID>>5], crockford[key.ID&31]
		qk.pool.New = func() any { return &qrHasher{h: hmac.New(sha256.New, secret)} }
		set.byID[key.ID] = qk
		if newest == nil || key.Created.After(newest.Created) ||
			key.Created.Equal(newest.Created) && key.ID > newest.ID {
			newest = key
			set.signer = qk
		}
	}
	if set.signer == nil {
		return errors.New("cannot install QR keys: no key that is not retired")
	}
	k.set.Store(set)
	return nil
}

// Keys returns the installed keys, secrets included, retired ones too:
// what the secrets file must hold.
func (k *QRKeys) Keys() []QRKey { return slices.Clone(k.set.Load().keys) }

// Lifetime returns how long a minted token stays valid.
func (k *QRKeys) Lifetime() time.Duration { return k.lifetime }

// Mint returns a new token for a voucher and its expiry.
func (k *QRKeys) Mint(id ledger.VoucherID) (string, time.Time, error) {
	var nb [8]byte
	if _, err := rand.Read(nb[:]); err != nil {
		return "", time.Time{}, fmt.Errorf("cannot mint QR token: %w", err)
	}
	exp := k.now().Add(k.lifetime).Truncate(time.Second)
	key := k.set.Load().signer

	b := make([]byte, 0, qrLen)
	b = append(b, qrVersion, key.text[0], key.text[1])
	b = appendBase32(b, uint64(id), 7)
	b = appendBase32(b, binary.BigEndian.Uint64(nb[:]), 13)
	b = appendBase32(b, uint64(exp.Unix()), 7)
	var mac [sha256.Size]byte
	key.sum(b, &mac)
	b = appendBase32(b, binary.BigEndian.Uint64(mac[:8]), 13)
	b = appendBase32(b, binary.BigEndian.Uint64(mac[8:16]), 13)
	if len(b) != qrLen {
		panic(fmt.Sprintf("BUG: minted a QR token of %d characters", len(b)))
	}
	return string(b), exp, nil
}

// qrFault is why a token was refused.
type qrFault uint8

const (
	qrOK qrFault = iota
	qrInvalid
	qrExpired
)

// Verify checks a token's form, signature and expiry and returns what it
// names. It does not know whether the token was used; the ledger does.
func (k *QRKeys) Verify(tok []byte) (ledger.Token, qrFault) {
	if len(tok) != qrLen || tok[0] != qrVersion {
		return ledger.Token{}, qrInvalid
	}
	id, ok1 := parseBase32(tok[1:3])
	voucher, ok2 := parseBase32(tok[3:10])
	nonce, ok3 := parseBase32(tok[10:23])
	exp, ok4 := parseBase32(tok[23:30])
	if !ok1 || !ok2 || !ok3 || !ok4 || voucher == 0 || voucher > 1<<32-1 {
		return ledger.Token{}, qrInvalid
	}
	key := k.set.Load().byID[id]
	if key == nil {
		return ledger.Token{}, qrInvalid
	}

	// Compare the MAC as text, in constant time: re-encoding it makes the
	// comparison canonical.
	var mac [sha256.Size]byte
	key.sum(tok[:qrSignedLen], &mac)
	var want [26]byte
	appendBase32(want[:0], binary.BigEndian.Uint64(mac[:8]), 13)
	appendBase32(want[13:13], binary.BigEndian.Uint64(mac[8:16]), 13)
	if subtle.ConstantTimeCompare(want[:], tok[qrSignedLen:]) != 1 {
		return ledger.Token{}, qrInvalid
	}

	t := ledger.Token{Voucher: ledger.VoucherID(voucher), Nonce: nonce, Expires: time.Unix(int64(exp), 0)}
	if !k.now().Before(t.Expires) {
		return t, qrExpired
	}
	return t, qrOK
}

// sum computes the HMAC of msg with the key into out.
func (q *qrKey) sum(msg []byte, out *[sha256.Size]byte) {
	h := q.pool.Get().(*qrHasher)
	h.h.Reset()
	h.h.Write(msg)
	*out = [sha256.Size]byte(h.h.Sum(h.out[:0]))
	q.pool.Put(h)
}

// appendBase32 appends v as width Crockford base32 digits, most
// significant first.
func appendBase32(b []byte, v uint64, width int) []byte {
	for i := width - 1; i >= 0; i-- {
		b = append(b, crockford[(v>>(5*uint(i)))&31])
	}
	return b
}

// parseBase32 parses Crockford base32 digits; it fails on another
// character or a value above 64 bits.
func parseBase32(s []byte) (uint64, bool) {
	var v uint64
	for _, c := range s {
		d := crockfordIndex[c]
		if d < 0 || v>>59 != 0 {
			return 0, false
		}
		v = v<<5 | uint64(d)
	}
	return v, true
}
