package ledger

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"azyq/domain"
)

// The offline audit reads a stopped data directory table by table and
// checks every invariant of the package documentation from what is on disk
// alone: it never opens the ledger, never rebuilds memory and never writes.
// A corrupt record does not stop it; each problem becomes one Violation and
// the audit carries on, so one run shows the operator everything that is
// wrong.
//
// Its memory grows with the history it reads: about 150 bytes per voucher
// and per movement (a country's month of a few million vouchers and tens of
// millions of redemptions fits in a few gigabytes on the operator's
// machine). TODO: a streaming audit that joins the sorted tables instead of
// holding movements in a map would need about 30 bytes per movement; it
// matters once a data directory keeps more than ~50 million movements.

// Audit checks, named in each Violation.
const (
	AuditLayout           = "layout"             // a key outside every known table, or of the wrong shape
	AuditDecode           = "decode"             // a record that does not decode
	AuditVoucherIDs       = "voucher.ids"        // voucher ids are not dense from 1
	AuditVoucherSum       = "voucher.sum"        // face ≠ balance + spent + lapsed
	AuditVoucherNegative  = "voucher.negative"   // a negative balance, spent or lapsed
	AuditVoucherFace      = "voucher.face"       // face ≠ members × MRP × 100
	AuditVoucherState     = "voucher.state"      // lapsed money without the lapsed state, or the reverse
	AuditVoucherFamily    = "voucher.family"     // two vouchers for one family and month
	AuditVoucherSpent     = "voucher.spent"      // spent ≠ redemptions − refunds credited back
	AuditBooks            = "books.sum"          // all accounts and vouchers do not sum to zero
	AuditLapsedAccount    = "account.lapsed"     // lapsed account ≠ sum of the vouchers' lapsed
	AuditStorePayable     = "store.payable"      // a shop's payable exceeds redemptions − refunds
	AuditSettlementPaid   = "settlement.paid"    // paid to shops ≠ credited to banks
	AuditMovementIndex    = "movement.index"     // a movement and its period-index entry disagree
	AuditRedemption       = "redemption"         // a redemption inconsistent in itself
	AuditRedemptionRefund = "redemption.refunds" // refunded ≠ sum of its refunds, or above approved
	AuditRefund           = "refund"             // a refund inconsistent with its redemption
	AuditRefundIndex      = "refund.index"       // a refund and its redemption's refund index disagree
	AuditUsedToken        = "token"              // a used-token record of the wrong shape
	AuditIdempotency      = "idempotency"        // an idempotency record or its age entry
	AuditStore            = "store"              // a store or terminal record
)

// auditViolationsMax bounds the violations a report keeps: a directory
// corrupted wholesale would otherwise print millions of lines. The rest are
// only counted (AuditReport.ViolationsDropped).
const auditViolationsMax = 10_000

// Violation is one broken invariant found by Audit.
type Violation struct {
	// Check names the invariant, one of the Audit… constants.
	Check string
	// Subject names what is wrong: a voucher, redemption, refund, account
	// or key.
	Subject string
	// Message says what was found, with the values involved.
	Message string
}

func (v Violation) String() string {
	return fmt.Sprintf("%s: %s: %s", v.Check, v.Subject, v.Message)
}

// KindTotal counts movements of one kind and sums their amounts.
type KindTotal struct {
	Count  int
	Amount domain.Tiyn
}

// StoreAudit is one shop's money as the audit derives it from the
// movement journal and the shop's payable account.
type StoreAudit struct {
	ID          string
	BankBIC     string
	Redemptions KindTotal
	Refunds     KindTotal
	// Payable is the balance of the shop's payable account.
	Payable domain.Tiyn
	// Paid is what settlement moved out of the payable account:
	// redemptions − refunds − payable. It is never negative.
	Paid domain.Tiyn
}

