package settlement

import (
	"fmt"
	"sort"
	"time"

	"azyq/domain"
	"azyq/ledger"
)

// Figures are the reconciliation totals of one scope (everything, a city or
// a shop). Amounts are tiyn.
//
// Voucher side — the vouchers of the months that begin inside the window:
// Issued is their face value, Activated the face value of those activated,
// Balances what they still hold, Spent what they paid to shops net of
// refunds credited back to them (the "net redeemed"), Lapsed the remainders
// moved to the lapsed account at month end. Per voucher face = balance +
// spent + lapsed, so Issued = Balances + Spent + Lapsed must hold for every
// scope. A refund of an expired voucher goes to the programme, not back to
// the voucher, so it does not lower Spent.
//
// Shop side — the settlement periods closed by cut-offs inside the window:
// Redeemed and Refunded are read from the ledger's journal, Gross,
// RefundsInBatches, CarriedIn, CarriedOut (the negative nets left for the
// next batch, as a positive number) and Settled (paid) from the batch
// records. Settled + CarriedOut − CarriedIn = Redeemed − Refunded must hold.
// Unsettled is what the shops' payable accounts hold now: owed and not yet
// in a paid batch (negative while a carry is outstanding).
type Figures struct {
	Vouchers       int64       `json:"vouchers"`
	Issued         domain.Tiyn `json:"issued"`
	ActivatedCount int64       `json:"activated_count"`
	Activated      domain.Tiyn `json:"activated"`
	Balances       domain.Tiyn `json:"balances"`
	Spent          domain.Tiyn `json:"net_redeemed"`
	Lapsed         domain.Tiyn `json:"lapsed"`

	RedemptionCount  int64       `json:"redemption_count"`
	Redeemed         domain.Tiyn `json:"redeemed"`
	RefundCount      int64       `json:"refund_count"`
	Refunded         domain.Tiyn `json:"refunded"`
	Gross            domain.Tiyn `json:"batch_gross"`
	RefundsInBatches domain.Tiyn `json:"batch_refunds"`
	CarriedIn        domain.Tiyn `json:"carried_in"`
	CarriedOut       domain.Tiyn `json:"carried_out"`
	Settled          domain.Tiyn `json:"settled"`
	Unsettled        domain.Tiyn `json:"unsettled"`
}

// CityFigures are the figures of one city: vouchers by the family's city,
// shops by the shop's city.
type CityFigures struct {
	City string `json:"city"`
	Figures
}

// StoreFigures are the shop-side figures of one shop.
type StoreFigures struct {
	StoreID string `json:"store_id"`
	Name    string `json:"name"`
	City    string `json:"city"`
	Figures
}

// Books are the whole ledger's double-entry accounts at the instant of the
// report: every named account, and the vouchers as one account.
type Books struct {
	Accounts map[string]domain.Tiyn `json:"accounts"`
	Vouchers domain.Tiyn            `json:"vouchers"`
	Issued   domain.Tiyn            `json:"issued"`
	Spent    domain.Tiyn            `json:"net_redeemed"`
	Lapsed   domain.Tiyn            `json:"lapsed"`
}

// BatchTotals are a batch's own totals beside the sums over its shops,
// which must be equal (invariant 5).
type BatchTotals struct {
	BatchID       string      `json:"batch_id"`
	Gross         domain.Tiyn `json:"gross"`
	Refunds       domain.Tiyn `json:"refunds"`
	Net           domain.Tiyn `json:"net"`
	StoresGross   domain.Tiyn `json:"stores_gross"`
	StoresRefunds domain.Tiyn `json:"stores_refunds"`
	StoresPaid    domain.Tiyn `json:"stores_paid"`
}

// Reconciliation is the accountants' report for a window of time.
type Reconciliation struct {
	From    time.Time      `json:"from"`
	To      time.Time      `json:"to"`
	Months  []string       `json:"months"`
	Cutoffs []string       `json:"cutoffs"`
	Total   Figures        `json:"total"`
	Cities  []CityFigures  `json:"cities"`
	Stores  []StoreFigures `json:"stores"`
	Batches []BatchTotals  `json:"batches"`
	Books   Books          `json:"books"`
}

