package ledger

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"azyq/domain"
)

// storeState is a shop as the redemption path sees it: its current details
// and its payable account, both reachable without a lock.
type storeState struct {
	info       atomic.Pointer[Store]
	payable    *atomic.Int64
	payableKey []byte // the payable account's key, built once
}

// terminalIndex finds terminals by id and by key hash. It is replaced whole
// on every change (copy-on-write), so readers never lock.
type terminalIndex struct {
	byID   map[string]*Terminal
	byHash map[[32]byte]*Terminal
}

// ValidID reports whether s is a valid id for a store, terminal or family:
// 1–64 characters of [A-Za-z0-9_-].
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > IDMax {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validateStore returns a refusal naming the first invalid field.
func (l *Ledger) validateStore(s *Store) *Refusal {
	switch {
	case !ValidID(s.ID):
		return refuse(CodeInvalid, "store_id %q must be 1-64 characters of A-Z a-z 0-9 _ -", s.ID)
	case s.Name == "" || len(s.Name) > NameMax:
		return refuse(CodeInvalid, "name must be 1-%d bytes", NameMax)
	case len(s.City) > CityMax:
		return refuse(CodeInvalid, "city must be at most %d bytes", CityMax)
	case !domain.ValidBIN(s.BIN):
		return refuse(CodeInvalid, "bin %q must be 12 digits with a valid check digit", s.BIN)
	case !domain.ValidIBAN(s.IBAN):
		return refuse(CodeInvalid, "iban %q must be a Kazakh IBAN: KZ, 2 check digits, 16 more characters", s.IBAN)
	case !domain.ValidBIC(s.BankBIC):
		return refuse(CodeInvalid, "bank_bic %q must be 8 or 11 characters of a BIC", s.BankBIC)
	case s.DiscountBP < 0 || s.DiscountBP > l.prog.DiscountCapBP:
		return refuse(CodeInvalid, "discount_bp %d must be 0-%d", s.DiscountBP, l.prog.DiscountCapBP)
	}
	return nil
}

// PutStore creates or updates a shop, recorded in the admin log as a
// change by RoleSystem.
func (l *Ledger) PutStore(s Store) (Store, error) { return l.PutStoreBy(Actor{}, s) }

// PutStoreBy creates or updates a shop on behalf of who; the admin log
// record is written in the same batch.
func (l *Ledger) PutStoreBy(who Actor, s Store) (Store, error) {
	if err := l.check(); err != nil {
		return Store{}, err
	}
	if r := l.validateStore(&s); r != nil {
		return Store{}, r
	}
	l.admin.Lock()
	defer l.admin.Unlock()

	value, err := json.Marshal(storeJSON(s))
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode store: %v", err))
	}
	b := l.db.NewBatch()
	b.Set(append([]byte{tableStore}, s.ID...), value, nil)
	rec := AdminAction{Actor: who, Action: ActionStorePut, Object: "store/" + s.ID, After: storeAuditJSON(&s)}
	if old, ok := l.Store(s.ID); ok {
		rec.Before = storeAuditJSON(&old)
	}
	if err := l.commitAdmin(b, &rec); err != nil {
		return Store{}, err
	}
	l.installStore(s)
	return s, nil
}

// installStore publishes a store after its record is durable (or recovered).
func (l *Ledger) installStore(s Store) {
	old := *l.stores.Load()
	if st, ok := old[s.ID]; ok {
		st.info.Store(&s)
		return
	}
	st := &storeState{payable: l.accounts.get(AccountStore(s.ID)), payableKey: accountKey(AccountStore(s.ID))}
	st.info.Store(&s)
	grown := make(map[string]*storeState, len(old)+1)
	for k, v := range old {
		grown[k] = v
	}
	grown[s.ID] = st
	l.stores.Store(&grown)
}

// Store returns a shop.
func (l *Ledger) Store(id string) (Store, bool) {
	st, ok := (*l.stores.Load())[id]
	if !ok {
		return Store{}, false
	}
	return *st.info.Load(), true
}