// AuditReport is the result of Audit: the totals of the books and every
// violation found.
type AuditReport struct {
	// OpenPeriod is the settlement period new movements would join.
	OpenPeriod uint64
	// LastSeq is the highest movement sequence number.
	LastSeq uint64

	// Vouchers counts vouchers; ByState by stored state (issued, active,
	// lapsed), ByStatus by the status a client sees at Config.Now
	// (issued, active, expired).
	Vouchers int
	ByState  map[string]int
	ByStatus map[string]int

	// Issued, Balances, Spent and Lapsed sum the vouchers' face values,
	// balances, net spending and lapsed remainders.
	Issued, Balances, Spent, Lapsed domain.Tiyn

	// Accounts holds every named account; AccountSum is their sum plus
	// the voucher balances (zero when the books balance).
	Accounts   map[string]domain.Tiyn
	AccountSum domain.Tiyn

	// Redemptions and Refunds total the movement journal; RefundsVoucher
	// and RefundsProgramme split the refunds by where the money went.
	Redemptions, Refunds             KindTotal
	RefundsVoucher, RefundsProgramme KindTotal
	// Periods counts settlement periods that hold movements.
	Periods int

	// Stores holds every shop that has a store record, a payable account
	// or a movement, sorted by id.
	Stores []StoreAudit

	Terminals int
	// UsedTokens counts redemptions that record the QR token they consumed.
	UsedTokens    int
	Idempotency   int
	LapsedMonths  int
	AuxRecords    int
	PaidToBanks   domain.Tiyn // the sum of the bank clearing accounts
	PaidByStores  domain.Tiyn // the sum of StoreAudit.Paid
	ProgrammeRest domain.Tiyn // programme account − (−issued + refunds to programme): other packages' postings

	// Violations lists what is wrong, at most auditViolationsMax of them;
	// ViolationsDropped counts the rest.
	Violations        []Violation
	ViolationsDropped int
}

// OK reports whether the audit found nothing wrong.
func (r *AuditReport) OK() bool { return len(r.Violations) == 0 && r.ViolationsDropped == 0 }

func (r *AuditReport) violate(check, subject, format string, args ...any) {
	if len(r.Violations) >= auditViolationsMax {
		r.ViolationsDropped++
		return
	}
	r.Violations = append(r.Violations, Violation{Check: check, Subject: subject, Message: fmt.Sprintf(format, args...)})
}

// auditVoucher is what the audit keeps of one voucher.
type auditVoucher struct {
	present bool
	spent   domain.Tiyn
	// net is what the journal says the voucher spent: redemptions minus
	// refunds credited back to it.
	net domain.Tiyn
}

// auditMovement is what the audit keeps of one movement record until its
// period-index entry (and, for a redemption, its refunds) are matched.
type auditMovement struct {
	summary  Movement
	indexed  bool
	refunded domain.Tiyn // a redemption's Refunded field
	approved domain.Tiyn
	refunds  domain.Tiyn // the sum of the refund records naming it
	// refundIndexed is set for a refund once its refund-index entry is
	// seen.
	refundIndexed bool
}

// auditor holds the state of one audit run.
type auditor struct {
	db   *pebble.DB
	prog *domain.Programme
	now  time.Time
	rep  *AuditReport

	vouchers  []auditVoucher // by id − 1
	movements map[uint64]*auditMovement
	stores    map[string]*StoreAudit
	families  map[domain.Month]map[string]VoucherID
}

// Audit opens the data directory cfg.Dir read-only and checks every
// invariant of the ledger from the records on disk. The directory must not
// be open elsewhere: Pebble's directory lock makes a running gatewayd fail
// the open rather than be read half-written. cfg.Programme is needed for
// the face values; cfg.Now (default time.Now) dates the voucher statuses.
//
// It returns an error only when the directory cannot be read at all; every
// broken invariant is a Violation in the report.
func Audit(cfg Config) (*AuditReport, error) {
	if cfg.Programme == nil {
		return nil, errors.New("cannot audit ledger: no programme configured")
	}
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	cache := pebble.NewCache(64 << 20)
	defer cache.Unref()
	opts := &pebble.Options{FS: cfg.FS, Cache: cache, Merger: accountMerger, ReadOnly: true,
		ErrorIfNotExists: true, Logger: pebbleLogger{slog.New(slog.DiscardHandler)}}
	opts.EnsureDefaults()
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("cannot open data directory %q read-only "+
			"(is gatewayd still running on it? stop it first): %w", cfg.Dir, err)
	}
	defer db.Close()

	a := &auditor{
		db: db, prog: cfg.Programme, now: now(), rep: &AuditReport{
			ByState:  map[string]int{"issued": 0, "active": 0, "lapsed": 0},
			ByStatus: map[string]int{"issued": 0, "active": 0, "expired": 0},
			Accounts: map[string]domain.Tiyn{},
		},
		movements: map[uint64]*auditMovement{},
		stores:    map[string]*StoreAudit{},
		families:  map[domain.Month]map[string]VoucherID{},
	}
	if err := a.run(); err != nil {
		return nil, err
	}
	return a.rep, nil
}

