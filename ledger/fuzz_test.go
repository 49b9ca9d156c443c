package ledger

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"azyq/domain"
)

// The fuzz targets below protect the ledger's stored records: a record read
// back from disk is untrusted input (a torn write, a bit flip, a file from
// another build). Decoding arbitrary bytes must return a record or an error,
// never panic and never allocate without bound; and whatever decodes must
// survive encode → decode unchanged, so a record rewritten by the ledger
// means what it meant before.
//
// `go test` runs every seed under testdata/fuzz/<Target>/ and the f.Add
// seeds; `make fuzz` explores further. Seeds named "valid-*" are records the
// current build writes: TestFuzzSeedsStillDecode keeps them decodable, so a
// change of the layout that would make old data directories unreadable fails
// here first. Regenerate them with AZYQ_WRITE_FUZZ_SEEDS=1 go test
// -run TestWriteFuzzSeeds ./ledger only when the format version changes.

var fuzzEpoch = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

// seedVouchers are voucher records as the ledger writes them.
func seedVouchers() map[string][]byte {
	m := domain.MakeMonth(2026, time.December)
	issued := voucherRecord{month: m, members: 4, state: stateIssued,
		face: 1_730_000, balance: 1_730_000, familyID: "F-000123", city: "Pavlodar"}
	active := issued
	active.state, active.activatedAt = stateActive, fuzzEpoch
	active.balance, active.spent = 1_550_000, 180_000
	lapsed := active
	lapsed.state, lapsed.balance, lapsed.lapsed = stateLapsed, 0, 1_550_000
	return map[string][]byte{
		"valid-issued": issued.encode(nil),
		"valid-active": active.encode(nil),
		"valid-lapsed": lapsed.encode(nil),
	}
}

func seedRedemption() *Redemption {
	return &Redemption{
		Seq: 7, Period: 3, Voucher: 42, StoreID: "S1", TerminalID: "T1",
		Requested: 143_200, Approved: 143_200, Balance: 1_586_800, CreatedAt: fuzzEpoch,
		Refunded: 50_000,
		Lines: []PricedLine{
			{Line: Line{SKU: "4870001234567", Category: "sugar", Amount: 98_000},
				Eligible: true, Discount: 9_800, Payable: 88_200, Covered: 88_200},
			{Line: Line{SKU: "4870009999999", Category: "", Amount: 55_000},
				Payable: 55_000},
			{Line: Line{SKU: "4870000000001", Category: "bread", Amount: 61_112},
				Eligible: true, Discount: 6_111, Payable: 55_001, Covered: 55_000},
		},
	}
}

func seedMovements() map[string][]byte {
	red := seedRedemption()
	byAmount := *red
	byAmount.Lines, byAmount.Refunded = nil, 0
	ref := &Refund{Seq: 8, Period: 3, Redemption: 7, Voucher: 42, StoreID: "S1",
		TerminalID: "T2", Amount: 50_000, CreditedTo: CreditVoucher, Balance: 1_636_800,
		CreatedAt: fuzzEpoch.Add(time.Minute)}
	toProgramme := *ref
	toProgramme.CreditedTo = CreditProgramme
	return map[string][]byte{
		"valid-redemption-lines":  encodeRedemption(nil, red),
		"valid-redemption-amount": encodeRedemption(nil, &byAmount),
		"valid-refund-voucher":    encodeRefund(nil, ref),
		"valid-refund-programme":  encodeRefund(nil, &toProgramme),
	}
}

func seedSummaries() map[string][]byte {
	red := Movement{Kind: KindRedemption, Seq: 7, Period: 3, Redemption: 7, Voucher: 42,
		StoreID: "S1", TerminalID: "T1", Amount: 143_200, CreatedAt: fuzzEpoch}
	ref := red
	ref.Kind, ref.Seq, ref.Amount, ref.TerminalID = KindRefund, 8, 50_000, "T2"
	return map[string][]byte{
		"valid-redemption": encodeSummary(nil, &red),
		"valid-refund":     encodeSummary(nil, &ref),
	}
}

