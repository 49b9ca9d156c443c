package loadtest

import (
	"reflect"
	"testing"

	"azyq/domain"
)

// TestGeneratorReplaysFromSeed protects the promise that a run replays from
// one number: the same seed gives the same operations, another seed does
// not.
func TestGeneratorReplaysFromSeed(t *testing.T) {
	cfg := GeneratorConfig{Mix: DefaultMix, Vouchers: 1000, Terminals: 40, HotVouchers: 4, HotShare: 0.1}
	draw := func(seed uint64) []Op {
		g := NewGenerator(seed, cfg)
		ops := make([]Op, 2000)
		for i := range ops {
			ops[i] = g.Next()
		}
		return ops
	}
	a, b, c := draw(42), draw(42), draw(43)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("seed 42 drew two different sequences")
	}
	if reflect.DeepEqual(a, c) {
		t.Fatalf("seeds 42 and 43 drew the same sequence")
	}
}

// TestGeneratorFollowsMixAndHotShare checks that the drawn operations follow
// the weights and the hot share within a few percent, and that every
// drawn value is one the contract accepts.
func TestGeneratorFollowsMixAndHotShare(t *testing.T) {
	const n = 50_000
	cfg := GeneratorConfig{Mix: DefaultMix, Vouchers: 500, Terminals: 10, HotVouchers: 3, HotShare: 0.2}
	g := NewGenerator(7, cfg)
	prog := domain.DefaultProgramme()
	var kinds [kindCount]int
	hot, ineligible, lines := 0, 0, 0
	for range n {
		op := g.Next()
		kinds[op.Kind]++
		if op.Voucher < 3 {
			hot++
		}
		if op.Voucher < 0 || op.Voucher >= 500 || op.Terminal < 0 || op.Terminal >= 10 {
			t.Fatalf("op %d out of range: voucher %d, terminal %d", op.Seq, op.Voucher, op.Terminal)
		}
		switch op.Kind {
		case KindRedeemAmount:
			if op.Amount < amountMin || op.Amount > amountMax || op.Amount%100 != 0 {
				t.Fatalf("amount %d outside %d..%d whole tenge", op.Amount, amountMin, amountMax)
			}
		case KindRedeemBasket:
			if len(op.Lines) < 1 || len(op.Lines) > basketLinesMax {
				t.Fatalf("basket of %d lines", len(op.Lines))
			}
			for _, l := range op.Lines {
				lines++
				if l.Amount <= 0 {
					t.Fatalf("line amount %d", l.Amount)
				}
				if !prog.Eligible(l.Category) {
					ineligible++
				}
			}
		}
	}
	total := DefaultMix.total()
	for k, w := range []int{DefaultMix.RedeemAmount, DefaultMix.RedeemBasket, DefaultMix.Balance,
		DefaultMix.Refund, DefaultMix.Retry} {
		want := float64(w) / float64(total)
		got := float64(kinds[k]) / n
		if got < want-0.02 || got > want+0.02 {
			t.Errorf("%s: share %.3f, want %.3f", Kind(k), got, want)
		}
	}
	// Hot vouchers get the hot share plus their fair part of the rest.
	if got := float64(hot) / n; got < 0.18 || got > 0.23 {
		t.Errorf("hot share %.3f, want about 0.2", got)
	}
	if got := float64(ineligible) / float64(lines); got < 0.05 || got > 0.3 {
		t.Errorf("ineligible lines %.3f of all, want some but a minority", got)
	}
}

// TestPopulationIdentifiersAreValid protects the set-up from a gateway that
// validates what it is given: every BIN, IBAN and BIC drawn must pass the
// domain's own checks, and families stay within the contract's limits.
func TestPopulationIdentifiersAreValid(t *testing.T) {
	for _, s := range Stores(99, "lt-test", 200) {
		if !domain.ValidBIN(s.BIN) || !domain.ValidIBAN(s.IBAN) || !domain.ValidBIC(s.BIC) {
			t.Fatalf("store %s: BIN %q, IBAN %q, BIC %q not all valid", s.ID, s.BIN, s.IBAN, s.BIC)
		}
		if s.DiscountBP < 0 || s.DiscountBP > 1500 {
			t.Fatalf("store %s: discount %d bp", s.ID, s.DiscountBP)
		}
	}
	for _, f := range Families(99, "lt-test", 1000) {
		if f.Members < 1 || f.Members > 30 || len(f.ID) > 64 {
			t.Fatalf("family %+v outside the contract", f)
		}
	}
}

// TestParseMix covers the --mix flag's accepted and refused forms.
func TestParseMix(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Mix
		ok   bool
	}{
		{"redeem_amount=1", Mix{RedeemAmount: 1}, true},
		{"redeem_basket=3,refund=1", Mix{RedeemBasket: 3, Refund: 1}, true},
		{"redeem_amount=0", Mix{}, false},
		{"redeem=1", Mix{}, false},
		{"refund=-1", Mix{}, false},
	} {
		got, err := ParseMix(tc.in)
		if (err == nil) != tc.ok || tc.ok && got != tc.want {
			t.Errorf("ParseMix(%q) = %+v, %v; want %+v, ok %t", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// TestRedemptionBodyIsStrictJSON pins the request bodies: the contract
// rejects unknown fields and wrong types, so the load test must send
// exactly these shapes.
func TestRedemptionBodyIsStrictJSON(t *testing.T) {
	amount := RedemptionBody("Q1", &Op{Kind: KindRedeemAmount, Amount: 180000})
	if got := string(amount); got != `{"qr":"Q1","amount":180000}` {
		t.Errorf("amount body %s", got)
	}
	basket := RedemptionBody("Q2", &Op{Kind: KindRedeemBasket, Partial: true, Lines: []Line{
		{SKU: "1", Category: "sugar", Amount: 98000}, {SKU: "2", Category: "", Amount: 55000}}})
	want := `{"qr":"Q2","partial":true,"lines":[{"sku":"1","category":"sugar","amount":98000},` +
		`{"sku":"2","category":"","amount":55000}]}`
	if string(basket) != want {
		t.Errorf("basket body\n got %s\nwant %s", basket, want)
	}
}