// run reads the tables in an order where each step finds what it joins
// against already loaded: vouchers before movements, movements before the
// indexes that point at them, and the accounts last.
func (a *auditor) run() error {
	steps := []struct {
		name string
		fn   func() error
	}{
		{"layout", a.layout},
		{"meta", a.meta},
		{"stores", a.storesAndTerminals},
		{"vouchers", a.voucherTable},
		{"movements", a.movementTable},
		{"period index", a.periodIndex},
		{"refund index", a.refundIndex},
		{"used tokens", a.usedTokens},
		{"idempotency", a.idempotency},
		{"accounts", a.accounts},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return fmt.Errorf("cannot audit %s: %w", s.name, err)
		}
	}
	a.joinVouchers()
	a.joinMovements()
	a.joinStores()
	sort.Slice(a.rep.Violations, func(i, j int) bool {
		vi, vj := a.rep.Violations[i], a.rep.Violations[j]
		if vi.Check != vj.Check {
			return vi.Check < vj.Check
		}
		return vi.Subject < vj.Subject
	})
	return nil
}

// scan calls fn for every key of a table. The key and value are valid only
// during the call.
func (a *auditor) scan(table byte, fn func(k, v []byte)) error {
	it, err := a.db.NewIter(&pebble.IterOptions{LowerBound: []byte{table}, UpperBound: []byte{table + 1}})
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return fmt.Errorf("cannot read key %q: %w", it.Key(), err)
		}
		fn(it.Key(), v)
	}
	return it.Close()
}

// layout reports keys outside every known table and checks the format
// version.
func (a *auditor) layout() error {
	known := map[byte]bool{}
	for _, t := range []byte{tableAccount, tableIdem, tableIdemAge, tableLapse, tableMeta, tableStore,
		tablePeriod, tableRefunds, tableMovement, tableTerminal, tableUsedToken, tableVoucher, tableAux} {
		known[t] = true
	}
	it, err := a.db.NewIter(nil)
	if err != nil {
		return err
	}
	version := false
	for ok := it.First(); ok; {
		k := it.Key()
		switch {
		case bytes.Equal(k, versionKey):
			v, err := it.ValueAndErr()
			if err != nil {
				it.Close()
				return err
			}
			version = true
			if string(v) != formatVersion {
				a.rep.violate(AuditLayout, "format", "data directory has format %q, this build reads %q", v, formatVersion)
			}
			ok = it.Next()
		case len(k) > 0 && known[k[0]]:
			// Skip the whole table: the other steps read it.
			ok = it.SeekGE([]byte{k[0] + 1})
		default:
			a.rep.violate(AuditLayout, fmt.Sprintf("key %q", k), "key belongs to no table of the ledger")
			ok = it.Next()
		}
	}
	if err := it.Close(); err != nil {
		return err
	}
	if !version {
		a.rep.violate(AuditLayout, "format", "no format version: not an azyq ledger, or an empty directory")
	}
	return nil
}

// meta reads the open period, the lapsed months and counts the records of
// other packages.
func (a *auditor) meta() error {
	a.rep.OpenPeriod = 1
	err := a.scan(tableMeta, func(k, v []byte) {
		if bytes.Equal(k, openPeriodKey) {
			if len(v) != 8 {
				a.rep.violate(AuditDecode, "open period", "value of %d bytes, want 8", len(v))
				return
			}
			a.rep.OpenPeriod = binary.BigEndian.Uint64(v)
		}
	})
	if err != nil {
		return err
	}
	if err := a.scan(tableLapse, func(k, _ []byte) {
		if len(k) != 5 {
			a.rep.violate(AuditLayout, fmt.Sprintf("lapse key %x", k), "want 5 bytes")
			return
		}
		a.rep.LapsedMonths++
	}); err != nil {
		return err
	}
	return a.scan(tableAux, func(_, _ []byte) { a.rep.AuxRecords++ })
}

