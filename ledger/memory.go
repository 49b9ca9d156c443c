package ledger

import (
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

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

// assertDurableLocked is the read side of the voucher's paired assertion
// (the write side is assertLocked): with the invariants build tag, the
// record just committed is read back and must equal memory. It costs a
// Pebble read per commit, so production builds skip it.
func (l *Ledger) assertDurableLocked(id VoucherID, v *voucher) {
	if !invariantsEnabled {
		return
	}
	val, ok, err := l.get(voucherKey(nil, id))
	if err != nil {
		return // the ledger has stopped; nothing more to compare
	}
	if !ok {
		panic(fmt.Sprintf("BUG: voucher %s has no record after its commit", id))
	}
	stored, err := decodeVoucher(val)
	if err != nil {
		panic(fmt.Sprintf("BUG: voucher %s: its record does not decode after its commit: %v", id, err))
	}
	mem := v.recordLocked(*l.cities.Load())
	if stored.balance != mem.balance || stored.spent != mem.spent || stored.lapsed != mem.lapsed ||
		stored.face != mem.face || stored.state != mem.state {
		panic(fmt.Sprintf("BUG: voucher %s: memory %+v differs from its record %+v", id, mem, stored))
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
// shard locks only guard the maps. On disk a used token is part of the
// redemption that consumed it; recovery reads back the redemptions of the
// last tokenLifetimeMax.
//
// A table of used tokens of its own was rejected: it cost a fifth key per
// redemption, about 20 % of the ledger's throughput, for records that only
// recovery reads.
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

// at returns the slot of id, published or not. Only issuance and recovery,
// which write unpublished slots, and the family index, which they fill,
// use it.
func (a *arena) at(id VoucherID) *voucher {
	slot := uint32(id) - 1
	return &(*a.chunks.Load())[slot>>chunkBits][slot&(chunkSize-1)]
}

// familyIndex finds a voucher by month and family id, which keeps issuance
// idempotent. It is guarded by Ledger.issue's mutex.
//
// It is an open-addressing hash table (linear probing) of voucher ids. A
// slot holds only the id: the key, month and family id, is read from the
// voucher itself, where it never changes once issued. So an entry costs
// 4 bytes at a load of at most 3/4, where a map[string]VoucherID per month
// cost a string header, a hash-table slot and a rehash on every doubling:
// about 35 bytes a voucher, and half of the start-up time of a million
// vouchers.
type familyIndex struct {
	built  bool // filled from the arena (see Ledger.familiesLocked)
	seed   maphash.Seed
	slots  []VoucherID // 0 is empty; the length is a power of two
	n      int
	months map[domain.Month]int // vouchers of each month
}

const familyIndexSlotsMin = 1024

func (x *familyIndex) init() {
	x.seed = maphash.MakeSeed()
	x.months = make(map[domain.Month]int)
}

func (x *familyIndex) hash(m domain.Month, family string) uint64 {
	return maphash.String(x.seed, family) ^ uint64(m)*0x9e3779b97f4a7c15
}

// find returns the voucher of family for month, or 0.
func (x *familyIndex) find(a *arena, m domain.Month, family string) VoucherID {
	if len(x.slots) == 0 {
		return 0
	}
	mask := uint64(len(x.slots) - 1)
	for i := x.hash(m, family) & mask; ; i = (i + 1) & mask {
		id := x.slots[i]
		if id == 0 {
			return 0
		}
		if v := a.at(id); v.month == m && v.familyID == family {
			return id
		}
	}
}

// insert adds a voucher whose month and family id are set and not yet
// indexed.
func (x *familyIndex) insert(a *arena, id VoucherID) {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.reserve(a, 2*(x.n+1))
	}
	v := a.at(id)
	x.place(id, x.hash(v.month, v.familyID))
	x.n++
	x.months[v.month]++
}

func (x *familyIndex) place(id VoucherID, h uint64) {
	mask := uint64(len(x.slots) - 1)
	i := h & mask
	for x.slots[i] != 0 {
		i = (i + 1) & mask
	}
	x.slots[i] = id
}

// reserve makes room for n vouchers without growing again.
func (x *familyIndex) reserve(a *arena, n int) {
	size := familyIndexSlotsMin
	for size*3 < n*4 {
		size *= 2
	}
	if size <= len(x.slots) {
		return
	}
	old := x.slots
	x.slots = make([]VoucherID, size)
	for _, id := range old {
		if id != 0 {
			v := a.at(id)
			x.place(id, x.hash(v.month, v.familyID))
		}
	}
}

// stringSlab copies strings into large shared blocks: one allocation per
// block instead of one per voucher, fewer objects for the collector, and
// never a reference into a caller's (possibly reused) request buffer.
// Bytes in a block are never written again once appended.
type stringSlab struct{ block []byte }

const stringSlabBlock = 64 << 10

func (s *stringSlab) clone(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(s.block)+len(b) > cap(s.block) {
		s.block = make([]byte, 0, max(stringSlabBlock, len(b)))
	}
	start := len(s.block)
	s.block = append(s.block, b...)
	return unsafe.String(&s.block[start], len(b))
}

func (s *stringSlab) cloneString(v string) string {
	return s.clone(unsafe.Slice(unsafe.StringData(v), len(v)))
}
