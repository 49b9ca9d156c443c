package ledger

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"azyq/domain"
)

// statusLocked returns the status a client sees now. A voucher not activated
// lapses at the end of its month; an active one at the end of its month plus
// the programme's grace.
func (l *Ledger) statusLocked(v *voucher, now time.Time) Status {
	switch v.state {
	case stateIssued:
		if !now.Before(v.month.End(l.prog.Location)) {
			return StatusExpired
		}
		return StatusIssued
	case stateActive:
		if !now.Before(l.prog.SpendUntil(v.month)) {
			return StatusExpired
		}
		return StatusActive
	default:
		return StatusExpired
	}
}

func (l *Ledger) viewLocked(id VoucherID, v *voucher, now time.Time) Voucher {
	out := Voucher{
		ID: id, FamilyID: v.familyID, Month: v.month, Members: int(v.members),
		City: (*l.cities.Load())[v.city], FaceValue: v.face, Balance: v.balance,
		Spent: v.spent, Lapsed: v.lapsed, Status: l.statusLocked(v, now),
		ExpiresAt: v.month.End(l.prog.Location),
	}
	if v.activatedAt != 0 {
		out.ActivatedAt = time.Unix(0, v.activatedAt).In(l.prog.Location)
		out.ExpiresAt = l.prog.SpendUntil(v.month)
	}
	return out
}

// Voucher returns a voucher.
func (l *Ledger) Voucher(id VoucherID) (Voucher, error) {
	if err := l.check(); err != nil {
		return Voucher{}, err
	}
	v := l.vouchers.get(id)
	if v == nil {
		return Voucher{}, refuse(CodeNotFound, "voucher %s does not exist", id)
	}
	now := l.now()
	v.mu.Lock()
	defer v.mu.Unlock()
	return l.viewLocked(id, v, now), nil
}

// validateFamily returns a refusal naming the first invalid field of row i.
func validateFamily(i int, f *Family) *Refusal {
	switch {
	case !ValidID(f.FamilyID):
		return refuse(CodeInvalid, "families[%d].family_id %q must be 1-64 characters of A-Z a-z 0-9 _ -", i, f.FamilyID)
	case f.Members < 1 || f.Members > MembersMax:
		return refuse(CodeInvalid, "families[%d].members %d must be 1-%d", i, f.Members, MembersMax)
	case len(f.City) > CityMax:
		return refuse(CodeInvalid, "families[%d].city must be at most %d bytes", i, CityMax)
	}
	return nil
}

// Issue issues month's vouchers to the families, idempotently per (month,
// family): a family that already has a voucher for the month gets it back
// unchanged. Vouchers of a month that has ended are born expired. The whole
// request is validated before anything is written.
func (l *Ledger) Issue(month domain.Month, families []Family) ([]Issued, error) {
	return l.IssueBy(Actor{}, month, families)
}