func (a *auditor) store(id string) *StoreAudit {
	s := a.stores[id]
	if s == nil {
		s = &StoreAudit{ID: id}
		a.stores[id] = s
	}
	return s
}

// storesAndTerminals decodes the store and terminal records.
func (a *auditor) storesAndTerminals() error {
	err := a.scan(tableStore, func(k, v []byte) {
		var r storeRecord
		if err := json.Unmarshal(v, &r); err != nil {
			a.rep.violate(AuditDecode, fmt.Sprintf("store %q", k[1:]), "cannot decode store record: %v", err)
			return
		}
		if r.ID != string(k[1:]) {
			a.rep.violate(AuditStore, fmt.Sprintf("store %q", k[1:]), "record names store %q", r.ID)
		}
		a.store(string(k[1:])).BankBIC = r.BankBIC
	})
	if err != nil {
		return err
	}
	return a.scan(tableTerminal, func(k, v []byte) {
		subject := fmt.Sprintf("terminal %q", k[1:])
		var r terminalRecord
		if err := json.Unmarshal(v, &r); err != nil {
			a.rep.violate(AuditDecode, subject, "cannot decode terminal record: %v", err)
			return
		}
		if _, err := r.terminal(); err != nil {
			a.rep.violate(AuditDecode, subject, "%v", err)
			return
		}
		if _, ok := a.stores[r.StoreID]; !ok {
			a.rep.violate(AuditStore, subject, "belongs to store %q, which has no record", r.StoreID)
		}
		a.rep.Terminals++
	})
}

// voucherTable checks each voucher record on its own.
func (a *auditor) voucherTable() error {
	last := VoucherID(0)
	return a.scan(tableVoucher, func(k, v []byte) {
		if len(k) != 5 {
			a.rep.violate(AuditLayout, fmt.Sprintf("voucher key %x", k), "want 5 bytes")
			return
		}
		id := VoucherID(binary.BigEndian.Uint32(k[1:]))
		subject := "voucher " + id.String()
		if id != last+1 {
			a.rep.violate(AuditVoucherIDs, subject, "follows voucher %s: ids must be dense from 1", last)
		}
		last = id
		for len(a.vouchers) < int(id) {
			a.vouchers = append(a.vouchers, auditVoucher{})
		}

		r, err := decodeVoucherFields(v)
		if err != nil {
			a.rep.violate(AuditDecode, subject, "%v", err)
			return
		}
		a.vouchers[id-1] = auditVoucher{present: true, spent: r.spent}
		a.checkVoucher(id, &r)
	})
}

