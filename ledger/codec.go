package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"azyq/domain"
)

// The on-disk layout. Every key starts with one byte naming its table, so a
// table is one contiguous key range. Values are compact binary records that
// begin with a record version; JSON is kept for rare, small records (stores,
// terminals).
const (
	tableAccount   = 'a' // 'a' account name → int64, little-endian, merged by addition
	tableIdem      = 'i' // 'i' terminal 0x00 key → idempotency record
	tableIdemAge   = 'j' // 'j' created(8) terminal 0x00 key → "" (pruning order)
	tableLapse     = 'l' // 'l' month(4) → "" once the month's lapse has finished
	tableMeta      = 'm' // 'm' name → value
	tableStore     = 'o' // 'o' store id → store JSON
	tablePeriod    = 'p' // 'p' period(8) seq(8) → movement summary
	tableRefunds   = 'r' // 'r' redemption seq(8) refund seq(8) → ""
	tableMovement  = 's' // 's' seq(8) → redemption or refund record
	tableTerminal  = 't' // 't' terminal id → terminal JSON
	tableUsedToken = 'u' // retired: used tokens live in redemption records; the audit flags any key here
	tableVoucher   = 'v' // 'v' voucher(4) → voucher record
	tableAux       = 'x' // 'x' … → records of other packages (settlement)
)

// formatVersion is the version of the layout above. Open refuses a data
// directory written with another version rather than misread it.
const formatVersion = "azyq-ledger-1"

var versionKey = []byte("!format")

var errCorrupt = errors.New("corrupt record")

// Lengths of the fixed-size keys.
const (
	voucherKeyLen  = 1 + 4
	movementKeyLen = 1 + 8
	periodKeyLen   = 1 + 8 + 8
)

func voucherKey(b []byte, id VoucherID) []byte {
	return binary.BigEndian.AppendUint32(append(b, tableVoucher), uint32(id))
}

func movementKey(b []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(b, tableMovement), seq)
}

func periodKey(b []byte, period, seq uint64) []byte {
	b = binary.BigEndian.AppendUint64(append(b, tablePeriod), period)
	return binary.BigEndian.AppendUint64(b, seq)
}

func refundIndexKey(b []byte, redemption, refund uint64) []byte {
	b = binary.BigEndian.AppendUint64(append(b, tableRefunds), redemption)
	return binary.BigEndian.AppendUint64(b, refund)
}

func lapseKey(m domain.Month) []byte {
	return binary.BigEndian.AppendUint32([]byte{tableLapse}, uint32(m))
}

func idemKey(b []byte, terminal, key string) []byte {
	b = append(append(b, tableIdem), terminal...)
	return append(append(b, 0), key...)
}

func idemAgeKey(b []byte, created time.Time, terminal, key string) []byte {
	b = binary.BigEndian.AppendUint64(append(b, tableIdemAge), uint64(created.UnixNano()))
	b = append(b, terminal...)
	return append(append(b, 0), key...)
}

func accountKey(name string) []byte { return append([]byte{tableAccount}, name...) }

// encoder appends fields to a record.
type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)           { e.b = append(e.b, v) }
func (e *encoder) uvarint(v uint64)     { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)       { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) tiyn(v domain.Tiyn)   { e.varint(int64(v)) }
func (e *encoder) time(t time.Time)     { e.varint(timeNanos(t)) }
func (e *encoder) bytes(v []byte)       { e.uvarint(uint64(len(v))); e.b = append(e.b, v...) }
func (e *encoder) str(v string)         { e.uvarint(uint64(len(v))); e.b = append(e.b, v...) }
func (e *encoder) fixed32(v [32]byte)   { e.b = append(e.b, v[:]...) }
func (e *encoder) flag(v bool)          { e.u8(boolByte(v)) }
func (e *encoder) credit(c Credit)      { e.u8(uint8(c)) }
func (e *encoder) voucher(id VoucherID) { e.uvarint(uint64(id)) }

func timeNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func boolByte(v bool) uint8 {
	if v {
		return 1
	}
	return 0
}

// decoder reads fields of a record. The first malformed field sets err;
// later reads return zero values, so a caller checks err once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
	d.b = nil
}

func (d *decoder) u8() uint8 {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) tiyn() domain.Tiyn { return domain.Tiyn(d.varint()) }

func (d *decoder) time() time.Time {
	n := d.varint()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.bytes()) }

func (d *decoder) fixed32() (v [32]byte) {
	if len(d.b) < 32 {
		d.fail()
		return v
	}
	copy(v[:], d.b)
	d.b = d.b[32:]
	return v
}

func (d *decoder) flag() bool {
	v := d.u8()
	if v > 1 {
		d.fail()
	}
	return v == 1
}

func (d *decoder) credit() Credit {
	c := Credit(d.u8())
	if c != CreditVoucher && c != CreditProgramme {
		d.fail()
	}
	return c
}

func (d *decoder) voucher() VoucherID {
	v := d.uvarint()
	if v == 0 || v > 1<<32-1 {
		d.fail()
	}
	return VoucherID(v)
}

