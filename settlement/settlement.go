package settlement

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"azyq/domain"
	"azyq/ledger"
)

// Limits.
const (
	// listLimitDefault and listLimitMax bound one page of batches.
	listLimitDefault = 100
	listLimitMax     = 1000
	// referenceMax is the longest acknowledgement reference, in bytes.
	referenceMax = 140
	// batchStoresMax is the most shops one batch may list; a cut-off that
	// would build a larger one fails loudly instead of writing a record
	// too large to serve. The store_count metric shows how close it runs.
	batchStoresMax = 200_000
)

// Batch statuses of the contract.
const (
	StatusReady        = "ready"
	StatusAcknowledged = "acknowledged"
)

// Batch is one bank's settlement batch, as the contract shows it. Stores is
// set only when the batch is read with its detail.
type Batch struct {
	ID              string       `json:"batch_id"`
	BankBIC         string       `json:"bank_bic"`
	PeriodStart     time.Time    `json:"period_start"`
	PeriodEnd       time.Time    `json:"period_end"`
	Status          string       `json:"status"`
	StoreCount      int          `json:"store_count"`
	RedemptionCount int64        `json:"redemption_count"`
	RefundCount     int64        `json:"refund_count"`
	Gross           domain.Tiyn  `json:"gross"`
	Refunds         domain.Tiyn  `json:"refunds"`
	Net             domain.Tiyn  `json:"net"`
	CutoffID        string       `json:"cutoff_id"`
	Reference       string       `json:"reference,omitempty"`
	AcknowledgedAt  *time.Time   `json:"acknowledged_at,omitempty"`
	Stores          []StoreTotal `json:"stores,omitempty"`

	// FromPeriod and ToPeriod are the ledger periods the batch covers.
	FromPeriod uint64 `json:"-"`
	ToPeriod   uint64 `json:"-"`
}

// StoreTotal is one shop's line of a batch.
type StoreTotal struct {
	StoreID         string      `json:"store_id"`
	Name            string      `json:"name"`
	BIN             string      `json:"bin"`
	IBAN            string      `json:"iban"`
	RedemptionCount int64       `json:"redemption_count"`
	RefundCount     int64       `json:"refund_count"`
	Gross           domain.Tiyn `json:"gross"`
	Refunds         domain.Tiyn `json:"refunds"`
	CarriedIn       domain.Tiyn `json:"carried_in"`
	Net             domain.Tiyn `json:"net"`
	Paid            domain.Tiyn `json:"paid"`
}

// Cutoff is the outcome of one cut-off.
type Cutoff struct {
	ID      string    `json:"cutoff_id"`
	At      time.Time `json:"at"`
	Batches []string  `json:"batches"`

	FromPeriod uint64 `json:"from_period"`
	ToPeriod   uint64 `json:"to_period"`
}

// Config configures Open.
type Config struct {
	// Ledger holds the movements and the records. Required.
	Ledger *ledger.Ledger
	// Now returns the current time. Nil means the ledger's clock.
	Now func() time.Time
	// Logger receives one line per cut-off and acknowledgement. Nil
	// discards them.
	Logger *slog.Logger
}

// Settlement runs cut-offs and keeps batches. All its methods are safe for
// concurrent use; see the package documentation for the design.
type Settlement struct {
	l    *ledger.Ledger
	prog *domain.Programme
	now  func() time.Time
	log  *slog.Logger

	// cut serialises cut-offs and guards the settlement state they
	// advance: only a cut-off reads or writes it.
	cut struct {
		sync.Mutex
		meta  meta
		carry map[string]domain.Tiyn // store id → carry, always < 0
	}

	// ack serialises acknowledgements, so two different references for
	// one batch cannot both be accepted.
	ack sync.Mutex

	// mu guards the published batch heads.
	mu struct {
		sync.Mutex
		heads      []*Batch          // every batch without detail, oldest first
		byID       map[string]*Batch // the same heads by id
		lastCutoff time.Time
	}

	metrics metrics
}