func (a *auditor) checkVoucher(id VoucherID, r *voucherRecord) {
	subject := "voucher " + id.String()
	rep := a.rep
	rep.Vouchers++
	rep.Issued += r.face
	rep.Balances += r.balance
	rep.Spent += r.spent
	rep.Lapsed += r.lapsed

	if r.balance < 0 || r.spent < 0 || r.lapsed < 0 {
		rep.violate(AuditVoucherNegative, subject, "balance %d, spent %d, lapsed %d", r.balance, r.spent, r.lapsed)
	}
	if r.face != r.balance+r.spent+r.lapsed {
		rep.violate(AuditVoucherSum, subject, "face %d != balance %d + spent %d + lapsed %d",
			r.face, r.balance, r.spent, r.lapsed)
	}
	if face, ok := a.prog.FaceValue(r.month, int(r.members)); !ok {
		rep.violate(AuditVoucherFace, subject, "month %s has no MRP in the programme (--program)", r.month)
	} else if r.face != face {
		rep.violate(AuditVoucherFace, subject, "face %d != %d members x MRP of %d x 100 = %d",
			r.face, r.members, r.month.Year(), face)
	}
	if r.members < 1 || r.members > MembersMax {
		rep.violate(AuditVoucherFace, subject, "members %d outside 1-%d", r.members, MembersMax)
	}

	switch r.state {
	case stateIssued, stateActive:
		if r.lapsed != 0 {
			rep.violate(AuditVoucherState, subject, "lapsed %d but the voucher has not lapsed", r.lapsed)
		}
		if (r.state == stateActive) != !r.activatedAt.IsZero() {
			rep.violate(AuditVoucherState, subject, "state %d with activation time %v", r.state, r.activatedAt)
		}
		if r.state == stateIssued && r.spent != 0 {
			rep.violate(AuditVoucherState, subject, "spent %d before activation", r.spent)
		}
	case stateLapsed:
		if r.balance != 0 {
			rep.violate(AuditVoucherState, subject, "lapsed with balance %d left", r.balance)
		}
	default:
		rep.violate(AuditVoucherState, subject, "unknown state %d", r.state)
	}
	rep.ByState[[...]string{"issued", "active", "lapsed", "unknown"}[min(int(r.state), 3)]]++
	rep.ByStatus[a.status(r).String()]++

	index := a.families[r.month]
	if index == nil {
		index = map[string]VoucherID{}
		a.families[r.month] = index
	}
	if other, dup := index[r.familyID]; dup {
		rep.violate(AuditVoucherFamily, subject, "family %q of %s already has voucher %s", r.familyID, r.month, other)
	}
	index[r.familyID] = id
}

// status mirrors Ledger.statusLocked for a stored record.
func (a *auditor) status(r *voucherRecord) Status {
	switch r.state {
	case stateIssued:
		if a.now.Before(r.month.End(a.prog.Location)) {
			return StatusIssued
		}
	case stateActive:
		if a.now.Before(a.prog.SpendUntil(r.month)) {
			return StatusActive
		}
	}
	return StatusExpired
}

// decodeVoucherFields decodes a voucher record without decodeVoucher's
// checks of its amounts, so that the audit can report the values of a
// record that breaks them. It must read the fields in the order
// voucherRecord.encode writes them (TestAuditDecodersMatch holds it to
// that).
func decodeVoucherFields(b []byte) (voucherRecord, error) {
	d := decoder{b: b}
	var r voucherRecord
	if d.u8() != voucherRecordV1 {
		d.fail()
	}
	_, family, city := readVoucherFields(&d, &r)
	r.familyID, r.city = string(family), string(city)
	return r, d.finish("voucher record")
}

// decodeRedemptionFields decodes a redemption record without the checks of
// decodeMovementRecord on its amounts.
func decodeRedemptionFields(seq uint64, b []byte) (*Redemption, error) {
	d := decoder{b: b}
	version := d.u8()
	if version != redemptionRecordV1 && version != redemptionRecordV2 {
		d.fail()
	}
	r := &Redemption{Seq: seq}
	readRedemptionFields(&d, r, version)
	return r, d.finish("redemption record")
}

// movementTable checks each redemption and refund record and collects what
// the later joins need.
func (a *auditor) movementTable() error {
	return a.scan(tableMovement, func(k, v []byte) {
		if len(k) != 9 {
			a.rep.violate(AuditLayout, fmt.Sprintf("movement key %x", k), "want 9 bytes")
			return
		}
		seq := binary.BigEndian.Uint64(k[1:])
		a.rep.LastSeq = max(a.rep.LastSeq, seq)
		if len(v) > 0 && (v[0] == redemptionRecordV1 || v[0] == redemptionRecordV2) {
			a.redemption(seq, v)
			return
		}
		_, ref, err := decodeMovementRecord(seq, v)
		if err != nil {
			a.rep.violate(AuditDecode, "movement "+fmt.Sprint(seq), "%v", err)
			return
		}
		a.refund(ref)
	})
}

