package ledger

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/dgraph-io/ristretto/v2"
)

// Idempotency keys are scoped to a terminal. While a request runs, its key
// is reserved in memory; the answer is written to Pebble in the same batch
// as the change it describes (or alone, for a refusal), and the
// reservation is released only after that batch has synced. So a second
// request with the key either finds the reservation (request in progress)
// or a durable record, never a record that a crash could take back.

// Reservation holds an idempotency key while its request runs. Release it
// when the request is answered.
type Reservation struct {
	l           *Ledger
	shard       *reservationShard
	hash        uint64 // of mapKey, with the reservations' seed
	mapKey      string
	terminal    string
	key         string
	fingerprint [32]byte
}

type reservations struct {
	seed    maphash.Seed
	shards  [reservationShards]reservationShard
	known   knownKeys
	replays *ristretto.Cache[string, *idemRecord]
}

// replayCacheMax bounds the replay cache, in bytes of cached answers.
const replayCacheMax = 32 << 20

type reservationShard struct {
	sync.Mutex
	held map[string]struct{}
}

const reservationShards = 64

func (r *reservations) init(now time.Time) {
	r.seed = maphash.MakeSeed()
	for i := range r.shards {
		r.shards[i].held = make(map[string]struct{})
	}
	r.known.init(now)
	replays, err := ristretto.NewCache(&ristretto.Config[string, *idemRecord]{
		NumCounters: 100_000,
		MaxCost:     replayCacheMax,
		BufferItems: 64,
	})
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot make the replay cache: %v", err))
	}
	r.replays = replays
}

func (r *reservations) count() int {
	n := 0
	for i := range r.shards {
		s := &r.shards[i]
		s.Lock()
		n += len(s.held)
		s.Unlock()
	}
	return n
}

// Reserve looks up an idempotency key of a terminal. It returns one of:
//   - a Reservation: the key is new; run the request and Release after;
//   - a Response: the key was used with the same fingerprint; replay it;
//   - a Refusal: CodeRequestInProgress while the first request runs, or
//     CodeIdempotencyKeyReused when the key came with another request.
func (l *Ledger) Reserve(terminal, key string, fingerprint [32]byte) (*Reservation, *Response, error) {
	if err := l.check(); err != nil {
		return nil, nil, err
	}
	mapKey := terminal + "\x00" + key
	hash := maphash.String(l.idem.seed, mapKey)
	shard := &l.idem.shards[hash%reservationShards]
	shard.Lock()
	if _, busy := shard.held[mapKey]; busy {
		shard.Unlock()
		return nil, nil, refuse(CodeRequestInProgress, "a request with this Idempotency-Key is still being processed")
	}
	shard.held[mapKey] = struct{}{}
	shard.Unlock()
	res := &Reservation{l: l, shard: shard, hash: hash, mapKey: mapKey, terminal: terminal, key: key, fingerprint: fingerprint}

	// A key no record was ever stored under needs no read: that is nearly
	// every request.
	if !l.idem.known.has(hash) {
		return res, nil, nil
	}

	// A key retried more than once is answered from the replay cache.
	// Holding the reservation, any record found in Pebble is durable.
	rec, cached := l.idem.replays.Get(mapKey)
	if cached && !l.now().Before(rec.created.Add(l.prog.IdempotencyRetention)) {
		// Past its retention by the ledger's clock (the cache's own TTL
		// runs on the wall clock): Pebble decides whether it is pruned yet.
		cached = false
	}
	if !cached {
		val, ok, err := l.get(idemKey(nil, terminal, key))
		if err != nil {
			res.Release()
			return nil, nil, err
		}
		if !ok {
			return res, nil, nil
		}
		stored, err := decodeIdem(val)
		if err != nil {
			res.Release()
			return nil, nil, l.fail(err)
		}
		rec = &stored
		l.rememberReplay(mapKey, rec)
	}
	res.Release()
	if rec.fingerprint != fingerprint {
		return nil, nil, refuse(CodeIdempotencyKeyReused,
			"this Idempotency-Key was already used with a different request")
	}
	resp := rec.resp
	return nil, &resp, nil
}

// rememberReplay caches a durable record that was just replayed: a till
// that retries once after a timeout often retries again. The cache holds
// only what was read from Pebble under a reservation, so it never answers
// with an unsynced record, and an entry lives no longer than the record's
// retention. Caching every answer as it is written was rejected: it would
// copy each response body on the money path for the rare retry.
func (l *Ledger) rememberReplay(mapKey string, rec *idemRecord) {
	ttl := rec.created.Add(l.prog.IdempotencyRetention).Sub(l.now())
	if ttl <= 0 {
		return
	}
	cost := int64(len(mapKey) + len(rec.resp.Body) + 96)
	l.idem.replays.SetWithTTL(mapKey, rec, cost, ttl)
}

// Release frees the key for later requests.
func (r *Reservation) Release() {
	r.shard.Lock()
	delete(r.shard.held, r.mapKey)
	r.shard.Unlock()
}

// write adds the answer to a batch.
func (r *Reservation) write(b *pebble.Batch, resp Response, now time.Time) {
	r.l.idem.known.add(r.hash, now)
	rec := idemRecord{fingerprint: r.fingerprint, created: now, resp: resp}

	// The batch copies keys and values: one pooled buffer serves both.
	buf := getBuf()
	defer putBuf(buf)
	k := idemKey((*buf)[:0], r.terminal, r.key)
	n := len(k)
	k = rec.encode(k)
	b.Set(k[:n], k[n:], nil)
	k = idemAgeKey(k[:0], now, r.terminal, r.key)
	b.Set(k, nil, nil)
	*buf = k
}