// finish reports a malformed record, or trailing bytes after its fields.
func (d *decoder) finish(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.err = errCorrupt
	}
	if d.err != nil {
		return fmt.Errorf("cannot decode %s: %w", what, d.err)
	}
	return nil
}

// Record versions, the first byte of each value.
const (
	voucherRecordV1    = 1
	redemptionRecordV1 = 1 // without the consumed token
	refundRecordV1     = 2
	redemptionRecordV2 = 3 // with the consumed token's nonce and expiry
	summaryRecordV1    = 1
	idemRecordV1       = 1
)

// voucherRecord is the stored form of a voucher.
type voucherRecord struct {
	month       domain.Month
	members     uint8
	state       voucherState
	face        domain.Tiyn
	balance     domain.Tiyn
	spent       domain.Tiyn
	lapsed      domain.Tiyn
	activatedAt time.Time
	familyID    string
	city        string
}

func (r *voucherRecord) encode(b []byte) []byte {
	e := encoder{b}
	e.u8(voucherRecordV1)
	e.uvarint(uint64(r.month))
	e.u8(r.members)
	e.u8(uint8(r.state))
	e.tiyn(r.face)
	e.tiyn(r.balance)
	e.tiyn(r.spent)
	e.tiyn(r.lapsed)
	e.time(r.activatedAt)
	e.str(r.familyID)
	e.str(r.city)
	return e.b
}

func decodeVoucher(b []byte) (voucherRecord, error) {
	var r voucherRecord
	family, city, err := decodeVoucherInto(b, &r)
	r.familyID, r.city = string(family), string(city)
	return r, err
}

// decodeVoucherInto decodes a voucher record into r, except its family id
// and city, which it returns as views into b.
func decodeVoucherInto(b []byte, r *voucherRecord) (family, city []byte, err error) {
	d := decoder{b: b}
	if d.u8() != voucherRecordV1 {
		d.fail()
	}
	month, family, city := readVoucherFields(&d, r)
	if d.err == nil && !validVoucherRecord(month, r) {
		d.fail()
	}
	return family, city, d.finish("voucher record")
}

// readVoucherFields reads a voucher record's fields after its version, in
// the order voucherRecord.encode writes them, without checking their
// values; it returns the month as stored and views of the two strings.
func readVoucherFields(d *decoder, r *voucherRecord) (month uint64, family, city []byte) {
	month = d.uvarint()
	r.month = domain.Month(month)
	r.members = d.u8()
	r.state = voucherState(d.u8())
	r.face = d.tiyn()
	r.balance = d.tiyn()
	r.spent = d.tiyn()
	r.lapsed = d.tiyn()
	r.activatedAt = d.time()
	family = d.bytes()
	city = d.bytes()
	return month, family, city
}

// validVoucherRecord checks a decoded voucher's fields: a month of the
// years 2000-2999, a known state, no negative amount, and face value =
// balance + spent + lapsed without overflow.
func validVoucherRecord(month uint64, r *voucherRecord) bool {
	if month < uint64(domain.MakeMonth(2000, 1)) || month > uint64(domain.MakeMonth(2999, 12)) {
		return false
	}
	if r.state > stateLapsed || r.members == 0 || r.members > MembersMax {
		return false
	}
	if r.face < 0 || r.balance < 0 || r.spent < 0 || r.lapsed < 0 {
		return false
	}
	sum, err := r.balance.Add(r.spent)
	if err == nil {
		sum, err = sum.Add(r.lapsed)
	}
	return err == nil && sum == r.face
}

// encodeRedemption writes the full record of a redemption.
func encodeRedemption(b []byte, r *Redemption) []byte {
	e := encoder{b}
	e.u8(redemptionRecordV2)
	e.uvarint(r.Period)
	e.voucher(r.Voucher)
	e.str(r.StoreID)
	e.str(r.TerminalID)
	e.tiyn(r.Requested)
	e.tiyn(r.Approved)
	e.tiyn(r.Balance)
	e.time(r.CreatedAt)
	e.tiyn(r.Refunded)
	e.flag(r.Lines != nil)
	e.uvarint(uint64(len(r.Lines)))
	for i := range r.Lines {
		l := &r.Lines[i]
		e.str(l.SKU)
		e.str(l.Category)
		e.tiyn(l.Amount)
		e.flag(l.Eligible)
		e.tiyn(l.Discount)
		e.tiyn(l.Payable)
		e.tiyn(l.Covered)
	}
	e.uvarint(r.token.Nonce)
	e.time(r.token.Expires)
	return e.b
}

func encodeRefund(b []byte, r *Refund) []byte {
	e := encoder{b}
	e.u8(refundRecordV1)
	e.uvarint(r.Period)
	e.uvarint(r.Redemption)
	e.voucher(r.Voucher)
	e.str(r.StoreID)
	e.str(r.TerminalID)
	e.tiyn(r.Amount)
	e.credit(r.CreditedTo)
	e.tiyn(r.Balance)
	e.time(r.CreatedAt)
	return e.b
}

