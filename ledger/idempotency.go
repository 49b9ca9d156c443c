package ledger

import (
	"bytes"
	"hash/maphash"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
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
	mapKey      string
	terminal    string
	key         string
	fingerprint [32]byte
}

type reservations struct {
	seed   maphash.Seed
	shards [reservationShards]reservationShard
}

type reservationShard struct {
	sync.Mutex
	held map[string]struct{}
}

const reservationShards = 64

func (r *reservations) init() {
	r.seed = maphash.MakeSeed()
	for i := range r.shards {
		r.shards[i].held = make(map[string]struct{})
	}
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
	shard := &l.idem.shards[maphash.String(l.idem.seed, mapKey)%reservationShards]
	shard.Lock()
	if _, busy := shard.held[mapKey]; busy {
		shard.Unlock()
		return nil, nil, refuse(CodeRequestInProgress, "a request with this Idempotency-Key is still being processed")
	}
	shard.held[mapKey] = struct{}{}
	shard.Unlock()
	res := &Reservation{l: l, shard: shard, mapKey: mapKey, terminal: terminal, key: key, fingerprint: fingerprint}

	// Holding the reservation, any record found is durable.
	val, ok, err := l.get(idemKey(nil, terminal, key))
	if err != nil {
		res.Release()
		return nil, nil, err
	}
	if !ok {
		return res, nil, nil
	}
	res.Release()
	rec, err := decodeIdem(val)
	if err != nil {
		return nil, nil, l.fail(err)
	}
	if rec.fingerprint != fingerprint {
		return nil, nil, refuse(CodeIdempotencyKeyReused,
			"this Idempotency-Key was already used with a different request")
	}
	return nil, &rec.resp, nil
}

// Release frees the key for later requests.
func (r *Reservation) Release() {
	r.shard.Lock()
	delete(r.shard.held, r.mapKey)
	r.shard.Unlock()
}

// write adds the answer to a batch.
func (r *Reservation) write(b *pebble.Batch, resp Response, now time.Time) {
	rec := idemRecord{fingerprint: r.fingerprint, created: now, resp: resp}
	b.Set(idemKey(nil, r.terminal, r.key), rec.encode(nil), nil)
	b.Set(idemAgeKey(nil, now, r.terminal, r.key), nil, nil)
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

	lo, _ = tableBounds(tableUsedToken)
	hi = usedTokenKey(nil, Token{Expires: now})
	b.DeleteRange(lo, hi, nil)
	if err := l.commit(b); err != nil {
		return 0, err
	}
	l.nonces.prune(now)
	return removed, nil
}