// Reconcile builds the report for [from, to). It reads every voucher and
// the journal of the window's periods, so it is an operator's query, not a
// hot path; its books are exact only while no money moves.
func (s *Settlement) Reconcile(from, to time.Time) (*Reconciliation, error) {
	if !from.Before(to) {
		return nil, invalid("from %s must be before to %s", from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	loc := s.prog.Location
	r := &Reconciliation{From: from.In(loc), To: to.In(loc), Months: []string{}, Cutoffs: []string{},
		Batches: []BatchTotals{}}
	cities := map[string]*CityFigures{}
	city := func(name string) *Figures {
		c := cities[name]
		if c == nil {
			c = &CityFigures{City: name}
			cities[name] = c
		}
		return &c.Figures
	}
	stores := map[string]*StoreFigures{}
	store := func(id string) *StoreFigures {
		st := stores[id]
		if st == nil {
			st = &StoreFigures{StoreID: id}
			if info, ok := s.l.Store(id); ok {
				st.Name, st.City = info.Name, info.City
			}
			stores[id] = st
		}
		return st
	}

	// Vouchers of the months that begin in the window. Ids are dense from 1.
	months := map[domain.Month]bool{}
	for m := domain.MonthOf(from, loc); m.Start(loc).Before(to); m = m.Next() {
		if !m.Start(loc).Before(from) {
			months[m] = true
			r.Months = append(r.Months, m.String())
		}
	}
	for id := ledger.VoucherID(1); len(months) > 0; id++ {
		v, err := s.l.Voucher(id)
		if ledger.AsRefusal(err) != nil {
			break
		}
		if err != nil {
			return nil, err
		}
		if !months[v.Month] {
			continue
		}
		for _, f := range []*Figures{&r.Total, city(v.City)} {
			f.Vouchers++
			f.Issued += v.FaceValue
			f.Balances += v.Balance
			f.Spent += v.Spent
			f.Lapsed += v.Lapsed
			if !v.ActivatedAt.IsZero() {
				f.ActivatedCount++
				f.Activated += v.FaceValue
			}
		}
	}

	// Batches of the cut-offs in the window, and the journal of their
	// periods.
	cutoffs, err := s.Cutoffs()
	if err != nil {
		return nil, err
	}
	for _, c := range cutoffs {
		if c.At.Before(from) || !c.At.Before(to) {
			continue
		}
		r.Cutoffs = append(r.Cutoffs, c.ID)
		for _, id := range c.Batches {
			b, err := s.Batch(id)
			if err != nil {
				return nil, err
			}
			bt := BatchTotals{BatchID: b.ID, Gross: b.Gross, Refunds: b.Refunds, Net: b.Net}
			for _, st := range b.Stores {
				bt.StoresGross += st.Gross
				bt.StoresRefunds += st.Refunds
				bt.StoresPaid += st.Paid
				sf := store(st.StoreID)
				for _, f := range []*Figures{&r.Total, city(sf.City), &sf.Figures} {
					f.Gross += st.Gross
					f.RefundsInBatches += st.Refunds
					f.CarriedIn -= st.CarriedIn
					f.CarriedOut -= st.Net - st.Paid
					f.Settled += st.Paid
				}
			}
			r.Batches = append(r.Batches, bt)
		}
		err := s.l.Movements(c.FromPeriod, c.ToPeriod, func(m *ledger.Movement) error {
			sf := store(m.StoreID)
			for _, f := range []*Figures{&r.Total, city(sf.City), &sf.Figures} {
				if m.Kind == ledger.KindRedemption {
					f.RedemptionCount++
					f.Redeemed += m.Amount
				} else {
					f.RefundCount++
					f.Refunded += m.Amount
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("cannot read the journal of cut-off %s: %w", c.ID, err)
		}
	}

	// The books now, and what each shop is owed and not yet paid.
	b := s.l.Books()
	r.Books = Books{Accounts: b.Accounts, Vouchers: b.Vouchers, Issued: b.Issued, Spent: b.Spent, Lapsed: b.Lapsed}
	for _, st := range s.l.Stores() {
		owed := b.Accounts[ledger.AccountStore(st.ID)]
		if owed == 0 && stores[st.ID] == nil {
			continue
		}
		sf := store(st.ID)
		for _, f := range []*Figures{&r.Total, city(sf.City), &sf.Figures} {
			f.Unsettled += owed
		}
	}

	for _, c := range cities {
		r.Cities = append(r.Cities, *c)
	}
	sort.Slice(r.Cities, func(i, j int) bool { return r.Cities[i].City < r.Cities[j].City })
	for _, st := range stores {
		r.Stores = append(r.Stores, *st)
	}
	sort.Slice(r.Stores, func(i, j int) bool { return r.Stores[i].StoreID < r.Stores[j].StoreID })
	return r, nil
}

// Check verifies the report's identities and returns every one that fails:
// for the total and each city, issued = balances + net redeemed + lapsed;
// each batch's totals are the sums over its shops; for the total, each
// city and each shop, the batch records agree with the journal (gross = redeemed, refunds = refunded, settled + carried out −
// carried in = redeemed − refunded); and the books' accounts, vouchers
// included, sum to zero with issued = balances + net redeemed + lapsed
// overall. gatewayctl reconcile runs the same checks on what it downloads.
func (r *Reconciliation) Check() []string {
	var problems []string
	vouchers := func(scope string, f *Figures) {
		if f.Issued != f.Balances+f.Spent+f.Lapsed {
			problems = append(problems, fmt.Sprintf("%s: issued %d != balances %d + net redeemed %d + lapsed %d",
				scope, f.Issued, f.Balances, f.Spent, f.Lapsed))
		}
	}
	shops := func(scope string, f *Figures) {
		if f.Gross != f.Redeemed || f.RefundsInBatches != f.Refunded {
			problems = append(problems, fmt.Sprintf("%s: batches hold gross %d and refunds %d, the journal %d and %d",
				scope, f.Gross, f.RefundsInBatches, f.Redeemed, f.Refunded))
		}
		if f.Settled+f.CarriedOut-f.CarriedIn != f.Redeemed-f.Refunded {
			problems = append(problems, fmt.Sprintf("%s: settled %d + carried out %d - carried in %d != redeemed %d - refunded %d",
				scope, f.Settled, f.CarriedOut, f.CarriedIn, f.Redeemed, f.Refunded))
		}
	}
	vouchers("total", &r.Total)
	shops("total", &r.Total)
	for i := range r.Cities {
		vouchers("city "+r.Cities[i].City, &r.Cities[i].Figures)
		shops("city "+r.Cities[i].City, &r.Cities[i].Figures)
	}
	for i := range r.Stores {
		shops("store "+r.Stores[i].StoreID, &r.Stores[i].Figures)
	}
	for _, b := range r.Batches {
		if b.Gross != b.StoresGross || b.Refunds != b.StoresRefunds || b.Net != b.StoresPaid {
			problems = append(problems, fmt.Sprintf("batch %s: gross %d, refunds %d, net %d, but its shops sum to %d, %d, paid %d",
				b.BatchID, b.Gross, b.Refunds, b.Net, b.StoresGross, b.StoresRefunds, b.StoresPaid))
		}
	}
	sum := r.Books.Vouchers
	for _, v := range r.Books.Accounts {
		sum += v
	}
	if sum != 0 {
		problems = append(problems, fmt.Sprintf("books: accounts and vouchers sum to %d, not zero", sum))
	}
	if r.Books.Issued != r.Books.Vouchers+r.Books.Spent+r.Books.Lapsed {
		problems = append(problems, fmt.Sprintf("books: issued %d != balances %d + net redeemed %d + lapsed %d",
			r.Books.Issued, r.Books.Vouchers, r.Books.Spent, r.Books.Lapsed))
	}
	return problems
}
