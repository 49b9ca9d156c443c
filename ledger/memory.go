package ledger

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"azyq/domain"
)

// voucherState is the stored lifecycle state of a voucher. The status a
// client sees also depends on the clock (see Ledger.statusLocked).
type voucherState uint8

const (
	stateIssued voucherState = iota
	stateActive
	stateLapsed // the month ended and the remainder moved to the lapsed account
)

// voucher is one voucher in memory. Its fields are guarded by mu, except the
// immutable ones (family, month, members, face, city), which are written
// before the voucher is published and never change.
//
// The struct is kept small: a country's month is a few million of them.
type voucher struct {
	mu sync.Mutex
	voucherData
}

// voucherData is a voucher's state without its lock, so that a change can
// be prepared on a copy and applied only after it is durable.
type voucherData struct {
	state       voucherState
	members     uint8
	city        uint16
	month       domain.Month
	balance     domain.Tiyn
	spent       domain.Tiyn
	lapsed      domain.Tiyn
	face        domain.Tiyn
	activatedAt int64 // unix nanoseconds, zero until activated
	familyID    string
}

// assertLocked checks invariant 4 where it is written.
func (v *voucher) assertLocked(id VoucherID) {
	if v.balance < 0 || v.spent < 0 || v.lapsed < 0 || v.face != v.balance+v.spent+v.lapsed {
		panic(fmt.Sprintf("BUG: voucher %s: face %d != balance %d + spent %d + lapsed %d",
			id, v.face, v.balance, v.spent, v.lapsed))
	}
}

func (v *voucherData) recordLocked(cities []string) voucherRecord {
	r := voucherRecord{
		month: v.month, members: v.members, state: v.state, face: v.face,
		balance: v.balance, spent: v.spent, lapsed: v.lapsed, familyID: v.familyID,
		city: cities[v.city],
	}
	if v.activatedAt != 0 {
		r.activatedAt = time.Unix(0, v.activatedAt)
	}
	return r
}

// arena holds vouchers in fixed chunks that never move, so a *voucher stays
// valid while new chunks are added. Voucher id n lives at slot n-1.
type arena struct {
	chunks atomic.Pointer[[]*[chunkSize]voucher]
	n      atomic.Uint32 // published vouchers; slots below it are readable
	grow   sync.Mutex
}

const (
	chunkBits = 14
	chunkSize = 1 << chunkBits
)

func (a *arena) len() int { return int(a.n.Load()) }

// get returns the voucher with the given id, or nil.
func (a *arena) get(id VoucherID) *voucher {
	if id == 0 || uint32(id) > a.n.Load() {
		return nil
	}
	slot := uint32(id) - 1
	return &(*a.chunks.Load())[slot>>chunkBits][slot&(chunkSize-1)]
}

// slot returns the unpublished slot for id, adding a chunk when needed. Only
// the single writer (issuance or recovery) calls it.
func (a *arena) slot(id VoucherID) *voucher {
	a.grow.Lock()
	defer a.grow.Unlock()
	slot := uint32(id) - 1
	chunks := a.chunks.Load()
	if chunks == nil {
		chunks = &[]*[chunkSize]voucher{}
	}
	for int(slot>>chunkBits) >= len(*chunks) {
		grown := append(append([]*[chunkSize]voucher(nil), *chunks...), new([chunkSize]voucher))
		chunks = &grown
		a.chunks.Store(chunks)
	}
	return &(*chunks)[slot>>chunkBits][slot&(chunkSize-1)]
}

// publish makes vouchers up to id readable.
func (a *arena) publish(id VoucherID) {
	if uint32(id) < a.n.Load() {
		panic(fmt.Sprintf("BUG: publishing voucher %d below %d", id, a.n.Load()))
	}
	a.n.Store(uint32(id))
}

// usedTokens remembers the nonces of consumed QR tokens until the tokens
// expire. A token is checked and consumed under its voucher's lock, so the
// shard locks only guard the maps.
type usedTokens struct {
	shards [usedTokenShards]struct {
		sync.Mutex
		m map[usedToken]int64 // → expiry, unix nanoseconds
	}
}

const usedTokenShards = 64

type usedToken struct {
	voucher VoucherID
	nonce   uint64
}

func (u *usedTokens) init() {
	for i := range u.shards {
		u.shards[i].m = make(map[usedToken]int64)
	}
}

func (u *usedTokens) used(t Token) bool {
	s := &u.shards[uint32(t.Voucher)%usedTokenShards]
	s.Lock()
	_, ok := s.m[usedToken{t.Voucher, t.Nonce}]
	s.Unlock()
	return ok
}

func (u *usedTokens) add(t Token) {
	s := &u.shards[uint32(t.Voucher)%usedTokenShards]
	s.Lock()
	s.m[usedToken{t.Voucher, t.Nonce}] = t.Expires.UnixNano()
	s.Unlock()
}

// prune forgets tokens that expired before now and returns how many remain.
func (u *usedTokens) prune(now time.Time) int {
	n := 0
	for i := range u.shards {
		s := &u.shards[i]
		s.Lock()
		for k, exp := range s.m {
			if exp < now.UnixNano() {
				delete(s.m, k)
			}
		}
		n += len(s.m)
		s.Unlock()
	}
	return n
}

// epoch is one settlement period as writers see it: the number stamped on
// the movements they commit, and how many of them are still committing.
type epoch struct {
	period   uint64
	inflight atomic.Int64
	closed   atomic.Bool
}

// enterPeriod registers a commit with the open period. The caller must call
// leave on the result once its commit has finished, successfully or not.
func (l *Ledger) enterPeriod() *epoch {
	for {
		e := l.epoch.Load()
		e.inflight.Add(1)
		// Cut sets closed before it counts; seeing it unset here means
		// Cut will count this commit and wait for it.
		if !e.closed.Load() {
			return e
		}
		e.inflight.Add(-1)
	}
}

func (e *epoch) leave() { e.inflight.Add(-1) }

func (u *usedTokens) count() int {
	n := 0
	for i := range u.shards {
		s := &u.shards[i]
		s.Lock()
		n += len(s.m)
		s.Unlock()
	}
	return n
}