// meta is the settlement's own progress record.
type meta struct {
	// LastSettled is the last ledger period covered by batches.
	LastSettled uint64 `json:"last_settled"`
	// LastCutoffAt is when the last cut-off ran (or when settlement first
	// started): the start of the next batches' period.
	LastCutoffAt time.Time `json:"last_cutoff_at"`
	// Cutoffs and Batches count the records written so far; the next ids
	// follow them.
	Cutoffs uint64 `json:"cutoffs"`
	Batches uint64 `json:"batches"`
}

// Keys of the settlement's records, under the ledger's auxiliary table.
var (
	metaKey      = []byte("s/meta")
	batchPrefix  = []byte("s/b/") // + batch seq(8) → batch JSON with stores
	ackPrefix    = []byte("s/a/") // + batch seq(8) → acknowledgement JSON
	cutoffPrefix = []byte("s/c/") // + cutoff seq(8) → cutoff JSON
	carryPrefix  = []byte("s/k/") // + store id → carry, int64 big-endian
)

func seqKey(prefix []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), seq)
}

func carryKey(storeID string) []byte {
	return append(append([]byte(nil), carryPrefix...), storeID...)
}

// BatchID returns the text id of the batch with sequence seq.
func BatchID(seq uint64) string { return fmt.Sprintf("B%010d", seq) }

// CutoffID returns the text id of the cut-off with sequence seq.
func CutoffID(seq uint64) string { return fmt.Sprintf("C%010d", seq) }

// ParseBatchID returns the sequence number of a batch id.
func ParseBatchID(s string) (uint64, error) {
	if len(s) != 11 || s[0] != 'B' {
		return 0, fmt.Errorf("cannot parse batch id %q: want B and 10 digits", s)
	}
	n, err := strconv.ParseUint(s[1:], 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("cannot parse batch id %q: want B and 10 digits", s)
	}
	return n, nil
}

// ack is the stored acknowledgement of a batch.
type ack struct {
	Reference string    `json:"reference"`
	At        time.Time `json:"at"`
}

// Open loads the settlement's records from the ledger. It does not run a
// missed cut-off; call RunDue (or Run) after it.
func Open(cfg Config) (*Settlement, error) {
	if cfg.Ledger == nil {
		return nil, errors.New("cannot open settlement: no ledger configured")
	}
	s := &Settlement{l: cfg.Ledger, prog: cfg.Ledger.Programme(), now: cfg.Now, log: cfg.Logger}
	if s.now == nil {
		s.now = cfg.Ledger.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.metrics.init()
	s.cut.carry = map[string]domain.Tiyn{}
	s.mu.byID = map[string]*Batch{}
	start := time.Now()

	// The progress record; a new ledger starts its first period now.
	raw, ok, err := s.l.GetAux(metaKey)
	if err != nil {
		return nil, fmt.Errorf("cannot read settlement state: %w", err)
	}
	if ok {
		if err := json.Unmarshal(raw, &s.cut.meta); err != nil {
			return nil, fmt.Errorf("cannot decode settlement state %q: %w", raw, err)
		}
	} else {
		s.cut.meta.LastCutoffAt = s.now().In(s.prog.Location)
		if err := s.l.CommitAux([]ledger.AuxWrite{s.metaWrite(s.cut.meta)}, nil); err != nil {
			return nil, fmt.Errorf("cannot write settlement state: %w", err)
		}
	}
	s.mu.lastCutoff = s.cut.meta.LastCutoffAt

	// Carries, batch heads and acknowledgements.
	err = s.l.ScanAux(carryPrefix, func(k, v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("cannot decode carry of store %q: %d bytes", k[len(carryPrefix):], len(v))
		}
		s.cut.carry[string(k[len(carryPrefix):])] = domain.Tiyn(binary.BigEndian.Uint64(v))
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.l.ScanAux(batchPrefix, func(k, v []byte) error {
		var b Batch
		if err := decodeBatch(v, &b); err != nil {
			return err
		}
		b.Stores = nil
		s.publishLocked(&b)
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = s.l.ScanAux(ackPrefix, func(k, v []byte) error {
		var a ack
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("cannot decode acknowledgement %q: %w", k, err)
		}
		b := s.mu.byID[BatchID(binary.BigEndian.Uint64(k[len(ackPrefix):]))]
		if b == nil {
			return fmt.Errorf("cannot load acknowledgement %q: its batch is missing", k)
		}
		b.Status, b.Reference, b.AcknowledgedAt = StatusAcknowledged, a.Reference, &a.At
		return nil
	})
	if err != nil {
		return nil, err
	}
	if n := uint64(len(s.mu.heads)); n != s.cut.meta.Batches {
		return nil, fmt.Errorf("cannot open settlement: %d batch records but the state counts %d", n, s.cut.meta.Batches)
	}
	s.log.Info("settlement loaded", "batches", len(s.mu.heads), "last_settled_period", s.cut.meta.LastSettled,
		"carries", len(s.cut.carry), "duration", time.Since(start))
	return s, nil
}

// publishLocked adds a batch head to the in-memory index. Called from Open
// (single-threaded) and under mu.
func (s *Settlement) publishLocked(b *Batch) {
	b.PeriodStart = b.PeriodStart.In(s.prog.Location)
	b.PeriodEnd = b.PeriodEnd.In(s.prog.Location)
	s.mu.heads = append(s.mu.heads, b)
	s.mu.byID[b.ID] = b
}

func (s *Settlement) metaWrite(m meta) ledger.AuxWrite {
	v, err := json.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode settlement state: %v", err))
	}
	return ledger.AuxWrite{Key: metaKey, Value: v}
}

// batchRecord is the stored form of a batch: the contract's fields plus the
// periods, which the public JSON leaves out.
type batchRecord struct {
	Batch
	FromPeriod uint64 `json:"from_period"`
	ToPeriod   uint64 `json:"to_period"`
}

func encodeBatch(b *Batch) []byte {
	v, err := json.Marshal(batchRecord{Batch: *b, FromPeriod: b.FromPeriod, ToPeriod: b.ToPeriod})
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode batch %s: %v", b.ID, err))
	}
	return v
}

func decodeBatch(v []byte, b *Batch) error {
	var r batchRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return fmt.Errorf("cannot decode batch record: %w", err)
	}
	*b = r.Batch
	b.FromPeriod, b.ToPeriod = r.FromPeriod, r.ToPeriod
	return nil
}