func (a *auditor) redemption(seq uint64, v []byte) {
	subject := "redemption " + RedemptionID(seq)
	red, err := decodeRedemptionFields(seq, v)
	if err != nil {
		a.rep.violate(AuditDecode, subject, "%v", err)
		return
	}
	if red.Approved <= 0 || red.Approved > red.Requested || red.Balance < 0 {
		a.rep.violate(AuditRedemption, subject, "requested %d, approved %d, balance after %d",
			red.Requested, red.Approved, red.Balance)
	}
	if red.Lines != nil {
		var covered domain.Tiyn
		for _, l := range red.Lines {
			covered += l.Covered
		}
		if covered != red.Approved {
			a.rep.violate(AuditRedemption, subject, "lines cover %d, approved %d", covered, red.Approved)
		}
	}
	if !red.token.Expires.IsZero() {
		a.rep.UsedTokens++
	}
	if red.Refunded < 0 || red.Refunded > red.Approved {
		a.rep.violate(AuditRedemptionRefund, subject, "refunded %d outside 0-%d approved", red.Refunded, red.Approved)
	}
	if av := a.voucher(red.Voucher); av == nil {
		a.rep.violate(AuditRedemption, subject, "names voucher %s, which has no record", red.Voucher)
	} else {
		av.net += red.Approved
	}

	a.rep.Redemptions.Count++
	a.rep.Redemptions.Amount += red.Approved
	st := a.store(red.StoreID)
	st.Redemptions.Count++
	st.Redemptions.Amount += red.Approved
	a.movements[seq] = &auditMovement{
		summary: Movement{
			Kind: KindRedemption, Seq: seq, Period: red.Period, Redemption: seq, Voucher: red.Voucher,
			StoreID: red.StoreID, TerminalID: red.TerminalID, Amount: red.Approved, CreatedAt: red.CreatedAt,
		},
		refunded: red.Refunded, approved: red.Approved,
	}
}

func (a *auditor) refund(ref *Refund) {
	subject := "refund " + RefundID(ref.Seq)
	m := a.movements[ref.Redemption]
	switch {
	case m == nil || m.summary.Kind != KindRedemption:
		a.rep.violate(AuditRefund, subject, "refunds %s, which is not a redemption on record", RedemptionID(ref.Redemption))
	case m.summary.Voucher != ref.Voucher || m.summary.StoreID != ref.StoreID:
		a.rep.violate(AuditRefund, subject, "names voucher %s of store %q; its redemption %s is voucher %s of store %q",
			ref.Voucher, ref.StoreID, RedemptionID(ref.Redemption), m.summary.Voucher, m.summary.StoreID)
	default:
		m.refunds += ref.Amount
	}
	if ref.Redemption >= ref.Seq {
		a.rep.violate(AuditRefund, subject, "precedes its redemption %s", RedemptionID(ref.Redemption))
	}
	if ref.CreditedTo == CreditVoucher {
		if av := a.voucher(ref.Voucher); av != nil {
			av.net -= ref.Amount
		}
		a.rep.RefundsVoucher.Count++
		a.rep.RefundsVoucher.Amount += ref.Amount
	} else {
		a.rep.RefundsProgramme.Count++
		a.rep.RefundsProgramme.Amount += ref.Amount
	}

	a.rep.Refunds.Count++
	a.rep.Refunds.Amount += ref.Amount
	st := a.store(ref.StoreID)
	st.Refunds.Count++
	st.Refunds.Amount += ref.Amount
	a.movements[ref.Seq] = &auditMovement{summary: Movement{
		Kind: KindRefund, Seq: ref.Seq, Period: ref.Period, Redemption: ref.Redemption, Voucher: ref.Voucher,
		StoreID: ref.StoreID, TerminalID: ref.TerminalID, Amount: ref.Amount, CreatedAt: ref.CreatedAt,
	}}
}

func (a *auditor) voucher(id VoucherID) *auditVoucher {
	if id == 0 || int(id) > len(a.vouchers) || !a.vouchers[id-1].present {
		return nil
	}
	return &a.vouchers[id-1]
}

