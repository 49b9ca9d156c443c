package gateway

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fastjson"

	"azyq/ledger"
)

// Key rotation: terminal API keys and QR signing keys.

// terminalKeyGraceDefault is how long a terminal's previous key keeps
// working after a rotation when the request names no grace: long enough
// to re-provision a till during the next business day.
const (
	terminalKeyGraceDefault = 24 * time.Hour
	terminalKeyGraceMax     = 7 * 24 * time.Hour
)

var keyRotationFields = []string{"grace_seconds"}

// serveTerminalKeyRotation is POST
// /v1/stores/{store_id}/terminals/{terminal_id}/key (admin). Body: empty,
// {} or {"grace_seconds": N} with N in 0..604800 (default 86400). It
// answers 200 {"terminal_id", "store_id", "api_key",
// "previous_key_valid_until"}: the new key is shown once, and the old one
// keeps working until previous_key_valid_until. A grace of 0 revokes the
// old key at once.
func (c *call) serveTerminalKeyRotation() {
	storeID, terminalID := string(c.params[0]), string(c.params[1])
	grace := terminalKeyGraceDefault
	if body := c.ctx.PostBody(); len(body) > 0 {
		o, err := parseBody(&c.parser, body)
		if err == nil {
			_, err = walk(o, keyRotationFields, func(_ int, v *fastjson.Value) error {
				n, err := parseInt(v, "grace_seconds")
				if err == nil && (n < 0 || n > int64(terminalKeyGraceMax/time.Second)) {
					err = badJSON("grace_seconds %d must be 0-%d", n, int64(terminalKeyGraceMax/time.Second))
				}
				grace = time.Duration(n) * time.Second
				return err
			})
		}
		if err != nil {
			c.fail(codeInvalidRequest, err.Error())
			return
		}
	}
	if t, ok := c.s.led.Terminal(terminalID); !ok || t.StoreID != storeID {
		c.failf(codeNotFound, "shop %q has no terminal %q", storeID, terminalID)
		return
	}

	key, err := NewTerminalKey()
	if err != nil {
		c.failErr(err)
		return
	}
	t, err := c.s.led.RotateTerminalKeyBy(c.actor(), terminalID, sha256.Sum256([]byte(key)), grace)
	if err != nil {
		c.failErr(err)
		return
	}
	b := appendStr(append(c.buf[:0], '{'), "terminal_id", t.ID)
	b = appendStr(b, "store_id", t.StoreID)
	b = appendStr(b, "api_key", key)
	b = appendTime(b, "previous_key_valid_until", t.PreviousUntil, c.s.prog.Location)
	c.buf = append(b, '}')
	c.reply(200, c.buf)
}

// QRKeyStore keeps the QR signing keys durable; gatewayd writes them to the
// secrets file. Save must not return before the keys are synced.
type QRKeyStore interface {
	SaveQRKeys(keys []QRKey) error
}

// qrRotator adds QR signing keys and retires old ones.
//
// Invariants:
//  1. A new key is saved before it signs: a crash after the save restarts
//     with it, a crash before leaves the old set untouched.
//  2. A superseded key keeps verifying for one QR lifetime after its
//     successor took over, so no token minted before a rotation is refused
//     because of it; then it is retired and verifies nothing.
//  3. mu serialises rotations and retirements; verification never takes it
//     (QRKeys is copy-on-write).
type qrRotator struct {
	qr    *QRKeys
	store QRKeyStore
	now   func() time.Time
	log   *slog.Logger

	mu struct {
		sync.Mutex
		keys  []QRKey
		timer *time.Timer // the next retirement, nil when none is due
	}
}

func newQRRotator(qr *QRKeys, store QRKeyStore, now func() time.Time, log *slog.Logger) *qrRotator {
	r := &qrRotator{qr: qr, store: store, now: now, log: log}
	r.mu.keys = qr.Keys()
	return r
}

// start retires the keys whose overlap ended while the gateway was down
// and schedules the retirement of those still overlapping.
func (r *qrRotator) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.retireDueLocked(); err != nil {
		return err
	}
	r.scheduleLocked()
	return nil
}

