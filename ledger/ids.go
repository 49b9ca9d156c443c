package ledger

import "fmt"

// crockford is the Crockford base32 alphabet: digits and upper-case letters
// without I, L, O and U. Every character is in the QR alphanumeric set.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

var crockfordIndex = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i := range len(crockford) {
		t[crockford[i]] = int8(i)
	}
	return t
}()

// VoucherID numbers a voucher densely from 1; its text form is "V" and
// seven base32 characters.
type VoucherID uint32

const voucherIDWidth = 7

// String returns the voucher id's text form, such as "V00000A1".
func (id VoucherID) String() string {
	return string(appendBase32(make([]byte, 0, 1+voucherIDWidth), 'V', uint64(id), voucherIDWidth))
}

// AppendText appends the text form to b without allocating.
func (id VoucherID) AppendText(b []byte) []byte {
	return appendBase32(b, 'V', uint64(id), voucherIDWidth)
}

// ParseVoucherID parses the text form of a voucher id.
func ParseVoucherID(s string) (VoucherID, error) {
	v, ok := parseBase32(s, 'V', voucherIDWidth)
	if !ok || v == 0 || v > 1<<32-1 {
		return 0, fmt.Errorf("cannot parse voucher id %q", s)
	}
	return VoucherID(v), nil
}

// Movements (redemptions and refunds) are named by their sequence number:
// "RD" or "RF" followed by thirteen base32 characters.
const seqWidth = 13

// RedemptionID returns the text id of the redemption with sequence seq.
func RedemptionID(seq uint64) string {
	return string(AppendRedemptionID(make([]byte, 0, 2+seqWidth), seq))
}

// AppendRedemptionID appends the text id of a redemption to b.
func AppendRedemptionID(b []byte, seq uint64) []byte {
	return appendBase32(append(b, 'R'), 'D', seq, seqWidth)
}

// RefundID returns the text id of the refund with sequence seq.
func RefundID(seq uint64) string {
	return string(appendBase32(append(make([]byte, 0, 2+seqWidth), 'R'), 'F', seq, seqWidth))
}

// ParseRedemptionID returns the sequence number of a redemption id.
func ParseRedemptionID(s string) (uint64, error) {
	if len(s) != 2+seqWidth || s[:2] != "RD" {
		return 0, fmt.Errorf("cannot parse redemption id %q", s)
	}
	v, ok := parseBase32(s[2:], 0, seqWidth)
	if !ok || v == 0 {
		return 0, fmt.Errorf("cannot parse redemption id %q", s)
	}
	return v, nil
}

func appendBase32(b []byte, prefix byte, v uint64, width int) []byte {
	if prefix != 0 {
		b = append(b, prefix)
	}
	for i := width - 1; i >= 0; i-- {
		b = append(b, crockford[(v>>(5*uint(i)))&31])
	}
	return b
}

func parseBase32(s string, prefix byte, width int) (uint64, bool) {
	if prefix != 0 {
		if len(s) == 0 || s[0] != prefix {
			return 0, false
		}
		s = s[1:]
	}
	if len(s) != width {
		return 0, false
	}
	var v uint64
	for i := range len(s) {
		d := crockfordIndex[s[i]]
		if d < 0 {
			return 0, false
		}
		if v>>(64-5) != 0 {
			return 0, false
		}
		v = v<<5 | uint64(d)
	}
	return v, true
}