func seedIdems() map[string][]byte {
	body := []byte(`{"redemption_id":"RD0000000000007","status":"approved"}`)
	ok := idemRecord{fingerprint: sha256.Sum256([]byte("POST /v1/redemptions")),
		created: fuzzEpoch, resp: Response{Status: 201, Body: body}}
	decline := ok
	decline.resp = Response{Status: 402, Body: []byte(`{"error":{"code":"insufficient_funds"}}`)}
	empty := ok
	empty.resp = Response{Status: 204}
	return map[string][]byte{
		"valid-approved": ok.encode(nil),
		"valid-decline":  decline.encode(nil),
		"valid-empty":    empty.encode(nil),
	}
}

func seedAdminActions() map[string][]byte {
	store := AdminAction{Seq: 1, At: fuzzEpoch, Actor: Actor{Role: "admin", ID: CredentialID("admin-token")},
		Action: ActionStorePut, Object: "store/S1",
		After: json.RawMessage(`{"id":"S1","name":"Shop S1","discount_bp":1000}`)}
	rotate := AdminAction{Seq: 2, At: fuzzEpoch.Add(time.Hour), Actor: Actor{Role: "admin", ID: "sha256:0123456789ab", Remote: "127.0.0.1"},
		Action: ActionTerminalKeyRotate, Object: "terminal/T1",
		Before: json.RawMessage(`{"key":"sha256:aaaaaaaaaaaa"}`),
		After:  json.RawMessage(`{"key":"sha256:bbbbbbbbbbbb"}`)}
	system := AdminAction{Seq: 3, At: fuzzEpoch, Actor: Actor{Role: RoleSystem},
		Action: ActionIssuance, Object: "month/2026-12", After: json.RawMessage(`{"created":1}`)}
	return map[string][]byte{
		"valid-store":  encodeAdminAction(nil, &store),
		"valid-rotate": encodeAdminAction(nil, &rotate),
		"valid-system": encodeAdminAction(nil, &system),
	}
}

// corruptions derives damaged copies of valid records: each truncation point,
// a flipped version byte, trailing garbage and a few flipped bits.
func corruptions(valid map[string][]byte) map[string][]byte {
	out := make(map[string][]byte)
	for name, b := range valid {
		name = strings.TrimPrefix(name, "valid-")
		out["truncated-"+name] = b[:len(b)/2]
		out["empty-"+name] = nil
		v := bytes.Clone(b)
		v[0] ^= 0x7f
		out["version-"+name] = v
		out["trailing-"+name] = append(bytes.Clone(b), 0)
		f := bytes.Clone(b)
		f[len(f)/3] ^= 0x80
		out["bitflip-"+name] = f
	}
	return out
}

func addSeeds(f *testing.F, seeds ...map[string][]byte) {
	for _, m := range seeds {
		for _, b := range m {
			f.Add(b)
		}
	}
}

// equalTimes compares instants, ignoring their locations.
func equalTimes(a, b time.Time) bool { return a.Equal(b) && a.IsZero() == b.IsZero() }

// FuzzVoucherRecord protects decodeVoucher: no panic on any input, only
// records that keep invariant 4 decode, and decode ∘ encode is the identity
// on whatever decodes.
func FuzzVoucherRecord(f *testing.F) {
	valid := seedVouchers()
	addSeeds(f, valid, corruptions(valid))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeVoucher(b)
		if err != nil {
			return
		}
		if r.balance < 0 || r.face != r.balance+r.spent+r.lapsed || r.members == 0 || r.state > stateLapsed {
			t.Fatalf("decoded a voucher that breaks its invariants: %+v", r)
		}
		again, err := decodeVoucher(r.encode(nil))
		if err != nil {
			t.Fatalf("cannot decode re-encoded voucher %+v: %v", r, err)
		}
		if !equalTimes(r.activatedAt, again.activatedAt) {
			t.Fatalf("activated_at %v became %v", r.activatedAt, again.activatedAt)
		}
		r.activatedAt, again.activatedAt = time.Time{}, time.Time{}
		if r != again {
			t.Fatalf("voucher changed through encode/decode:\n%+v\n%+v", r, again)
		}
	})
}

