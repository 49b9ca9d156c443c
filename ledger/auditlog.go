package ledger

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2"
)

// The admin log is the append-only record of every administrative change:
// who made it (a role and an id of the credential, never the credential),
// what it changed (an action and an object), when, and the object before and
// after as JSON. An operator reads it through the API to answer "who changed
// this shop's IBAN" or "which terminal keys were rotated last night".
//
// Records live in the meta table under adminLogPrefix, keyed by a dense
// sequence number, so tools that walk the ledger's tables (the offline
// audit) carry them without knowing about them.

// Actor names who performed an admin action.
type Actor struct {
	// Role is the caller's role: "admin", "settlement", "operator" for the
	// command line, or RoleSystem for changes made without a caller.
	Role string `json:"role"`
	// ID identifies the credential: CredentialID of a bearer token, a
	// terminal id. Never the secret itself.
	ID string `json:"id,omitempty"`
	// Remote is the client's address, when the change came over a network.
	Remote string `json:"remote,omitempty"`
}

// RoleSystem marks changes made by the process itself or by callers that
// did not name themselves (the demo seeding, tests, the old method forms).
const RoleSystem = "system"

// Actions the ledger records itself. Other packages may record their own
// with RecordAdminAction (settlement cut-offs, QR key rotations).
const (
	ActionStorePut          = "store.put"
	ActionTerminalAdd       = "terminal.add"
	ActionTerminalKeyRotate = "terminal.rotate_key"
	ActionIssuance          = "issuance"
)

// AdminAction is one record of the admin log.
type AdminAction struct {
	// Seq numbers records densely from 1 in the order they were committed;
	// it is the cursor for reading the log.
	Seq   uint64
	At    time.Time
	Actor Actor
	// Action names the kind of change, such as ActionStorePut.
	Action string
	// Object names what changed, such as "store/S1".
	Object string
	// Before and After are the object's JSON before and after the change;
	// Before is nil for a creation.
	Before json.RawMessage
	After  json.RawMessage
}

// Limits of an admin log record.
const (
	adminRoleMax   = 32
	adminIDMax     = 128
	adminRemoteMax = 64
	adminActionMax = 64
	adminObjectMax = 200
	adminValueMax  = 64 << 10 // bytes of Before or After
	// AdminLogPageMax is the most records one AdminLog call returns.
	AdminLogPageMax = 1000
)

var adminLogPrefix = []byte{tableMeta, 'l', 'o', 'g', '/'}

func adminLogKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), adminLogPrefix...), seq)
}

// CredentialID returns a stable, non-reversible id of a bearer token for the
// admin log and for logs: "sha256:" and the first 12 hex digits of its hash.
// Tokens are random, so the prefix names a token without helping anyone
// guess it.
func CredentialID(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return "sha256:" + hex.EncodeToString(h[:6])
}

// keyID names a terminal key by its stored hash, the same way.
func keyID(hash [32]byte) string { return "sha256:" + hex.EncodeToString(hash[:6]) }

// adminLog serialises admin log appends.
//
// Invariants:
//  1. Sequence numbers are dense and follow commit order: mu is held from
//     taking a number until the batch carrying the record has synced, and a
//     failed commit stops the ledger, so no number is skipped or reused.
//  2. Readers see only synced records: they read up to durable, which
//     advances only after the sync (Pebble makes a batch readable before its
//     sync completes; see invariant 2 of the package).
//  3. A record the ledger writes for its own change is in the change's
//     batch, so the change and its record are durable together or not at all.
//
// Lock order: the ledger's admin and issue locks before mu; mu takes no
// other lock.
//
// Keying records by time was rejected: a wall clock that steps back would
// insert a record before a reader's cursor, and the reader would never see
// it. A separate log file (JSON lines) was rejected too: it cannot be atomic
// with the change it records and costs a second fsync.
type adminLog struct {
	mu struct {
		sync.Mutex
		loaded bool
		last   uint64
	}
	durable atomic.Uint64 // last synced record; valid once loaded is set
	loaded  atomic.Bool
}