// Stores returns every shop, in no particular order.
func (l *Ledger) Stores() []Store {
	m := *l.stores.Load()
	out := make([]Store, 0, len(m))
	for _, st := range m {
		out = append(out, *st.info.Load())
	}
	return out
}

// AddTerminal registers a terminal of an existing store with the SHA-256
// hash of its API key. An existing terminal id is a conflict.
func (l *Ledger) AddTerminal(storeID, terminalID string, keyHash [32]byte) (Terminal, error) {
	return l.AddTerminalBy(Actor{}, storeID, terminalID, keyHash)
}

// AddTerminalBy is AddTerminal on behalf of who, for the admin log.
func (l *Ledger) AddTerminalBy(who Actor, storeID, terminalID string, keyHash [32]byte) (Terminal, error) {
	if err := l.check(); err != nil {
		return Terminal{}, err
	}
	if !ValidID(terminalID) {
		return Terminal{}, refuse(CodeInvalid, "terminal_id %q must be 1-64 characters of A-Z a-z 0-9 _ -", terminalID)
	}
	l.admin.Lock()
	defer l.admin.Unlock()

	if _, ok := l.Store(storeID); !ok {
		return Terminal{}, refuse(CodeNotFound, "store %q does not exist", storeID)
	}
	idx := l.terminals.Load()
	if _, ok := idx.byID[terminalID]; ok {
		return Terminal{}, refuse(CodeConflict, "terminal %q already exists", terminalID)
	}
	if _, ok := idx.byHash[keyHash]; ok {
		return Terminal{}, refuse(CodeConflict, "the key of terminal %q is already in use", terminalID)
	}
	t := Terminal{ID: terminalID, StoreID: storeID, KeyHash: keyHash, CreatedAt: l.now()}
	rec := AdminAction{Actor: who, Action: ActionTerminalAdd, Object: "terminal/" + t.ID,
		After: terminalAuditJSON(&t)}
	if err := l.putTerminalLocked(t, &rec); err != nil {
		return Terminal{}, err
	}
	return t, nil
}

// RotateTerminalKey gives a terminal a new key hash; the previous key stays
// valid for grace.
func (l *Ledger) RotateTerminalKey(terminalID string, keyHash [32]byte, grace time.Duration) (Terminal, error) {
	return l.RotateTerminalKeyBy(Actor{}, terminalID, keyHash, grace)
}

// RotateTerminalKeyBy is RotateTerminalKey on behalf of who, for the admin
// log.
func (l *Ledger) RotateTerminalKeyBy(who Actor, terminalID string, keyHash [32]byte, grace time.Duration) (Terminal, error) {
	if err := l.check(); err != nil {
		return Terminal{}, err
	}
	l.admin.Lock()
	defer l.admin.Unlock()

	idx := l.terminals.Load()
	old, ok := idx.byID[terminalID]
	if !ok {
		return Terminal{}, refuse(CodeNotFound, "terminal %q does not exist", terminalID)
	}
	if _, ok := idx.byHash[keyHash]; ok {
		return Terminal{}, refuse(CodeConflict, "the new key of terminal %q is already in use", terminalID)
	}
	t := *old
	t.PreviousKeyHash, t.PreviousUntil = old.KeyHash, l.now().Add(grace)
	t.KeyHash = keyHash
	rec := AdminAction{Actor: who, Action: ActionTerminalKeyRotate, Object: "terminal/" + t.ID,
		Before: terminalAuditJSON(old), After: terminalAuditJSON(&t)}
	if err := l.putTerminalLocked(t, &rec); err != nil {
		return Terminal{}, err
	}
	return t, nil
}

func (l *Ledger) putTerminalLocked(t Terminal, rec *AdminAction) error {
	value, err := json.Marshal(terminalJSON(t))
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode terminal: %v", err))
	}
	b := l.db.NewBatch()
	b.Set(append([]byte{tableTerminal}, t.ID...), value, nil)
	if err := l.commitAdmin(b, rec); err != nil {
		return err
	}
	l.installTerminal(t)
	return nil
}