// FuzzMovementRecord protects decodeMovementRecord: no panic, exactly one
// result on success, the per-record invariants hold (approved > 0, refunded
// within approved, refund > 0), lines stay within LinesMax, and a decoded
// record re-encodes to the same record.
func FuzzMovementRecord(f *testing.F) {
	valid := seedMovements()
	addSeeds(f, valid, corruptions(valid))
	f.Fuzz(func(t *testing.T, b []byte) {
		const seq = 7
		red, ref, err := decodeMovementRecord(seq, b)
		if err != nil {
			if red != nil && ref != nil {
				t.Fatalf("both results set on error %v", err)
			}
			return
		}
		switch {
		case (red == nil) == (ref == nil):
			t.Fatalf("decode returned redemption %v and refund %v", red, ref)
		case red != nil:
			if red.Approved <= 0 || red.Refunded < 0 || red.Refunded > red.Approved || len(red.Lines) > LinesMax {
				t.Fatalf("decoded a redemption that breaks its invariants: %+v", red)
			}
			red2, ref2, err := decodeMovementRecord(seq, encodeRedemption(nil, red))
			if err != nil || ref2 != nil {
				t.Fatalf("cannot decode re-encoded redemption %+v: %v", red, err)
			}
			assertSameRedemption(t, red, red2)
		default:
			if ref.Amount <= 0 || ref.CreditedTo != CreditVoucher && ref.CreditedTo != CreditProgramme {
				t.Fatalf("decoded a refund that breaks its invariants: %+v", ref)
			}
			red2, ref2, err := decodeMovementRecord(seq, encodeRefund(nil, ref))
			if err != nil || red2 != nil {
				t.Fatalf("cannot decode re-encoded refund %+v: %v", ref, err)
			}
			if !equalTimes(ref.CreatedAt, ref2.CreatedAt) {
				t.Fatalf("created_at %v became %v", ref.CreatedAt, ref2.CreatedAt)
			}
			ref.CreatedAt, ref2.CreatedAt = time.Time{}, time.Time{}
			if *ref != *ref2 {
				t.Fatalf("refund changed through encode/decode:\n%+v\n%+v", ref, ref2)
			}
		}
	})
}

func assertSameRedemption(t *testing.T, a, b *Redemption) {
	t.Helper()
	if !equalTimes(a.CreatedAt, b.CreatedAt) {
		t.Fatalf("created_at %v became %v", a.CreatedAt, b.CreatedAt)
	}
	x, y := *a, *b
	x.CreatedAt, y.CreatedAt = time.Time{}, time.Time{}
	if !reflect.DeepEqual(x, y) {
		t.Fatalf("redemption changed through encode/decode:\n%+v\n%+v", x, y)
	}
}

// FuzzRedemptionRoundTrip builds redemptions from arbitrary field values the
// commit path can produce and checks that each one reads back exactly: the
// fields a settlement export and a replayed GET depend on.
func FuzzRedemptionRoundTrip(f *testing.F) {
	f.Add(uint64(7), uint64(3), uint32(42), "S1", "T1", int64(180_000), int64(0), int64(1_550_000),
		int64(fuzzEpoch.UnixNano()), "sugar", uint8(0))
	f.Add(uint64(math.MaxUint64), uint64(math.MaxUint64), uint32(math.MaxUint32), strings.Repeat("S", IDMax),
		strings.Repeat("T", IDMax), int64(domain.AmountMax), int64(domain.AmountMax), int64(0),
		int64(math.MinInt64), "", uint8(LinesMax))
	f.Fuzz(func(t *testing.T, seq, period uint64, voucher uint32, store, terminal string,
		approved, refunded, balance, created int64, category string, lines uint8) {
		if voucher == 0 || approved <= 0 || refunded < 0 || refunded > approved || int(lines) > LinesMax {
			t.Skip("not a redemption the ledger can commit")
		}
		red := &Redemption{Seq: seq, Period: period, Voucher: VoucherID(voucher), StoreID: store,
			TerminalID: terminal, Requested: domain.Tiyn(approved), Approved: domain.Tiyn(approved),
			Balance: domain.Tiyn(balance), Refunded: domain.Tiyn(refunded)}
		if created != 0 {
			red.CreatedAt = time.Unix(0, created)
		}
		for i := range int(lines) {
			red.Lines = append(red.Lines, PricedLine{
				Line:     Line{SKU: strconv.Itoa(i), Category: category, Amount: domain.Tiyn(i)},
				Eligible: i%2 == 0, Payable: domain.Tiyn(i)})
		}
		got, ref, err := decodeMovementRecord(seq, encodeRedemption(nil, red))
		if err != nil || ref != nil {
			t.Fatalf("cannot decode encoded redemption %+v: %v", red, err)
		}
		assertSameRedemption(t, red, got)
	})
}