// SaveResponse stores an answer that moved no money (a decline) under a
// reserved key, synced before it returns.
func (l *Ledger) SaveResponse(r *Reservation, resp Response) error {
	b := l.db.NewBatch()
	r.write(b, resp, l.now())
	return l.commit(b)
}

// Prune forgets idempotency records older than the programme's retention and
// used tokens that have expired. It returns how many records it removed.
// The gateway calls it on a timer; tests call it with a moved clock.
func (l *Ledger) Prune() (int, error) {
	if err := l.check(); err != nil {
		return 0, err
	}
	now := l.now()
	cutoff := now.Add(-l.prog.IdempotencyRetention)
	removed := 0

	b := l.db.NewBatch()
	lo, _ := tableBounds(tableIdemAge)
	hi := idemAgeKey(nil, cutoff, "", "")
	err := l.scan(lo, hi, func(k, _ []byte) error {
		rest := k[9:]
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return errCorrupt
		}
		b.Delete(idemKey(nil, string(rest[:i]), string(rest[i+1:])), nil)
		b.Delete(k, nil)
		removed++
		return nil
	})
	if err != nil {
		b.Close()
		return 0, err
	}

	if err := l.commit(b); err != nil {
		return 0, err
	}
	l.nonces.prune(now)
	l.idem.known.prune(cutoff, now, l.prog.IdempotencyRetention/4)
	return removed, nil
}

// knownKeys remembers, as 64-bit hashes, the idempotency keys that may have
// a stored record, so that Reserve reads Pebble only for those. A hash that
// is present means "maybe" (another key may share it) and Reserve reads;
// one that is absent means no record exists, and a new key, which nearly
// every request brings, is answered from memory. A Pebble read of a missing
// key searches every memtable and was a third of an idempotent
// redemption's CPU.
//
// The hashes live in generations. Invariants:
//
//  1. Every key with a stored record has its hash in a live generation:
//     write adds it before the batch is committed, and recovery adds every
//     stored key.
//  2. A generation is dropped only after a Prune committed the deletion of
//     every record created before its cutoff, and only if every hash it
//     holds was added with a creation time before that cutoff. A key used
//     again after its record was pruned lands in the current generation.
//
// Rejected: deleting each pruned key's hash after Prune's commit. A key
// used again between that commit and the deletion would lose its hash while
// its new record lives, and a retry of it would be processed twice.
type knownKeys struct {
	mu   sync.Mutex                  // serialises changes of gens
	gens atomic.Pointer[[]*knownGen] // oldest first; the last takes new hashes
}

// knownGen is one generation of hashes.
type knownGen struct {
	started time.Time
	newest  atomic.Int64 // the latest creation time added, unix nanoseconds
	shards  [reservationShards]struct {
		sync.Mutex
		m map[uint64]struct{}
	}
}

func newKnownGen(now time.Time) *knownGen {
	g := &knownGen{started: now}
	for i := range g.shards {
		g.shards[i].m = make(map[uint64]struct{})
	}
	return g
}

func (k *knownKeys) init(now time.Time) { k.gens.Store(&[]*knownGen{newKnownGen(now)}) }

func (k *knownKeys) has(h uint64) bool {
	for _, g := range *k.gens.Load() {
		s := &g.shards[h%reservationShards]
		s.Lock()
		_, ok := s.m[h]
		s.Unlock()
		if ok {
			return true
		}
	}
	return false
}

// add remembers a hash whose record is created at created.
//
// If prune dropped the generation meanwhile, the hash is added again to
// the current one: prune sees newest only if it was raised before the
// check below, and then it keeps the generation.
func (k *knownKeys) add(h uint64, created time.Time) {
	for {
		gens := *k.gens.Load()
		g := gens[len(gens)-1]
		for c := created.UnixNano(); ; {
			n := g.newest.Load()
			if c <= n || g.newest.CompareAndSwap(n, c) {
				break
			}
		}
		s := &g.shards[h%reservationShards]
		s.Lock()
		s.m[h] = struct{}{}
		s.Unlock()
		if slices.Contains(*k.gens.Load(), g) {
			return
		}
	}
}

// prune runs after a Prune has committed the deletion of every record
// created before cutoff: it drops the generations that hold only such
// records and starts a new one when the current one is older than span.
//
// A generation being replaced may still take an add from a writer that
// loaded the old list; newest covers that add, and the generation stays
// in the list until newest is before a cutoff.
func (k *knownKeys) prune(cutoff, now time.Time, span time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	old := *k.gens.Load()
	gens := make([]*knownGen, 0, len(old)+1)
	for i, g := range old {
		if i < len(old)-1 && g.newest.Load() < cutoff.UnixNano() {
			continue
		}
		gens = append(gens, g)
	}
	if cur := gens[len(gens)-1]; now.Sub(cur.started) >= span {
		gens = append(gens, newKnownGen(now))
	}
	k.gens.Store(&gens)
}

func (k *knownKeys) count() int {
	n := 0
	for _, g := range *k.gens.Load() {
		for i := range g.shards {
			s := &g.shards[i]
			s.Lock()
			n += len(s.m)
			s.Unlock()
		}
	}
	return n
}
