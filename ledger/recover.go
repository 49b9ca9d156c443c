package ledger

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"

	"github.com/cockroachdb/pebble/v2"

	"azyq/domain"
)

// recover rebuilds memory from Pebble: one read of each table, no replay of
// history. It runs before the ledger is shared, so it takes no locks.
func (l *Ledger) recover() error {
	steps := []struct {
		name string
		fn   func() error
	}{
		{"format version", l.recoverVersion},
		{"accounts", l.recoverAccounts},
		{"stores", l.recoverStores},
		{"terminals", l.recoverTerminals},
		{"vouchers", l.recoverVouchers},
		{"used tokens", l.recoverUsedTokens},
		{"idempotency keys", l.recoverIdempotencyKeys},
		{"sequence", l.recoverSequence},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return fmt.Errorf("cannot recover %s: %w", s.name, err)
		}
	}
	return nil
}

func (l *Ledger) recoverVersion() error {
	val, ok, err := l.get(versionKey)
	if err != nil {
		return err
	}
	if ok {
		if string(val) != formatVersion {
			return fmt.Errorf("data directory has format %q, this build reads %q: "+
				"use a build that matches it or a new --data directory", val, formatVersion)
		}
		return nil
	}
	it, err := l.db.NewIter(nil)
	if err != nil {
		return err
	}
	empty := !it.First()
	if err := it.Close(); err != nil {
		return err
	}
	if !empty {
		return errors.New("data directory holds data without a format version: not an azyq ledger")
	}
	if l.readOnly {
		return nil
	}
	b := l.db.NewBatch()
	b.Set(versionKey, []byte(formatVersion), nil)
	return l.commit(b)
}

func (l *Ledger) recoverAccounts() error {
	lo, hi := tableBounds(tableAccount)
	return l.scan(lo, hi, func(k, v []byte) error {
		n, err := decodeInt64(v)
		if err != nil {
			return err
		}
		l.accounts.add(string(k[1:]), domain.Tiyn(n))
		return nil
	})
}

func (l *Ledger) recoverStores() error {
	lo, hi := tableBounds(tableStore)
	return l.scan(lo, hi, func(k, v []byte) error {
		var r storeRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("cannot decode store %q: %w", k[1:], err)
		}
		l.installStore(Store(r))
		return nil
	})
}

func (l *Ledger) recoverTerminals() error {
	lo, hi := tableBounds(tableTerminal)
	return l.scan(lo, hi, func(k, v []byte) error {
		var r terminalRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("cannot decode terminal %q: %w", k[1:], err)
		}
		t, err := r.terminal()
		if err != nil {
			return err
		}
		l.installTerminal(t)
		return nil
	})
}

// recoverVouchers loads the voucher table. Ids are dense, so a gap means a
// lost record and stops recovery. This is most of the start-up time, so it
// allocates nothing per voucher: family ids go to the string slab, city
// names are looked up without conversion, and the family index is left
// to be built when issuance first needs it (Ledger.familiesLocked).
func (l *Ledger) recoverVouchers() error {
	lo, hi := tableBounds(tableVoucher)
	cities := []string{}
	last := VoucherID(0)
	var r voucherRecord
	err := l.scan(lo, hi, func(k, val []byte) error {
		if len(k) != 5 {
			return fmt.Errorf("voucher key %x: %w", k, errCorrupt)
		}
		id := VoucherID(binary.BigEndian.Uint32(k[1:]))
		if id != last+1 {
			return fmt.Errorf("voucher %s follows %s: %w", id, last, errCorrupt)
		}
		last = id
		family, city, err := decodeVoucherInto(val, &r)
		if err != nil {
			return fmt.Errorf("voucher %s: %w", id, err)
		}
		cityID, ok := l.issue.cityIDs[string(city)]
		if !ok {
			if cityID, err = l.cityLocked(string(city), &cities); err != nil {
				return err
			}
		}
		v := l.vouchers.slot(id)
		v.voucherData = voucherData{
			state: r.state, members: r.members, city: cityID, month: r.month,
			balance: r.balance, spent: r.spent, lapsed: r.lapsed, face: r.face,
			activatedAt: timeNanos(r.activatedAt), familyID: l.issue.strings.clone(family),
		}
		return nil
	})
	if err != nil {
		return err
	}
	l.cities.Store(&cities)
	if last > 0 {
		l.vouchers.publish(last)
	}
	return nil
}

// recoverIdempotencyKeys remembers the hash of every stored idempotency
// key (invariant 1 of knownKeys). They count as created now: their
// generation goes once a Prune a retention from now has removed them all.
func (l *Ledger) recoverIdempotencyKeys() error {
	now := l.now()
	lo, hi := tableBounds(tableIdem)
	return l.scan(lo, hi, func(k, _ []byte) error {
		l.idem.known.add(maphash.Bytes(l.idem.seed, k[1:]), now)
		return nil
	})
}

// recoverUsedTokens remembers the tokens consumed by redemptions whose
// tokens have not expired. A token lives at most tokenLifetimeMax, so only
// redemptions committed in that window, read newest first, can hold one;
// the scan stops a margin past it, since sequence order follows commit
// order only roughly.
func (l *Ledger) recoverUsedTokens() error {
	now := l.now()
	oldest := now.Add(-tokenLifetimeMax - tokenScanMargin)
	it, err := l.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte{tableMovement}, UpperBound: []byte{tableMovement + 1},
	})
	if err != nil {
		return err
	}
	for ok := it.Last(); ok; ok = it.Prev() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		red, _, err := decodeMovementRecord(binary.BigEndian.Uint64(it.Key()[1:]), v)
		if err != nil {
			it.Close()
			return err
		}
		if red == nil {
			continue
		}
		if red.CreatedAt.Before(oldest) {
			break
		}
		if red.token.Expires.After(now) {
			l.nonces.add(red.token)
		}
	}
	return it.Close()
}

// recoverSequence finds the last sequence number and the open period: the
// larger of the one Cut recorded and the newest one a movement carries.
func (l *Ledger) recoverSequence() error {
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tableMovement}, UpperBound: []byte{tableMovement + 1}})
	if err != nil {
		return err
	}
	if it.Last() {
		l.seq.Store(binary.BigEndian.Uint64(it.Key()[1:]))
	}
	if err := it.Close(); err != nil {
		return err
	}

	period := uint64(1)
	val, ok, err := l.get(openPeriodKey)
	if err != nil {
		return err
	}
	if ok && len(val) == 8 {
		period = binary.BigEndian.Uint64(val)
	}
	it, err = l.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tablePeriod}, UpperBound: []byte{tablePeriod + 1}})
	if err != nil {
		return err
	}
	if it.Last() {
		period = max(period, binary.BigEndian.Uint64(it.Key()[1:9]))
	}
	if err := it.Close(); err != nil {
		return err
	}
	l.epoch.Store(&epoch{period: period})
	return nil
}