// FuzzSummaryRecord protects decodeSummary, the record settlement reads for
// every movement of a period.
func FuzzSummaryRecord(f *testing.F) {
	valid := seedSummaries()
	addSeeds(f, valid, corruptions(valid))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeSummary(3, 7, b)
		if err != nil {
			return
		}
		if m.Kind != KindRedemption && m.Kind != KindRefund || m.Amount <= 0 || m.Voucher == 0 {
			t.Fatalf("decoded a summary that breaks its invariants: %+v", m)
		}
		again, err := decodeSummary(3, 7, encodeSummary(nil, &m))
		if err != nil {
			t.Fatalf("cannot decode re-encoded summary %+v: %v", m, err)
		}
		if !equalTimes(m.CreatedAt, again.CreatedAt) {
			t.Fatalf("created_at %v became %v", m.CreatedAt, again.CreatedAt)
		}
		m.CreatedAt, again.CreatedAt = time.Time{}, time.Time{}
		if m != again {
			t.Fatalf("summary changed through encode/decode:\n%+v\n%+v", m, again)
		}
	})
}

// FuzzIdemRecord protects decodeIdem: a replayed answer is exactly the bytes
// stored, with a status an HTTP server can send.
func FuzzIdemRecord(f *testing.F) {
	valid := seedIdems()
	addSeeds(f, valid, corruptions(valid))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeIdem(b)
		if err != nil {
			return
		}
		if r.resp.Status < 100 || r.resp.Status > 599 || len(r.resp.Body) > len(b) {
			t.Fatalf("decoded an impossible answer: status %d, %d body bytes from %d", r.resp.Status, len(r.resp.Body), len(b))
		}
		again, err := decodeIdem(r.encode(nil))
		if err != nil {
			t.Fatalf("cannot decode re-encoded record: %v", err)
		}
		if again.fingerprint != r.fingerprint || !equalTimes(again.created, r.created) ||
			again.resp.Status != r.resp.Status || !bytes.Equal(again.resp.Body, r.resp.Body) {
			t.Fatalf("idempotency record changed through encode/decode:\n%+v\n%+v", r, again)
		}
	})
}

