package settlement

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"azyq/domain"
	"azyq/ledger"
)

// Cutoff closes every movement since the previous cut-off into one batch per
// bank and returns the cut-off with the ids of its batches (none when no
// money moved). See the package documentation for the steps.
func (s *Settlement) Cutoff() (*Cutoff, error) {
	s.cut.Lock()
	defer s.cut.Unlock()
	return s.cutoffLocked()
}

// RunDue runs a cut-off if one was scheduled after the last cut-off and at
// or before now: after downtime, the cut-offs that were missed are made up
// by one. It returns the cut-off, or nil when none was due.
func (s *Settlement) RunDue() (*Cutoff, error) {
	s.cut.Lock()
	defer s.cut.Unlock()
	due := s.prog.NextCutoff(s.cut.meta.LastCutoffAt)
	if s.now().Before(due) {
		return nil, nil
	}
	return s.cutoffLocked()
}

// NextDue returns when the next scheduled cut-off is due.
func (s *Settlement) NextDue() time.Time {
	s.cut.Lock()
	defer s.cut.Unlock()
	return s.prog.NextCutoff(s.cut.meta.LastCutoffAt)
}

// scheduleCheckMax bounds how long Run sleeps between looks at the clock, so
// a changed wall clock (or an injected one) is noticed.
const scheduleCheckMax = time.Minute