// decodeMovementRecord decodes a record of the movement table: exactly one of
// the results is non-nil.
func decodeMovementRecord(seq uint64, b []byte) (*Redemption, *Refund, error) {
	d := decoder{b: b}
	switch version := d.u8(); version {
	case redemptionRecordV1, redemptionRecordV2:
		r := &Redemption{Seq: seq}
		readRedemptionFields(&d, r, version)
		if d.err == nil && (r.Approved <= 0 || r.Refunded < 0 || r.Refunded > r.Approved) {
			d.fail()
		}
		return r, nil, d.finish("redemption record")
	case refundRecordV1:
		r := &Refund{Seq: seq}
		r.Period = d.uvarint()
		r.Redemption = d.uvarint()
		r.Voucher = d.voucher()
		r.StoreID = d.str()
		r.TerminalID = d.str()
		r.Amount = d.tiyn()
		r.CreditedTo = d.credit()
		r.Balance = d.tiyn()
		r.CreatedAt = d.time()
		if d.err == nil && r.Amount <= 0 {
			d.fail()
		}
		return nil, r, d.finish("refund record")
	default:
		d.fail()
		return nil, nil, d.finish("movement record")
	}
}

// readRedemptionFields reads a redemption record's fields after its
// version, in the order encodeRedemption writes them, without checking the
// amounts. A version 1 record carries no token.
func readRedemptionFields(d *decoder, r *Redemption, version uint8) {
	r.Period = d.uvarint()
	r.Voucher = d.voucher()
	r.StoreID = d.str()
	r.TerminalID = d.str()
	r.Requested = d.tiyn()
	r.Approved = d.tiyn()
	r.Balance = d.tiyn()
	r.CreatedAt = d.time()
	r.Refunded = d.tiyn()
	hasLines := d.flag()
	n := d.uvarint()
	if n > LinesMax || !hasLines && n != 0 {
		d.fail()
	}
	if hasLines && d.err == nil {
		r.Lines = make([]PricedLine, n)
		for i := range r.Lines {
			l := &r.Lines[i]
			l.SKU, l.Category, l.Amount = d.str(), d.str(), d.tiyn()
			l.Eligible, l.Discount, l.Payable, l.Covered = d.flag(), d.tiyn(), d.tiyn(), d.tiyn()
		}
	}
	if version == redemptionRecordV2 {
		nonce, expires := d.uvarint(), d.time()
		if nonce != 0 || !expires.IsZero() {
			r.token = Token{Voucher: r.Voucher, Nonce: nonce, Expires: expires}
		}
	}
}

// encodeSummary writes the movement summary kept in the period index, so
// that settlement reads a period with one sequential scan.
func encodeSummary(b []byte, m *Movement) []byte {
	e := encoder{b}
	e.u8(summaryRecordV1)
	e.u8(uint8(m.Kind))
	e.uvarint(m.Redemption)
	e.voucher(m.Voucher)
	e.tiyn(m.Amount)
	e.time(m.CreatedAt)
	e.str(m.StoreID)
	e.str(m.TerminalID)
	return e.b
}

func decodeSummary(period, seq uint64, b []byte) (Movement, error) {
	d := decoder{b: b}
	m := Movement{Period: period, Seq: seq}
	if d.u8() != summaryRecordV1 {
		d.fail()
	}
	m.Kind = Kind(d.u8())
	m.Redemption = d.uvarint()
	m.Voucher = d.voucher()
	m.Amount = d.tiyn()
	m.CreatedAt = d.time()
	m.StoreID = d.str()
	m.TerminalID = d.str()
	if d.err == nil && (m.Kind != KindRedemption && m.Kind != KindRefund || m.Amount <= 0) {
		d.fail()
	}
	return m, d.finish("movement summary")
}

// idemRecord is a stored answer to an idempotent request.
type idemRecord struct {
	fingerprint [32]byte
	created     time.Time
	resp        Response
}

func (r *idemRecord) encode(b []byte) []byte {
	e := encoder{b}
	e.u8(idemRecordV1)
	e.fixed32(r.fingerprint)
	e.time(r.created)
	e.uvarint(uint64(r.resp.Status))
	e.bytes(r.resp.Body)
	return e.b
}

func decodeIdem(b []byte) (idemRecord, error) {
	d := decoder{b: b}
	var r idemRecord
	if d.u8() != idemRecordV1 {
		d.fail()
	}
	r.fingerprint = d.fixed32()
	r.created = d.time()
	status := d.uvarint()
	r.resp.Body = d.bytes()
	if status < 100 || status > 599 {
		d.fail()
	}
	r.resp.Status = int(status)
	return r, d.finish("idempotency record")
}

func encodeInt64(v int64) []byte { return binary.LittleEndian.AppendUint64(nil, uint64(v)) }

func decodeInt64(b []byte) (int64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("cannot decode account value of %d bytes: %w", len(b), errCorrupt)
	}
	return int64(binary.LittleEndian.Uint64(b)), nil
}
