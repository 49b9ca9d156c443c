// Package ledger owns every voucher's state and every movement of money in
// azyq: issuance, activation, redemptions, refunds, month-end lapse and the
// journal that settlement cuts. The gateway is a thin shell over it.
//
// # Design
//
// Authoritative balances live in plain Go memory, one struct per voucher in a
// chunked arena that never moves, each with its own mutex. Pebble is the
// write-ahead persistence: every change is one Pebble batch holding all that
// the change needs (the voucher's new state, the movement record, which
// also names the QR token it consumed, and its period-index entry, the
// idempotency record, the account merges), committed with Sync. A
// redemption writes three keys and a merge, plus two keys when it carries an
// idempotency key; each key is a memtable insert, the largest CPU cost after
// the fsync itself, which is why used tokens have no table of their own.
//
// The commit path of a redemption, in order:
//
//  1. Price the basket; this needs no lock.
//  2. Lock the one voucher. No global lock is ever taken on this path.
//  3. Check the token is unused, the voucher active and in its window, and
//     the balance sufficient; decide the approved amount.
//  4. Enter the open settlement period, take a sequence number, build the
//     batch, commit it with Sync. Pebble's commit pipeline groups concurrent
//     synced commits into one WAL fsync, so throughput comes from
//     concurrency, not from giving up durability.
//  5. Only after the commit returns: update memory, leave the period,
//     unlock, answer.
//
// # Invariants
//
//  1. Memory never holds state that is not durable: it changes only after the
//     batch that describes the change has synced.
//  2. Pebble makes a batch readable before its sync completes. The ledger
//     reads Pebble only where no unsynced write can be seen: a movement
//     record is re-read under its voucher's lock (whose holder keeps the
//     lock through its sync); an idempotency record is read only while its
//     key is reserved in memory (whose holder keeps the reservation through
//     its sync); a settlement period is read only after Cut has waited for
//     every commit tagged with it.
//  3. A failed commit or sync stops the ledger (fail-stop): every later call
//     returns ErrUnavailable. Memory was not changed by the failed call, but
//     Pebble may hold the batch unsynced, so nothing is served again until a
//     restart rebuilds memory from what is on disk. Pebble reports a failed
//     WAL write or sync by calling its logger's Fatalf in the committing
//     goroutine; the commit recovers that panic into this stop. Raised in
//     a background flush or compaction, it ends the process instead.
//  4. Per voucher: face value = balance + spent + lapsed, balance ≥ 0, where
//     spent is what it paid net of refunds credited back.
//  5. Double entry: voucher balances plus every named account (programme,
//     lapsed, shop payables, bank clearing) sum to zero at every quiescent
//     instant; Pebble's merge operator keeps the named accounts, so a
//     shop's payable is never a read-modify-write under a shop-wide lock.
//  6. Every movement carries the settlement period that was open when it
//     committed; Cut closes a period only once every commit tagged with it
//     has finished, so each movement falls in exactly one period.
//
// # Rejected designs
//
// A single ledger mutex (or one goroutine applying all changes) is simpler
// and makes the invariants trivial, but it serialises the fsync wait of every
// till in the country behind one another; per-voucher locks let unrelated
// redemptions share fsyncs. Replaying an append-only log at start-up was also
// rejected: it makes recovery time grow with history. The voucher table holds
// current state, so start-up reads one record per voucher.
package ledger