// scheduleLocked arms a timer for the earliest retirement still due.
func (r *qrRotator) scheduleLocked() {
	if r.mu.timer != nil {
		r.mu.timer.Stop()
		r.mu.timer = nil
	}
	superseded := r.supersededLocked()
	var next time.Time
	for _, k := range r.mu.keys {
		if at, ok := superseded[k.ID]; ok && !k.Retired {
			if due := at.Add(r.qr.Lifetime()); next.IsZero() || due.Before(next) {
				next = due
			}
		}
	}
	if next.IsZero() {
		return
	}
	r.mu.timer = time.AfterFunc(max(0, next.Sub(r.now()))+time.Second, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		ids, err := r.retireDueLocked()
		switch {
		case err != nil:
			r.log.Error("cannot retire QR keys; superseded keys still verify", "err", err)
		case len(ids) > 0:
			r.log.Info("QR keys retired", "key_ids", ids)
		}
		r.scheduleLocked()
	})
}

// supersededLocked returns when each key stopped signing: the creation of
// the next newer key, or zero for the signing key.
func (r *qrRotator) supersededLocked() map[int]time.Time {
	byAge := slices.Clone(r.mu.keys)
	slices.SortFunc(byAge, func(a, b QRKey) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return a.ID - b.ID
	})
	out := make(map[int]time.Time, len(byAge))
	for i := range byAge {
		if i+1 < len(byAge) {
			out[byAge[i].ID] = byAge[i+1].Created
		}
	}
	return out
}

// retireDueLocked retires the keys superseded at least one QR lifetime
// ago and returns their ids.
func (r *qrRotator) retireDueLocked() ([]int, error) {
	now := r.now()
	superseded := r.supersededLocked()
	next := slices.Clone(r.mu.keys)
	var retired []int
	for i := range next {
		at, ok := superseded[next[i].ID]
		if ok && !next[i].Retired && !now.Before(at.Add(r.qr.Lifetime())) {
			next[i].Retired = true
			retired = append(retired, next[i].ID)
		}
	}
	if len(retired) == 0 {
		return nil, nil
	}
	if err := r.installLocked(next); err != nil {
		return nil, err
	}
	return retired, nil
}

// installLocked saves a key set and then starts using it (invariant 1).
func (r *qrRotator) installLocked(keys []QRKey) error {
	if r.store == nil {
		return errors.New("cannot change QR keys: no key store is configured")
	}
	if err := r.store.SaveQRKeys(keys); err != nil {
		return fmt.Errorf("cannot save QR keys: %w", err)
	}
	if err := r.qr.Install(keys); err != nil {
		return err
	}
	r.mu.keys = keys
	return nil
}

// rotate adds a new signing key. Retired keys are dropped from the set
// once every id is taken, so ids are reused only long after retirement.
func (r *qrRotator) rotate() (QRKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.retireDueLocked(); err != nil {
		return QRKey{}, err
	}
	used := make(map[int]bool, len(r.mu.keys))
	for _, k := range r.mu.keys {
		used[k.ID] = true
	}
	id := -1
	for i := 1; i <= qrKeyIDMax; i++ {
		cand := (r.newestIDLocked() + i) % qrKeyIDMax
		if !used[cand] {
			id = cand
			break
		}
	}
	keys := slices.Clone(r.mu.keys)
	if id < 0 {
		// Every id is taken: forget the oldest retired key.
		keys = slices.DeleteFunc(keys, func(k QRKey) bool { return k.Retired })
		if len(keys) == len(r.mu.keys) {
			return QRKey{}, fmt.Errorf("cannot add a QR key: all %d ids verify tokens", qrKeyIDMax)
		}
		return r.rotateWithLocked(keys, r.freeIDLocked(keys))
	}
	return r.rotateWithLocked(keys, id)
}

func (r *qrRotator) rotateWithLocked(keys []QRKey, id int) (QRKey, error) {
	k, err := NewQRKey(id, r.now())
	if err != nil {
		return QRKey{}, err
	}
	// A new key must be the newest even if the clock stepped back.
	for _, old := range keys {
		if !k.Created.After(old.Created) {
			k.Created = old.Created.Add(time.Second)
		}
	}
	if err := r.installLocked(append(keys, k)); err != nil {
		return QRKey{}, err
	}
	r.scheduleLocked()
	return k, nil
}

