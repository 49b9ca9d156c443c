package loadtest

import (
	"strings"
	"testing"

	"azyq/domain"
)

// TestCheckCatchesPlantedDiscrepancies plants one fault per voucher in the
// gateway's balances and expects the book check to name each one, and
// only those.
func TestCheckCatchesPlantedDiscrepancies(t *testing.T) {
	b := NewBooks()
	for _, id := range []string{"V-ok", "V-short", "V-face", "V-missing", "V-lost", "V-refund"} {
		b.Open(id, 1_730_000)
	}
	b.Approve("V-ok", 180_000)
	b.Refund("V-ok", 50_000)
	b.Approve("V-short", 100_000)
	b.Approve("V-refund", 300_000)
	b.Refund("V-refund", 100_000)
	b.Approve("V-lost", 100_000)
	b.MarkUncertain("V-lost")

	actual := map[string][2]domain.Tiyn{
		"V-ok":     {1_730_000, 1_600_000},
		"V-short":  {1_730_000, 1_530_000}, // debited twice
		"V-face":   {1_000_000, 1_000_000}, // issued with another face value
		"V-lost":   {1_730_000, 0},         // uncertain: not compared
		"V-refund": {1_730_000, 1_430_000}, // the refund never reached the voucher
	}
	c := Check(b.Snapshot(), actual)

	if c.Checked != 5 || c.Uncertain != 1 {
		t.Errorf("checked %d, uncertain %d; want 5 and 1", c.Checked, c.Uncertain)
	}
	want := map[string]string{
		"V-short":   "balance differs",
		"V-face":    "face value",
		"V-missing": "not read back",
		"V-refund":  "balance differs",
	}
	if len(c.Violations) != len(want) {
		t.Fatalf("violations %v, want %d", c.Violations, len(want))
	}
	for _, v := range c.Violations {
		if reason, ok := want[v.VoucherID]; !ok || !strings.Contains(v.Reason, reason) {
			t.Errorf("unexpected violation %s", v)
		}
	}
	if c.OK() {
		t.Errorf("check with violations reports OK")
	}
}

// TestCheckPassesBalancedBooks is the other half: exact balances pass.
func TestCheckPassesBalancedBooks(t *testing.T) {
	b := NewBooks()
	b.Open("V1", 865_000)
	b.Approve("V1", 865_000)
	b.Refund("V1", 1)
	c := Check(b.Snapshot(), map[string][2]domain.Tiyn{"V1": {865_000, 1}})
	if !c.OK() || c.Checked != 1 {
		t.Fatalf("balanced books failed: %+v", c)
	}
}