// periodIndex matches every period-index entry with its movement record.
func (a *auditor) periodIndex() error {
	periods := map[uint64]bool{}
	return a.scan(tablePeriod, func(k, v []byte) {
		if len(k) != 17 {
			a.rep.violate(AuditLayout, fmt.Sprintf("period key %x", k), "want 17 bytes")
			return
		}
		period := binary.BigEndian.Uint64(k[1:9])
		seq := binary.BigEndian.Uint64(k[9:17])
		subject := fmt.Sprintf("period %d movement %d", period, seq)
		got, err := decodeSummary(period, seq, v)
		if err != nil {
			a.rep.violate(AuditDecode, subject, "%v", err)
			return
		}
		if !periods[period] {
			periods[period] = true
			a.rep.Periods++
		}
		if period > a.rep.OpenPeriod {
			a.rep.violate(AuditMovementIndex, subject, "period is after the open period %d", a.rep.OpenPeriod)
		}
		m := a.movements[seq]
		if m == nil {
			a.rep.violate(AuditMovementIndex, subject, "indexed, but no movement record %d exists", seq)
			return
		}
		if m.indexed {
			a.rep.violate(AuditMovementIndex, subject, "indexed in two periods")
		}
		m.indexed = true
		want := m.summary
		if !got.CreatedAt.Equal(want.CreatedAt) {
			a.rep.violate(AuditMovementIndex, subject, "created_at %s, record says %s", got.CreatedAt, want.CreatedAt)
		}
		got.CreatedAt, want.CreatedAt = time.Time{}, time.Time{}
		if got != want {
			a.rep.violate(AuditMovementIndex, subject,
				"index entry: %s of %s, voucher %s, store %q, terminal %q, amount %d; "+
					"record: %s of %s, voucher %s, store %q, terminal %q, amount %d",
				got.Kind, RedemptionID(got.Redemption), got.Voucher, got.StoreID, got.TerminalID, got.Amount,
				want.Kind, RedemptionID(want.Redemption), want.Voucher, want.StoreID, want.TerminalID, want.Amount)
		}
	})
}

// refundIndex matches every refund-index entry with its refund record.
func (a *auditor) refundIndex() error {
	return a.scan(tableRefunds, func(k, v []byte) {
		if len(k) != 17 || len(v) != 0 {
			a.rep.violate(AuditLayout, fmt.Sprintf("refund index key %x", k), "want 17 bytes and no value")
			return
		}
		red := binary.BigEndian.Uint64(k[1:9])
		seq := binary.BigEndian.Uint64(k[9:17])
		subject := "refund " + RefundID(seq)
		m := a.movements[seq]
		if m == nil || m.summary.Kind != KindRefund {
			a.rep.violate(AuditRefundIndex, subject, "indexed under %s, but no refund record %d exists", RedemptionID(red), seq)
			return
		}
		if m.summary.Redemption != red {
			a.rep.violate(AuditRefundIndex, subject, "indexed under %s, record names %s",
				RedemptionID(red), RedemptionID(m.summary.Redemption))
			return
		}
		m.refundIndexed = true
	})
}

// usedTokens flags any key in the retired used-token table: consumed
// tokens are kept in their redemption records.
func (a *auditor) usedTokens() error {
	return a.scan(tableUsedToken, func(k, v []byte) {
		a.rep.violate(AuditUsedToken, fmt.Sprintf("used token key %x", k),
			"the used-token table is retired; tokens live in redemption records")
	})
}

// idempotency decodes every stored answer and matches it with its age
// entry, which Prune walks to forget it.
func (a *auditor) idempotency() error {
	ages := map[string]bool{}
	err := a.scan(tableIdemAge, func(k, _ []byte) {
		if len(k) < 10 || bytes.IndexByte(k[9:], 0) < 0 {
			a.rep.violate(AuditIdempotency, fmt.Sprintf("age key %q", k), "malformed")
			return
		}
		ages[string(k)] = true
	})
	if err != nil {
		return err
	}
	err = a.scan(tableIdem, func(k, v []byte) {
		subject := fmt.Sprintf("idempotency key %q", k[1:])
		i := bytes.IndexByte(k[1:], 0)
		if i < 0 {
			a.rep.violate(AuditIdempotency, subject, "key has no terminal separator")
			return
		}
		rec, err := decodeIdem(v)
		if err != nil {
			a.rep.violate(AuditDecode, subject, "%v", err)
			return
		}
		a.rep.Idempotency++
		age := string(idemAgeKey(nil, rec.created, string(k[1:1+i]), string(k[2+i:])))
		if !ages[age] {
			a.rep.violate(AuditIdempotency, subject, "no age entry for %s: Prune would never forget it",
				rec.created.UTC().Format(time.RFC3339Nano))
		}
		delete(ages, age)
	})
	if err != nil {
		return err
	}
	for k := range ages {
		a.rep.violate(AuditIdempotency, fmt.Sprintf("age key %q", k), "no idempotency record")
	}
	return nil
}