// FuzzAccountValue protects the account merge operator, which Pebble calls
// on stored operands during reads and compactions: a malformed operand is an
// error, never a panic, and well-formed operands add up.
func FuzzAccountValue(f *testing.F) {
	f.Add([]byte{}, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	f.Add(encodeInt64(-1_730_000), encodeInt64(180_000))
	f.Add([]byte{1, 2, 3}, encodeInt64(math.MaxInt64))
	f.Fuzz(func(t *testing.T, older, newer []byte) {
		m, err := accountMerger.Merge(accountKey("store/S1"), older)
		if err != nil {
			if len(older) == 8 {
				t.Fatalf("cannot merge an 8-byte operand: %v", err)
			}
			return
		}
		err = m.MergeNewer(newer)
		if (err == nil) != (len(newer) == 8) {
			t.Fatalf("merging a %d-byte operand: %v", len(newer), err)
		}
		if err != nil {
			return
		}
		out, _, err := m.Finish(true)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := decodeInt64(older)
		b, _ := decodeInt64(newer)
		if got, _ := decodeInt64(out); got != a+b {
			t.Fatalf("merged %d and %d into %d", a, b, got)
		}
	})
}

// FuzzAdminActionRecord protects the stored admin log: no panic, bounded
// fields, and decode ∘ encode is the identity.
func FuzzAdminActionRecord(f *testing.F) {
	valid := seedAdminActions()
	addSeeds(f, valid, corruptions(valid))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := decodeAdminAction(9, b)
		if err != nil {
			return
		}
		if a.Seq != 9 || a.Actor.Role == "" || a.Action == "" || len(a.Before) > adminValueMax || len(a.After) > adminValueMax {
			t.Fatalf("decoded an impossible admin action: %+v", a)
		}
		again, err := decodeAdminAction(9, encodeAdminAction(nil, &a))
		if err != nil {
			t.Fatalf("cannot decode re-encoded admin action %+v: %v", a, err)
		}
		if !equalTimes(a.At, again.At) {
			t.Fatalf("at %v became %v", a.At, again.At)
		}
		a.At, again.At = time.Time{}, time.Time{}
		if !reflect.DeepEqual(a, again) {
			t.Fatalf("admin action changed through encode/decode:\n%+v\n%+v", a, again)
		}
	})
}

// fuzzSeeds names every target's seeds, for the two tests below.
var fuzzSeeds = map[string]func() map[string][]byte{
	"FuzzVoucherRecord":     seedVouchers,
	"FuzzMovementRecord":    seedMovements,
	"FuzzSummaryRecord":     seedSummaries,
	"FuzzIdemRecord":        seedIdems,
	"FuzzAdminActionRecord": seedAdminActions,
}

// TestFuzzSeedsStillDecode protects old data directories: every record a
// previous build wrote as a seed ("valid-*") must still decode under the
// same format version. A failure means the layout changed without a new
// formatVersion.
func TestFuzzSeedsStillDecode(t *testing.T) {
	decoders := map[string]func([]byte) error{
		"FuzzVoucherRecord": func(b []byte) error { _, err := decodeVoucher(b); return err },
		"FuzzMovementRecord": func(b []byte) error {
			_, _, err := decodeMovementRecord(1, b)
			return err
		},
		"FuzzSummaryRecord":     func(b []byte) error { _, err := decodeSummary(1, 1, b); return err },
		"FuzzIdemRecord":        func(b []byte) error { _, err := decodeIdem(b); return err },
		"FuzzAdminActionRecord": func(b []byte) error { _, err := decodeAdminAction(1, b); return err },
	}
	for target, decode := range decoders {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "valid-*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Errorf("%s: no valid-* seeds under testdata/fuzz", target)
		}
		for _, file := range files {
			b, err := readCorpusBytes(file)
			if err != nil {
				t.Fatal(err)
			}
			if err := decode(b); err != nil {
				t.Errorf("%s: seed %s no longer decodes: %v", target, filepath.Base(file), err)
			}
		}
	}
}

// readCorpusBytes reads a one-value []byte corpus file of `go test -fuzz`.
func readCorpusBytes(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	lines := strings.SplitN(strings.TrimSpace(string(data)), "\n", 2)
	if len(lines) != 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
		return nil, fmt.Errorf("cannot read corpus file %q: not a []byte corpus entry", file)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		return nil, fmt.Errorf("cannot read corpus file %q: %w", file, err)
	}
	return []byte(s), nil
}

// TestWriteFuzzSeeds regenerates testdata/fuzz from the seed builders. It
// runs only when asked: AZYQ_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("AZYQ_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set AZYQ_WRITE_FUZZ_SEEDS=1 to regenerate testdata/fuzz")
	}
	for target, build := range fuzzSeeds {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		valid := build()
		all := corruptions(valid)
		for k, v := range valid {
			all[k] = v
		}
		for name, b := range all {
			entry := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(entry), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