// loadLocked finds the last record once per process. No unsynced record can
// be visible: appends hold mu through their sync.
func (l *Ledger) adminLogLoadLocked() error {
	a := &l.adminLog
	if a.mu.loaded {
		return nil
	}
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: adminLogPrefix, UpperBound: prefixEnd(adminLogPrefix)})
	if err != nil {
		return fmt.Errorf("cannot read admin log: %w", err)
	}
	if it.Last() {
		k := it.Key()
		if len(k) != len(adminLogPrefix)+8 {
			it.Close()
			return fmt.Errorf("cannot read admin log key %x: %w", k, errCorrupt)
		}
		a.mu.last = binary.BigEndian.Uint64(k[len(adminLogPrefix):])
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("cannot read admin log: %w", err)
	}
	a.mu.loaded = true
	a.durable.Store(a.mu.last)
	a.loaded.Store(true)
	return nil
}

// commitAdmin adds the record of an admin action to b and commits b; see
// adminLog for the invariants. It fills in the record's Seq, its time when
// zero and its role when empty.
func (l *Ledger) commitAdmin(b *pebble.Batch, rec *AdminAction) error {
	a := &l.adminLog
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := l.adminLogLoadLocked(); err != nil {
		b.Close()
		return err
	}

	rec.Seq = a.mu.last + 1
	if rec.At.IsZero() {
		rec.At = l.now()
	}
	if rec.Actor.Role == "" {
		rec.Actor.Role = RoleSystem
	}
	if err := validateAdminAction(rec); err != nil {
		panic(fmt.Sprintf("BUG: the ledger's own admin record is invalid: %v", err))
	}
	b.Set(adminLogKey(rec.Seq), encodeAdminAction(nil, rec), nil)
	start := time.Now()
	if err := l.commit(b); err != nil {
		return err
	}

	a.mu.last = rec.Seq
	a.durable.Store(rec.Seq)
	l.log.Info("admin action", "seq", rec.Seq, "action", rec.Action, "object", rec.Object,
		"role", rec.Actor.Role, "actor", rec.Actor.ID, "remote", rec.Actor.Remote,
		"duration", time.Since(start))
	return nil
}

// RecordAdminAction appends an admin action that another package performed
// (a settlement cut-off, a QR signing key rotation) in a batch of its own,
// synced before it returns. Record after the change is durable: a crash in
// between loses the record, never invents one. It returns the record as
// stored.
func (l *Ledger) RecordAdminAction(rec AdminAction) (AdminAction, error) {
	if err := l.check(); err != nil {
		return AdminAction{}, err
	}
	if rec.Actor.Role == "" {
		rec.Actor.Role = RoleSystem
	}
	if rec.At.IsZero() {
		rec.At = l.now()
	}
	if err := validateAdminAction(&rec); err != nil {
		return AdminAction{}, refuse(CodeInvalid, "%v", err)
	}
	if err := l.commitAdmin(l.db.NewBatch(), &rec); err != nil {
		return AdminAction{}, err
	}
	return rec, nil
}