// Refusals of this package, in the ledger's vocabulary so the gateway maps
// them with its one table.
func notFound(format string, args ...any) error {
	return &ledger.Refusal{Code: ledger.CodeNotFound, Message: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) error {
	return &ledger.Refusal{Code: ledger.CodeInvalid, Message: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &ledger.Refusal{Code: ledger.CodeConflict, Message: fmt.Sprintf(format, args...)}
}

// List returns up to limit batch heads after the cursor (a batch id, or
// empty for the first), oldest first, optionally only those with status.
// next is the cursor of the following page, empty at the end.
func (s *Settlement) List(status, after string, limit int) (batches []Batch, next string, err error) {
	switch {
	case status != "" && status != StatusReady && status != StatusAcknowledged:
		return nil, "", invalid("status %q must be %q or %q", status, StatusReady, StatusAcknowledged)
	case limit < 0 || limit > listLimitMax:
		return nil, "", invalid("limit %d must be 1-%d", limit, listLimitMax)
	case limit == 0:
		limit = listLimitDefault
	}
	var from uint64
	if after != "" {
		seq, err := ParseBatchID(after)
		if err != nil {
			return nil, "", invalid("after: %v", err)
		}
		from = seq
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	// Batch n is heads[n-1]: sequence numbers are dense from 1.
	for i := int(min(from, uint64(len(s.mu.heads)))); i < len(s.mu.heads); i++ {
		b := s.mu.heads[i]
		if status != "" && b.Status != status {
			continue
		}
		if len(batches) == limit {
			return batches, batches[len(batches)-1].ID, nil
		}
		batches = append(batches, *b)
	}
	return batches, "", nil
}

// Batch returns a batch with its per-shop detail.
func (s *Settlement) Batch(id string) (*Batch, error) {
	seq, err := ParseBatchID(id)
	if err != nil {
		return nil, notFound("batch %q does not exist", id)
	}
	s.mu.Lock()
	head := s.mu.byID[id]
	var h Batch
	if head != nil {
		h = *head
	}
	s.mu.Unlock()
	if head == nil {
		return nil, notFound("batch %q does not exist", id)
	}

	raw, ok, err := s.l.GetAux(seqKey(batchPrefix, seq))
	if err != nil {
		return nil, fmt.Errorf("cannot read batch %s: %w", id, err)
	}
	if !ok {
		panic(fmt.Sprintf("BUG: batch %s is published but has no record", id))
	}
	b := new(Batch)
	if err := decodeBatch(raw, b); err != nil {
		return nil, err
	}
	b.PeriodStart, b.PeriodEnd = h.PeriodStart, h.PeriodEnd
	b.Status, b.Reference, b.AcknowledgedAt = h.Status, h.Reference, h.AcknowledgedAt
	return b, nil
}

// ValidReference reports whether ref is an acceptable acknowledgement
// reference: 1–140 printable ASCII characters.
func ValidReference(ref string) bool {
	if len(ref) == 0 || len(ref) > referenceMax {
		return false
	}
	for i := range len(ref) {
		if ref[i] < 0x20 || ref[i] > 0x7e {
			return false
		}
	}
	return true
}

// Acknowledge records that the bank has taken a batch, under the bank's
// reference. The same reference again returns the batch unchanged; another
// reference is a conflict.
func (s *Settlement) Acknowledge(id, reference string) (*Batch, error) {
	if !ValidReference(reference) {
		return nil, invalid("reference must be 1-%d printable ASCII characters", referenceMax)
	}
	seq, err := ParseBatchID(id)
	if err != nil {
		return nil, notFound("batch %q does not exist", id)
	}
	s.ack.Lock()
	defer s.ack.Unlock()

	s.mu.Lock()
	head := s.mu.byID[id]
	var status, prev string
	if head != nil {
		status, prev = head.Status, head.Reference
	}
	s.mu.Unlock()
	switch {
	case head == nil:
		return nil, notFound("batch %q does not exist", id)
	case status == StatusAcknowledged && prev == reference:
		return s.Batch(id)
	case status == StatusAcknowledged:
		return nil, conflict("batch %s was acknowledged with another reference", id)
	}

	a := ack{Reference: reference, At: s.now().In(s.prog.Location)}
	v, err := json.Marshal(a)
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode acknowledgement: %v", err))
	}
	if err := s.l.CommitAux([]ledger.AuxWrite{{Key: seqKey(ackPrefix, seq), Value: v}}, nil); err != nil {
		return nil, fmt.Errorf("cannot record acknowledgement of batch %s: %w", id, err)
	}
	s.mu.Lock()
	head.Status, head.Reference, head.AcknowledgedAt = StatusAcknowledged, a.Reference, &a.At
	s.mu.Unlock()
	s.log.Info("batch acknowledged", "batch", id, "bank", head.BankBIC,
		"age", a.At.Sub(head.PeriodEnd))
	return s.Batch(id)
}

// Cutoffs returns every cut-off, oldest first.
func (s *Settlement) Cutoffs() ([]Cutoff, error) {
	var out []Cutoff
	err := s.l.ScanAux(cutoffPrefix, func(k, v []byte) error {
		var c Cutoff
		if err := json.Unmarshal(v, &c); err != nil {
			return fmt.Errorf("cannot decode cut-off %q: %w", k, err)
		}
		c.At = c.At.In(s.prog.Location)
		out = append(out, c)
		return nil
	})
	return out, err
}

// CheckCarries verifies invariant 4 at a quiet instant right after a
// cut-off (no money moving, every closed period settled): each shop's
// payable account equals its carry. It returns every mismatch it finds.
func (s *Settlement) CheckCarries() error {
	s.cut.Lock()
	defer s.cut.Unlock()
	accounts := s.l.Accounts()
	var problems []string
	for _, st := range s.l.Stores() {
		payable := accounts[ledger.AccountStore(st.ID)]
		if carry := s.cut.carry[st.ID]; payable != carry {
			problems = append(problems, fmt.Sprintf("store %q: payable %d, carry %d", st.ID, payable, carry))
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("carries disagree with payable accounts: %v", problems)
	}
	return nil
}