func (r *qrRotator) newestIDLocked() int {
	newest := -1
	var at time.Time
	for _, k := range r.mu.keys {
		if newest < 0 || k.Created.After(at) {
			newest, at = k.ID, k.Created
		}
	}
	return max(newest, 0)
}

func (r *qrRotator) freeIDLocked(keys []QRKey) int {
	used := make(map[int]bool, len(keys))
	for _, k := range keys {
		used[k.ID] = true
	}
	for id := range qrKeyIDMax {
		if !used[id] {
			return id
		}
	}
	panic("BUG: no free QR key id after dropping retired keys")
}

// qrKeyView is a key as the admin API shows it: never its secret.
type qrKeyView struct {
	ID           int        `json:"key_id"`
	Created      time.Time  `json:"created_at"`
	Signing      bool       `json:"signing"`
	Retired      bool       `json:"retired"`
	RetiresAfter *time.Time `json:"retires_after,omitempty"`
}

func (r *qrRotator) viewLocked(loc *time.Location) []qrKeyView {
	superseded := r.supersededLocked()
	out := make([]qrKeyView, 0, len(r.mu.keys))
	for _, k := range r.mu.keys {
		v := qrKeyView{ID: k.ID, Created: k.Created.In(loc), Retired: k.Retired}
		if at, ok := superseded[k.ID]; ok {
			if !k.Retired {
				t := at.Add(r.qr.Lifetime()).In(loc)
				v.RetiresAfter = &t
			}
		} else {
			v.Signing = !k.Retired
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b qrKeyView) int { return a.Created.Compare(b.Created) })
	return out
}

// serveQRKeys is GET /v1/qr-keys (admin): {"keys": [{"key_id",
// "created_at", "signing", "retired", "retires_after"}]}, oldest first.
func (c *call) serveQRKeys() {
	r := c.s.qrRotator
	r.mu.Lock()
	keys := r.viewLocked(c.s.prog.Location)
	r.mu.Unlock()
	c.replyJSON(200, map[string]any{"keys": keys})
}

// serveQRKeyRotation is POST /v1/qr-keys (admin), no body: a new key signs
// from now on; the previous one keeps verifying for one QR lifetime, then
// is retired. Answers 201 with the key list as GET /v1/qr-keys.
func (c *call) serveQRKeyRotation() {
	if err := emptyOrEmptyObject(&c.parser, c.ctx.PostBody()); err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	r := c.s.qrRotator
	if r.store == nil {
		c.fail(codeConflict, "QR keys cannot rotate through the API: the gateway has no key store")
		return
	}
	before := r.signingID()
	k, err := r.rotate()
	if err != nil {
		c.s.log.Error("cannot rotate QR keys", "request_id", string(c.rid), "err", err)
		c.fail(codeInternal, "cannot rotate the QR signing key; the old key still signs")
		return
	}
	_, err = c.s.led.RecordAdminAction(ledger.AdminAction{
		Actor: c.actor(), Action: "qr.key_rotate", Object: "qr-key/" + strconv.Itoa(k.ID),
		Before: mustMarshal(map[string]int{"signing_key_id": before}),
		After:  mustMarshal(map[string]int{"signing_key_id": k.ID}),
	})
	if err != nil {
		c.failErr(err)
		return
	}
	c.s.log.Info("QR signing key rotated", "key_id", k.ID, "previous_key_id", before,
		"request_id", string(c.rid))
	r.mu.Lock()
	keys := r.viewLocked(c.s.prog.Location)
	r.mu.Unlock()
	c.replyJSON(201, map[string]any{"keys": keys})
}

func (r *qrRotator) signingID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	superseded := r.supersededLocked()
	for _, k := range r.mu.keys {
		if _, old := superseded[k.ID]; !old && !k.Retired {
			return k.ID
		}
	}
	return -1
}

func mustMarshal(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode %T: %v", v, err))
	}
	return b
}