func validateAdminAction(r *AdminAction) error {
	text := func(name, v string, limit int) error {
		if len(v) > limit || !utf8.ValidString(v) {
			return fmt.Errorf("cannot record admin action: %s %q must be at most %d bytes of UTF-8", name, v, limit)
		}
		return nil
	}
	value := func(name string, v json.RawMessage) error {
		if v == nil {
			return nil
		}
		if len(v) > adminValueMax || !json.Valid(v) {
			return fmt.Errorf("cannot record admin action: %s must be valid JSON of at most %d bytes", name, adminValueMax)
		}
		return nil
	}
	if r.Action == "" || r.Actor.Role == "" {
		return fmt.Errorf("cannot record admin action %q by role %q: both are required", r.Action, r.Actor.Role)
	}
	for _, err := range []error{
		text("role", r.Actor.Role, adminRoleMax), text("actor id", r.Actor.ID, adminIDMax),
		text("remote", r.Actor.Remote, adminRemoteMax), text("action", r.Action, adminActionMax),
		text("object", r.Object, adminObjectMax), value("before", r.Before), value("after", r.After),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

// AdminLog returns up to limit records after the cursor (a Seq; 0 reads from
// the start), oldest first. limit is capped at AdminLogPageMax; zero or less
// means 100. An empty result means the reader has caught up; the next cursor
// is the Seq of the last record returned.
func (l *Ledger) AdminLog(after uint64, limit int) ([]AdminAction, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, AdminLogPageMax)
	if !l.adminLog.loaded.Load() {
		l.adminLog.mu.Lock()
		err := l.adminLogLoadLocked()
		l.adminLog.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	durable := l.adminLog.durable.Load()
	if after >= durable {
		return nil, nil
	}

	out := make([]AdminAction, 0, min(uint64(limit), durable-after))
	hi := adminLogKey(min(durable, after+uint64(limit)) + 1)
	err := l.scan(adminLogKey(after+1), hi, func(k, v []byte) error {
		seq := binary.BigEndian.Uint64(k[len(adminLogPrefix):])
		rec, err := decodeAdminAction(seq, v)
		if err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read admin log after %d: %w", after, err)
	}
	return out, nil
}

const adminActionRecordV1 = 1

func encodeAdminAction(b []byte, r *AdminAction) []byte {
	e := encoder{b}
	e.u8(adminActionRecordV1)
	e.time(r.At)
	e.str(r.Actor.Role)
	e.str(r.Actor.ID)
	e.str(r.Actor.Remote)
	e.str(r.Action)
	e.str(r.Object)
	e.flag(r.Before != nil)
	e.bytes(r.Before)
	e.flag(r.After != nil)
	e.bytes(r.After)
	return e.b
}

func decodeAdminAction(seq uint64, b []byte) (AdminAction, error) {
	d := decoder{b: b}
	r := AdminAction{Seq: seq}
	if d.u8() != adminActionRecordV1 {
		d.fail()
	}
	r.At = d.time()
	r.Actor.Role = d.str()
	r.Actor.ID = d.str()
	r.Actor.Remote = d.str()
	r.Action = d.str()
	r.Object = d.str()
	hasBefore := d.flag()
	before := d.bytes()
	hasAfter := d.flag()
	after := d.bytes()
	// Copy the JSON: b may be an iterator's buffer.
	if hasBefore {
		r.Before = bytes.Clone(before)
	} else if len(before) != 0 {
		d.fail()
	}
	if hasAfter {
		r.After = bytes.Clone(after)
	} else if len(after) != 0 {
		d.fail()
	}
	if d.err == nil && validateAdminAction(&r) != nil {
		d.fail()
	}
	return r, d.finish("admin log record")
}

// The JSON forms of objects in the admin log. Terminal keys appear only as
// keyID of their hash.

type terminalAudit struct {
	ID            string    `json:"terminal_id"`
	StoreID       string    `json:"store_id"`
	Key           string    `json:"key_id"`
	CreatedAt     time.Time `json:"created_at,omitzero"`
	PreviousKey   string    `json:"previous_key_id,omitempty"`
	PreviousUntil time.Time `json:"previous_valid_until,omitzero"`
}

func terminalAuditJSON(t *Terminal) json.RawMessage {
	a := terminalAudit{ID: t.ID, StoreID: t.StoreID, Key: keyID(t.KeyHash), CreatedAt: t.CreatedAt}
	if !t.PreviousUntil.IsZero() {
		a.PreviousKey, a.PreviousUntil = keyID(t.PreviousKeyHash), t.PreviousUntil
	}
	return mustJSON(a)
}

func storeAuditJSON(s *Store) json.RawMessage { return mustJSON(storeJSON(*s)) }

// issuanceAudit describes one batch of an issuance: a large issuance is
// committed in several batches, each with its own record.
type issuanceAudit struct {
	Month     string `json:"month"`
	Families  int    `json:"families"`
	Created   int    `json:"created"`
	Existing  int    `json:"existing"`
	FaceValue int64  `json:"face_value"`
	First     string `json:"first_voucher_id,omitempty"`
	Last      string `json:"last_voucher_id,omitempty"`
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode admin log value %T: %v", v, err))
	}
	return b
}