// installTerminal publishes a terminal after its record is durable.
func (l *Ledger) installTerminal(t Terminal) {
	old := l.terminals.Load()
	idx := &terminalIndex{
		byID:   make(map[string]*Terminal, len(old.byID)+1),
		byHash: make(map[[32]byte]*Terminal, len(old.byHash)+2),
	}
	for k, v := range old.byID {
		if k != t.ID {
			idx.byID[k] = v
		}
	}
	for k, v := range old.byHash {
		if v.ID != t.ID {
			idx.byHash[k] = v
		}
	}
	idx.byID[t.ID] = &t
	idx.byHash[t.KeyHash] = &t
	if !t.PreviousUntil.IsZero() {
		idx.byHash[t.PreviousKeyHash] = &t
	}
	l.terminals.Store(idx)
}

// TerminalByKey finds the terminal whose current key, or previous key within
// its grace period, hashes to keyHash. The hashes are compared in constant
// time after the map lookup.
func (l *Ledger) TerminalByKey(keyHash [32]byte) (Terminal, bool) {
	t, ok := l.terminals.Load().byHash[keyHash]
	if !ok {
		return Terminal{}, false
	}
	if subtle.ConstantTimeCompare(t.KeyHash[:], keyHash[:]) == 1 {
		return *t, true
	}
	if subtle.ConstantTimeCompare(t.PreviousKeyHash[:], keyHash[:]) == 1 && l.now().Before(t.PreviousUntil) {
		return *t, true
	}
	return Terminal{}, false
}

// Terminal returns a terminal by id.
func (l *Ledger) Terminal(id string) (Terminal, bool) {
	t, ok := l.terminals.Load().byID[id]
	if !ok {
		return Terminal{}, false
	}
	return *t, true
}

// Terminals returns every terminal.
func (l *Ledger) Terminals() []Terminal {
	idx := l.terminals.Load()
	out := make([]Terminal, 0, len(idx.byID))
	for _, t := range idx.byID {
		out = append(out, *t)
	}
	return out
}

// storeRecord and terminalRecord are the stored JSON forms.
type storeRecord struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	BIN        string `json:"bin"`
	City       string `json:"city"`
	BankBIC    string `json:"bank_bic"`
	IBAN       string `json:"iban"`
	DiscountBP int64  `json:"discount_bp"`
}

func storeJSON(s Store) storeRecord { return storeRecord(s) }

type terminalRecord struct {
	ID              string    `json:"id"`
	StoreID         string    `json:"store_id"`
	KeyHash         []byte    `json:"key_hash"`
	CreatedAt       time.Time `json:"created_at"`
	PreviousKeyHash []byte    `json:"previous_key_hash,omitempty"`
	PreviousUntil   time.Time `json:"previous_until,omitzero"`
}

func terminalJSON(t Terminal) terminalRecord {
	r := terminalRecord{ID: t.ID, StoreID: t.StoreID, KeyHash: t.KeyHash[:], CreatedAt: t.CreatedAt}
	if !t.PreviousUntil.IsZero() {
		r.PreviousKeyHash, r.PreviousUntil = t.PreviousKeyHash[:], t.PreviousUntil
	}
	return r
}

func (r terminalRecord) terminal() (Terminal, error) {
	t := Terminal{ID: r.ID, StoreID: r.StoreID, CreatedAt: r.CreatedAt, PreviousUntil: r.PreviousUntil}
	if len(r.KeyHash) != 32 || r.PreviousKeyHash != nil && len(r.PreviousKeyHash) != 32 {
		return Terminal{}, fmt.Errorf("cannot decode terminal %q: key hash of wrong length", r.ID)
	}
	copy(t.KeyHash[:], r.KeyHash)
	copy(t.PreviousKeyHash[:], r.PreviousKeyHash)
	return t, nil
}