// accounts reads every named account.
func (a *auditor) accounts() error {
	return a.scan(tableAccount, func(k, v []byte) {
		n, err := decodeInt64(v)
		if err != nil {
			a.rep.violate(AuditDecode, fmt.Sprintf("account %q", k[1:]), "%v", err)
			return
		}
		a.rep.Accounts[string(k[1:])] = domain.Tiyn(n)
	})
}

// joinVouchers checks each voucher's spending against the journal.
func (a *auditor) joinVouchers() {
	for i := range a.vouchers {
		v := &a.vouchers[i]
		if v.present && v.spent != v.net {
			a.rep.violate(AuditVoucherSpent, "voucher "+VoucherID(i+1).String(),
				"spent %d != redemptions - refunds credited back = %d", v.spent, v.net)
		}
	}
}

// joinMovements checks what each movement needs from the other tables.
func (a *auditor) joinMovements() {
	seqs := make([]uint64, 0, len(a.movements))
	for seq := range a.movements {
		seqs = append(seqs, seq)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for _, seq := range seqs {
		m := a.movements[seq]
		subject := m.summary.Kind.String() + " " + m.summary.ID()
		if !m.indexed {
			a.rep.violate(AuditMovementIndex, subject, "no entry in the index of period %d", m.summary.Period)
		}
		switch m.summary.Kind {
		case KindRedemption:
			if m.refunded != m.refunds {
				a.rep.violate(AuditRedemptionRefund, subject, "refunded %d != sum of its refund records %d",
					m.refunded, m.refunds)
			}
			if m.refunds > m.approved {
				a.rep.violate(AuditRedemptionRefund, subject, "refunds %d exceed approved %d", m.refunds, m.approved)
			}
		case KindRefund:
			if !m.refundIndexed {
				a.rep.violate(AuditRefundIndex, subject, "missing from the refund index of %s",
					RedemptionID(m.summary.Redemption))
			}
		}
	}
}

// joinStores checks the books: the sum of all accounts, the lapsed
// account, and each shop's payable against its movements and what
// settlement paid.
func (a *auditor) joinStores() {
	rep := a.rep
	rep.AccountSum = rep.Balances
	for name, v := range rep.Accounts {
		rep.AccountSum += v
		switch {
		case len(name) > len("store/") && name[:len("store/")] == "store/":
			a.store(name[len("store/"):]).Payable = v
		case len(name) > len("bank/") && name[:len("bank/")] == "bank/":
			rep.PaidToBanks += v
		}
	}
	if rep.AccountSum != 0 {
		rep.violate(AuditBooks, "all accounts", "vouchers %d + named accounts sum to %d, not zero",
			rep.Balances, rep.AccountSum)
	}
	if got := rep.Accounts[AccountLapsed]; got != rep.Lapsed {
		rep.violate(AuditLapsedAccount, "account "+AccountLapsed, "holds %d, vouchers lapsed %d", got, rep.Lapsed)
	}
	rep.ProgrammeRest = rep.Accounts[AccountProgramme] + rep.Issued - rep.RefundsProgramme.Amount

	ids := make([]string, 0, len(a.stores))
	for id := range a.stores {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		s := a.stores[id]
		s.Paid = s.Redemptions.Amount - s.Refunds.Amount - s.Payable
		if s.Paid < 0 {
			rep.violate(AuditStorePayable, "account "+AccountStore(id),
				"payable %d exceeds redemptions %d - refunds %d = %d", s.Payable,
				s.Redemptions.Amount, s.Refunds.Amount, s.Redemptions.Amount-s.Refunds.Amount)
		}
		rep.PaidByStores += s.Paid
		rep.Stores = append(rep.Stores, *s)
	}
	if rep.PaidByStores != rep.PaidToBanks {
		rep.violate(AuditSettlementPaid, "bank accounts", "shops' payables released %d, bank clearing accounts hold %d",
			rep.PaidByStores, rep.PaidToBanks)
	}
}