// Run runs cut-offs on the programme's schedule until ctx ends, the first
// at once if one was missed. A failed cut-off is logged and retried at the
// next look; the ledger's fail-stop makes every later one fail too.
func (s *Settlement) Run(ctx context.Context) {
	for {
		if _, err := s.RunDue(); err != nil {
			s.log.Error("scheduled cut-off failed", "err", err)
		}
		wait := min(s.NextDue().Sub(s.now()), scheduleCheckMax)
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// shopRun is a shop's running totals during a cut-off.
type shopRun struct {
	StoreTotal
	bank string
}

func (s *Settlement) cutoffLocked() (*Cutoff, error) {
	start := time.Now()
	m := s.cut.meta

	// Close the open period; from here on it never changes.
	closed, err := s.l.Cut()
	if err != nil {
		return nil, fmt.Errorf("cannot cut the ledger: %w", err)
	}
	at := s.now().In(s.prog.Location)
	from := m.LastSettled + 1
	cutDone := time.Now()

	// Add up the movements of every unsettled period per shop.
	shops := map[string]*shopRun{}
	var movements int
	err = s.l.Movements(from, closed, func(mv *ledger.Movement) error {
		r := shops[mv.StoreID]
		if r == nil {
			r = &shopRun{StoreTotal: StoreTotal{StoreID: mv.StoreID}}
			shops[mv.StoreID] = r
		}
		var err error
		if mv.Kind == ledger.KindRedemption {
			r.RedemptionCount++
			r.Gross, err = r.Gross.Add(mv.Amount)
		} else {
			r.RefundCount++
			r.Refunds, err = r.Refunds.Add(mv.Amount)
		}
		movements++
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read periods %d-%d: %w", from, closed, err)
	}

	// Settle each shop with its carry and group by bank.
	byBank := map[string][]*shopRun{}
	carries := map[string]domain.Tiyn{}
	for id, r := range shops {
		st, ok := s.l.Store(id)
		if !ok {
			return nil, fmt.Errorf("cannot settle store %q: it has movements but no record", id)
		}
		r.Name, r.BIN, r.IBAN, r.bank = st.Name, st.BIN, st.IBAN, st.BankBIC
		r.CarriedIn = s.cut.carry[id]
		if err := settleShop(&r.StoreTotal); err != nil {
			return nil, fmt.Errorf("cannot settle store %q: %w", id, err)
		}
		carries[id] = r.Net - r.Paid
		byBank[r.bank] = append(byBank[r.bank], r)
	}

	// Build one batch per bank, banks and shops in id order so that ids
	// are deterministic.
	banks := make([]string, 0, len(byBank))
	for bic := range byBank {
		banks = append(banks, bic)
	}
	slices.Sort(banks)
	next := m
	next.Cutoffs++
	c := &Cutoff{ID: CutoffID(next.Cutoffs), At: at, Batches: []string{}, FromPeriod: from, ToPeriod: closed}
	var batches []*Batch
	var writes []ledger.AuxWrite
	var postings []ledger.Posting
	for _, bic := range banks {
		next.Batches++
		b, err := buildBatch(BatchID(next.Batches), bic, byBank[bic])
		if err != nil {
			return nil, err
		}
		b.PeriodStart, b.PeriodEnd, b.CutoffID = m.LastCutoffAt, at, c.ID
		b.FromPeriod, b.ToPeriod, b.Status = from, closed, StatusReady
		for _, st := range b.Stores {
			if st.Paid > 0 {
				postings = append(postings, ledger.Posting{
					From: ledger.AccountStore(st.StoreID), To: ledger.AccountBank(bic), Amount: st.Paid})
			}
		}
		writes = append(writes, ledger.AuxWrite{Key: seqKey(batchPrefix, next.Batches), Value: encodeBatch(b)})
		c.Batches = append(c.Batches, b.ID)
		batches = append(batches, b)
	}

	// The carries that change, the cut-off and the progress record, all in
	// the batch that writes the batches (invariants 1 and 2).
	for id, carry := range carries {
		if carry == s.cut.carry[id] {
			continue
		}
		if carry == 0 {
			writes = append(writes, ledger.AuxWrite{Key: carryKey(id), Delete: true})
		} else {
			writes = append(writes, ledger.AuxWrite{Key: carryKey(id),
				Value: binary.BigEndian.AppendUint64(nil, uint64(carry))})
		}
	}
	cv, err := json.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode cut-off: %v", err))
	}
	writes = append(writes, ledger.AuxWrite{Key: seqKey(cutoffPrefix, next.Cutoffs), Value: cv})
	next.LastSettled, next.LastCutoffAt = closed, at
	writes = append(writes, s.metaWrite(next))
	if err := s.l.CommitAux(writes, postings); err != nil {
		return nil, fmt.Errorf("cannot commit cut-off %s: %w", c.ID, err)
	}

	// Durable: publish.
	s.cut.meta = next
	for id, carry := range carries {
		if carry == 0 {
			delete(s.cut.carry, id)
		} else {
			s.cut.carry[id] = carry
		}
	}
	s.mu.Lock()
	for _, b := range batches {
		h := *b
		h.Stores = nil
		s.publishLocked(&h)
	}
	s.mu.lastCutoff = at
	s.mu.Unlock()

	d := time.Since(start)
	s.metrics.cutoffSeconds.Observe(d.Seconds())
	s.metrics.batchesTotal.Add(float64(len(batches)))
	s.log.Info("cut-off", "cutoff", c.ID, "periods", fmt.Sprintf("%d-%d", from, closed),
		"movements", movements, "shops", len(shops), "batches", len(batches),
		"cut_wait", cutDone.Sub(start), "duration", d)
	return c, nil
}

// settleShop applies the carry rule to one shop's line: net = carried_in +
// gross − refunds, and a shop is never paid a negative amount, so paid =
// max(net, 0) and a negative net becomes the shop's carried_in next time.
func settleShop(t *StoreTotal) error {
	if t.CarriedIn > 0 {
		panic(fmt.Sprintf("BUG: store %q carries %d in: a carry is never positive", t.StoreID, t.CarriedIn))
	}
	net, err := t.CarriedIn.Add(t.Gross)
	if err == nil {
		net, err = net.Sub(t.Refunds)
	}
	if err != nil {
		return err
	}
	t.Net, t.Paid = net, max(net, 0)
	return nil
}

// buildBatch totals one bank's shops into a batch (invariant 5).
func buildBatch(id, bic string, shops []*shopRun) (*Batch, error) {
	if len(shops) > batchStoresMax {
		return nil, fmt.Errorf("cannot build batch %s for bank %q: %d shops, at most %d (batchStoresMax)",
			id, bic, len(shops), batchStoresMax)
	}
	slices.SortFunc(shops, func(a, b *shopRun) int {
		switch {
		case a.StoreID < b.StoreID:
			return -1
		case a.StoreID > b.StoreID:
			return 1
		}
		return 0
	})
	b := &Batch{ID: id, BankBIC: bic, StoreCount: len(shops), Stores: make([]StoreTotal, len(shops))}
	var err error
	for i, r := range shops {
		b.Stores[i] = r.StoreTotal
		b.RedemptionCount += r.RedemptionCount
		b.RefundCount += r.RefundCount
		if b.Gross, err = b.Gross.Add(r.Gross); err != nil {
			return nil, err
		}
		if b.Refunds, err = b.Refunds.Add(r.Refunds); err != nil {
			return nil, err
		}
		if b.Net, err = b.Net.Add(r.Paid); err != nil {
			return nil, err
		}
	}
	return b, nil
}