// IssueBy is Issue on behalf of who. Each batch that creates vouchers
// carries an admin log record of what it created; an issuance that creates
// nothing is recorded on its own.
func (l *Ledger) IssueBy(who Actor, month domain.Month, families []Family) ([]Issued, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	if len(families) > IssuanceMax {
		return nil, refuse(CodeInvalid, "at most %d families per issuance, got %d", IssuanceMax, len(families))
	}
	if _, ok := l.prog.FaceValue(month, 1); !ok {
		return nil, refuse(CodeMRPUnknown, "no MRP is configured for %d (programme file: mrp)", month.Year())
	}
	for i := range families {
		if r := validateFamily(i, &families[i]); r != nil {
			return nil, r
		}
	}

	l.issue.Lock()
	defer l.issue.Unlock()
	if r := l.checkCitiesLocked(families); r != nil {
		return nil, r
	}
	now := l.now()
	out := make([]Issued, len(families))
	created := 0
	for lo := 0; lo < len(families); lo += issueBatchMax {
		hi := min(lo+issueBatchMax, len(families))
		n, err := l.issueChunkLocked(who, month, families[lo:hi], out[lo:hi], now)
		if err != nil {
			return nil, err
		}
		created += n
	}
	if created == 0 {
		rec := AdminAction{Actor: who, Action: ActionIssuance, Object: "month/" + month.String(),
			After: mustJSON(issuanceAudit{Month: month.String(), Families: len(families), Existing: len(families)})}
		if err := l.commitAdmin(l.db.NewBatch(), &rec); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// familiesLocked returns the family index, building it on first use from
// the published vouchers. Start-up leaves it unbuilt: redemptions never
// need it, and its random writes were a fifth of the time to recover a
// million vouchers.
func (l *Ledger) familiesLocked() *familyIndex {
	x := &l.issue.families
	if !x.built {
		x.built = true
		n := l.vouchers.len()
		x.reserve(&l.vouchers, n)
		for id := VoucherID(1); int(id) <= n; id++ {
			x.insert(&l.vouchers, id)
		}
	}
	return x
}

// checkCitiesLocked refuses an issuance that would grow the city table past
// its limit, before anything of it is written.
func (l *Ledger) checkCitiesLocked(families []Family) *Refusal {
	fresh := map[string]bool{}
	for i := range families {
		if _, ok := l.issue.cityIDs[families[i].City]; !ok {
			fresh[families[i].City] = true
		}
	}
	if n := len(*l.cities.Load()); n+len(fresh) > citiesMax {
		return refuse(CodeInvalid, "the ledger knows %d cities; %d more would pass the limit of %d",
			n, len(fresh), citiesMax)
	}
	return nil
}

// issueChunkLocked issues one Pebble batch worth of families and returns
// how many vouchers it created.
func (l *Ledger) issueChunkLocked(who Actor, month domain.Month, families []Family, out []Issued, now time.Time) (int, error) {
	next := VoucherID(l.vouchers.len()) + 1
	cities := *l.cities.Load()
	var fresh []VoucherID
	seen := make(map[string]VoucherID)

	b := l.db.NewBatch()
	var issued domain.Tiyn
	for i := range families {
		f := &families[i]
		if id := l.familiesLocked().find(&l.vouchers, month, f.FamilyID); id != 0 {
			out[i] = Issued{Voucher: l.mustView(id, now)}
			continue
		}
		if id, ok := seen[f.FamilyID]; ok {
			// The same family twice in one request gets one voucher.
			out[i] = Issued{Voucher: Voucher{ID: id}}
			continue
		}
		face, _ := l.prog.FaceValue(month, f.Members)
		cityID, err := l.cityLocked(f.City, &cities)
		if err != nil {
			b.Close()
			return 0, err
		}
		id := next
		next++
		v := l.vouchers.slot(id)
		v.voucherData = voucherData{
			state: stateIssued, members: uint8(f.Members), city: cityID, month: month,
			balance: face, face: face, familyID: l.issue.strings.cloneString(f.FamilyID),
		}
		rec := v.recordLocked(cities)
		b.Set(voucherKey(nil, id), rec.encode(nil), nil)
		issued += face
		fresh = append(fresh, id)
		seen[f.FamilyID] = id
		out[i] = Issued{Voucher: Voucher{ID: id}, Created: true}
	}
	if len(fresh) == 0 {
		b.Close()
		return 0, nil
	}
	postAccount(b, AccountProgramme, -issued)
	// New vouchers of a month whose lapse already ran must lapse too:
	// forget that it ran, so that LapseDue runs it again.
	b.Delete(lapseKey(month), nil)
	rec := AdminAction{Actor: who, Action: ActionIssuance, Object: "month/" + month.String(),
		After: mustJSON(issuanceAudit{
			Month: month.String(), Families: len(families), Created: len(fresh),
			Existing: len(families) - len(fresh), FaceValue: int64(issued),
			First: fresh[0].String(), Last: fresh[len(fresh)-1].String(),
		})}
	if err := l.commitAdmin(b, &rec); err != nil {
		return 0, err
	}

	// Durable: publish the cities, the vouchers and the family index.
	l.cities.Store(&cities)
	for _, id := range fresh {
		l.familiesLocked().insert(&l.vouchers, id)
	}
	l.vouchers.publish(next - 1)
	l.accounts.add(AccountProgramme, -issued)
	for i := range out {
		if out[i].Voucher.FamilyID == "" {
			out[i].Voucher = l.mustView(out[i].Voucher.ID, now)
		}
	}
	return len(fresh), nil
}

// cityLocked interns a city name, growing a private copy of the table that
// the caller publishes after its commit.
func (l *Ledger) cityLocked(name string, cities *[]string) (uint16, error) {
	if id, ok := l.issue.cityIDs[name]; ok {
		return id, nil
	}
	if len(*cities) >= citiesMax {
		return 0, fmt.Errorf("cannot add city %q: the table holds %d cities already", name, citiesMax)
	}
	id := uint16(len(*cities))
	*cities = append(slices.Clip(*cities), name)
	l.issue.cityIDs[name] = id
	return id, nil
}

func (l *Ledger) mustView(id VoucherID, now time.Time) Voucher {
	v := l.vouchers.get(id)
	if v == nil {
		panic(fmt.Sprintf("BUG: voucher %s is indexed but not published", id))
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return l.viewLocked(id, v, now)
}

// VoucherByFamily returns the voucher of a family for a month.
func (l *Ledger) VoucherByFamily(month domain.Month, familyID string) (Voucher, error) {
	l.issue.Lock()
	id := l.familiesLocked().find(&l.vouchers, month, familyID)
	l.issue.Unlock()
	if id == 0 {
		return Voucher{}, refuse(CodeNotFound, "family %q has no voucher for %s", familyID, month)
	}
	return l.Voucher(id)
}

// Activate activates a voucher; the caller has the recipient's consent.
// Activation is possible from the first to the last day of the voucher's
// month; activating an active voucher returns it unchanged.
func (l *Ledger) Activate(id VoucherID) (Voucher, error) {
	if err := l.check(); err != nil {
		return Voucher{}, err
	}
	v := l.vouchers.get(id)
	if v == nil {
		return Voucher{}, refuse(CodeNotFound, "voucher %s does not exist", id)
	}
	now := l.now()
	v.mu.Lock()
	defer v.mu.Unlock()

	switch {
	case v.state == stateActive:
		return l.viewLocked(id, v, now), nil
	case v.state == stateLapsed || !now.Before(v.month.End(l.prog.Location)):
		return Voucher{}, refuse(CodeActivationWindowClosed,
			"voucher %s of %s can no longer be activated: its month has ended", id, v.month)
	case now.Before(v.month.Start(l.prog.Location)):
		return Voucher{}, refuse(CodeActivationWindowNotOpen,
			"voucher %s of %s cannot be activated before its month begins", id, v.month)
	}

	next := v.voucherData
	next.state, next.activatedAt = stateActive, now.UnixNano()
	b := l.db.NewBatch()
	rec := next.recordLocked(*l.cities.Load())
	b.Set(voucherKey(nil, id), rec.encode(nil), nil)
	if err := l.commit(b); err != nil {
		return Voucher{}, err
	}
	// Only the fields that change: the month and family id are read
	// without the lock by the family index and the lapse.
	v.state, v.activatedAt = next.state, next.activatedAt
	return l.viewLocked(id, v, now), nil
}

// Lapse moves the remaining balance of every voucher of month to the lapsed
// account, once the month's spending has ended. Each voucher lapses at most
// once, and its new state is written with the posting, so a restart midway
// neither skips nor repeats a voucher. It returns how many vouchers lapsed
// now and their total.
func (l *Ledger) Lapse(month domain.Month) (int, domain.Tiyn, error) {
	if err := l.check(); err != nil {
		return 0, 0, err
	}
	now := l.now()
	if now.Before(l.prog.SpendUntil(month)) {
		return 0, 0, refuse(CodeConflict, "month %s cannot lapse before %s", month,
			l.prog.SpendUntil(month).Format(time.RFC3339))
	}
	l.issue.Lock()
	defer l.issue.Unlock()
	return l.lapseLocked(month)
}

// lapseLocked lapses a month whose spending has ended. It holds the
// issuance lock throughout, so that no voucher of the month is issued
// between the collection of its vouchers and the month's lapse mark: such
// a voucher would be left out, and the mark would hide it from LapseDue.
func (l *Ledger) lapseLocked(month domain.Month) (int, domain.Tiyn, error) {
	// A voucher's month never changes once it is published, so it is
	// read without the voucher's lock.
	ids := make([]VoucherID, 0, l.familiesLocked().months[month])
	for id := VoucherID(1); int(id) <= l.vouchers.len(); id++ {
		if l.vouchers.get(id).month == month {
			ids = append(ids, id)
		}
	}

	count, total := 0, domain.Tiyn(0)
	for lo := 0; lo < len(ids); lo += lapseBatchMax {
		n, t, err := l.lapseChunk(ids[lo:min(lo+lapseBatchMax, len(ids))])
		if err != nil {
			return count, total, err
		}
		count, total = count+n, total+t
	}

	b := l.db.NewBatch()
	b.Set(lapseKey(month), nil, nil)
	if err := l.commit(b); err != nil {
		return count, total, err
	}
	if count > 0 {
		l.log.Info("month lapsed", "month", month.String(), "vouchers", count, "amount", int64(total))
	}
	return count, total, nil
}

// lapseChunk locks a sorted chunk of vouchers (a fixed order, so it cannot
// deadlock with another chunk; other paths lock one voucher at a time),
// lapses them in one batch and unlocks them after the commit.
func (l *Ledger) lapseChunk(ids []VoucherID) (int, domain.Tiyn, error) {
	var locked []*voucher
	defer func() {
		for _, v := range locked {
			v.mu.Unlock()
		}
	}()
	cities := *l.cities.Load()
	b := l.db.NewBatch()
	var total domain.Tiyn
	var lapsing []*voucher
	for _, id := range ids {
		v := l.vouchers.get(id)
		v.mu.Lock()
		locked = append(locked, v)
		if v.state == stateLapsed {
			continue
		}
		next := v.voucherData
		next.state, next.lapsed, next.balance = stateLapsed, v.balance, 0
		rec := next.recordLocked(cities)
		b.Set(voucherKey(nil, id), rec.encode(nil), nil)
		total += v.balance
		lapsing = append(lapsing, v)
	}
	if len(lapsing) == 0 {
		b.Close()
		return 0, 0, nil
	}
	postAccount(b, AccountLapsed, total)
	if err := l.commit(b); err != nil {
		return 0, 0, err
	}
	for _, v := range lapsing {
		v.state, v.lapsed, v.balance = stateLapsed, v.balance, 0
	}
	l.accounts.add(AccountLapsed, total)
	return len(lapsing), total, nil
}

// LapseDue lapses every month whose spending has ended and that has not
// lapsed yet. The gateway calls it on a timer.
func (l *Ledger) LapseDue() error {
	if err := l.check(); err != nil {
		return err
	}
	// The issuance lock is held throughout: every write of a lapse mark
	// (Lapse) or of its removal (issuance) holds it through its sync, so
	// the mark read here is durable (invariant 2).
	l.issue.Lock()
	defer l.issue.Unlock()
	months := slices.Sorted(maps.Keys(l.familiesLocked().months))
	now := l.now()
	for _, m := range months {
		if now.Before(l.prog.SpendUntil(m)) {
			continue
		}
		_, done, err := l.get(lapseKey(m))
		if err != nil {
			return err
		}
		if done {
			continue
		}
		if _, _, err := l.lapseLocked(m); err != nil {
			return err
		}
	}
	return nil
}
