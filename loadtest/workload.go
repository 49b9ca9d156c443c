package loadtest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	"azyq/domain"
)

// Kind is one operation of the workload.
type Kind uint8

// The operations a run sends. The first five are POS requests; KindQRMint is
// the wallet's and is measured separately so that it never hides inside the
// tills' latency.
const (
	KindRedeemAmount Kind = iota
	KindRedeemBasket
	KindBalance
	KindRefund
	KindRetry
	KindQRMint
	kindCount
)

var kindNames = [kindCount]string{
	KindRedeemAmount: "redeem_amount",
	KindRedeemBasket: "redeem_basket",
	KindBalance:      "balance_inquiry",
	KindRefund:       "refund",
	KindRetry:        "idempotent_retry",
	KindQRMint:       "qr_mint",
}

func (k Kind) String() string {
	if k >= kindCount {
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
	return kindNames[k]
}

// Mix weighs the POS operations of the timed phase. The weights need not
// sum to anything; a zero weight leaves the operation out.
type Mix struct {
	RedeemAmount int `json:"redeem_amount"`
	RedeemBasket int `json:"redeem_basket"`
	Balance      int `json:"balance_inquiry"`
	Refund       int `json:"refund"`
	Retry        int `json:"idempotent_retry"`
}

// DefaultMix is a till's day: mostly redemptions, a basket more often than
// a typed-in amount, some balance checks, few refunds and a few retries of
// requests whose answer the till did not see.
var DefaultMix = Mix{RedeemAmount: 30, RedeemBasket: 50, Balance: 10, Refund: 5, Retry: 5}

// RedemptionMix is the subset the reference designs of bench/compare
// implement: redemptions only.
var RedemptionMix = Mix{RedeemAmount: 40, RedeemBasket: 60}

// ParseMix parses "redeem_amount=30,redeem_basket=50,…". Names left out get
// weight zero.
func ParseMix(s string) (Mix, error) {
	var m Mix
	fields := map[string]*int{
		"redeem_amount": &m.RedeemAmount, "redeem_basket": &m.RedeemBasket,
		"balance_inquiry": &m.Balance, "refund": &m.Refund, "idempotent_retry": &m.Retry,
	}
	for _, part := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		dst, known := fields[name]
		if !ok || !known {
			return Mix{}, fmt.Errorf("cannot parse mix entry %q: want name=weight, names %s",
				part, "redeem_amount, redeem_basket, balance_inquiry, refund, idempotent_retry")
		}
		w, err := strconv.Atoi(val)
		if err != nil || w < 0 || w > 1_000_000 {
			return Mix{}, fmt.Errorf("cannot parse mix weight %q: want 0-1000000", val)
		}
		*dst = w
	}
	if m.total() == 0 {
		return Mix{}, fmt.Errorf("cannot use mix %q: every weight is zero", s)
	}
	return m, nil
}

func (m Mix) total() int {
	return m.RedeemAmount + m.RedeemBasket + m.Balance + m.Refund + m.Retry
}

// Product is a line a till may scan: a category of the catalogue (or none,
// for goods the programme does not cover) and a realistic shelf price range.
type Product struct {
	SKU      string
	Category string // empty: not eligible
	PriceMin domain.Tiyn
	PriceMax domain.Tiyn
}

// Products are shelf prices in tiyn seen in Kazakh supermarkets in 2026: a
// loaf of bread is about 200 tenge, a kilogram of beef about 4,000. The
// last entries have no category or one the catalogue does not know, so a
// basket carries ineligible lines as real ones do.
var Products = []Product{
	{"4870001000010", "bread", 150_00, 320_00},
	{"4870001000027", "wheat_flour", 280_00, 650_00},
	{"4870001000034", "pasta", 250_00, 600_00},
	{"4870001000041", "buckwheat", 450_00, 900_00},
	{"4870001000058", "rice", 500_00, 1100_00},
	{"4870001000065", "potatoes", 150_00, 400_00},
	{"4870001000072", "carrots", 120_00, 350_00},
	{"4870001000089", "onions", 110_00, 300_00},
	{"4870001000096", "cabbage", 130_00, 300_00},
	{"4870001000102", "tomatoes", 600_00, 1500_00},
	{"4870001000119", "cucumbers", 500_00, 1300_00},
	{"4870001000126", "apples", 450_00, 1000_00},
	{"4870001000133", "sugar", 480_00, 700_00},
	{"4870001000140", "salt", 80_00, 180_00},
	{"4870001000157", "sunflower_oil", 750_00, 1300_00},
	{"4870001000164", "beef", 3200_00, 4800_00},
	{"4870001000171", "minced_meat", 2600_00, 3800_00},
	{"4870001000188", "mutton", 3300_00, 4600_00},
	{"4870001000195", "horse_meat", 3500_00, 5200_00},
	{"4870001000201", "fish", 1500_00, 3500_00},
	{"4870001000218", "chicken", 1500_00, 2400_00},
	{"4870001000225", "milk", 450_00, 700_00},
	{"4870001000232", "kefir", 450_00, 750_00},
	{"4870001000249", "sour_cream", 500_00, 900_00},
	{"4870001000256", "cottage_cheese", 700_00, 1400_00},
	{"4870001000263", "butter", 900_00, 1800_00},
	{"4870001000270", "eggs", 600_00, 1100_00},
	{"4870002000017", "", 300_00, 2500_00},           // household goods
	{"4870002000024", "", 500_00, 4000_00},           // detergent
	{"4870002000031", "chocolate", 400_00, 1500_00},  // not in the catalogue
	{"4870002000048", "soft_drinks", 300_00, 900_00}, // not in the catalogue
	{"4870002000055", "", 1500_00, 9000_00},          // alcohol, tobacco
}

// Workload limits.
const (
	// basketLinesMax bounds a generated basket; the contract allows 200,
	// a real shop visit is rarely over 30 lines.
	basketLinesMax = 30
	// amountMin and amountMax bound a typed-in redemption amount: from a
	// loaf of bread to a large weekly shop.
	amountMin domain.Tiyn = 200_00
	amountMax domain.Tiyn = 15_000_00
)

// Line is one basket line of a redemption request.
type Line struct {
	SKU      string      `json:"sku"`
	Category string      `json:"category"`
	Amount   domain.Tiyn `json:"amount"`
}

// Op is one generated operation. Which voucher, terminal, earlier
// redemption or earlier request it touches is drawn by the generator from
// Pick, so that the choice is reproducible even though the set of earlier
// redemptions depends on the server's answers.
type Op struct {
	Seq      uint64
	Kind     Kind
	Hot      bool        // aimed at one of the hot vouchers
	Voucher  int         // index into the run's vouchers
	Terminal int         // index into the run's terminals
	Amount   domain.Tiyn // redeem_amount, refund (upper bound)
	Lines    []Line      // redeem_basket
	Partial  bool        // redeem_basket: accept the whole balance if short
	Pick     uint64      // refund, retry: which earlier record to reuse
}

// Generator draws operations from a seed. It is not safe for concurrent
// use; a run gives each worker its own, seeded from the run's seed and the
// worker's index, so the whole run replays from one number.
type Generator struct {
	rng       *rand.Rand
	mix       Mix
	vouchers  int
	hot       int     // number of hot vouchers: indices 0..hot-1
	hotShare  float64 // share of voucher-bound operations aimed at them
	terminals int
	seq       uint64
}

// GeneratorConfig describes the population operations are drawn over.
type GeneratorConfig struct {
	Mix       Mix
	Vouchers  int
	Terminals int
	// HotVouchers is how many vouchers (the first ones) receive HotShare of
	// the voucher-bound operations. Zero: none are hot.
	HotVouchers int
	HotShare    float64
}

// NewGenerator returns a generator over the given population.
func NewGenerator(seed uint64, c GeneratorConfig) *Generator {
	if c.Vouchers <= 0 || c.Terminals <= 0 || c.Mix.total() == 0 {
		panic(fmt.Sprintf("BUG: generator over %d vouchers, %d terminals, mix %+v",
			c.Vouchers, c.Terminals, c.Mix))
	}
	hot := min(c.HotVouchers, c.Vouchers)
	return &Generator{
		rng:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		mix:       c.Mix,
		vouchers:  c.Vouchers,
		hot:       hot,
		hotShare:  c.HotShare,
		terminals: c.Terminals,
	}
}

// Next returns the next operation.
func (g *Generator) Next() Op {
	g.seq++
	op := Op{Seq: g.seq, Kind: g.kind(), Terminal: g.rng.IntN(g.terminals), Pick: g.rng.Uint64()}

	op.Hot = g.hot > 0 && g.rng.Float64() < g.hotShare
	if op.Hot {
		op.Voucher = g.rng.IntN(g.hot)
	} else {
		op.Voucher = g.rng.IntN(g.vouchers)
	}

	switch op.Kind {
	case KindRedeemAmount:
		op.Amount = g.amount()
	case KindRedeemBasket:
		op.Lines = g.basket()
		op.Partial = g.rng.IntN(4) == 0
	case KindRefund:
		// A refund returns one or a few items: up to a quarter of a shop.
		op.Amount = domain.Tiyn(100_00 + g.rng.Int64N(int64(amountMax/4)))
	}
	return op
}

func (g *Generator) kind() Kind {
	w := g.rng.IntN(g.mix.total())
	for _, c := range []struct {
		k Kind
		w int
	}{
		{KindRedeemAmount, g.mix.RedeemAmount}, {KindRedeemBasket, g.mix.RedeemBasket},
		{KindBalance, g.mix.Balance}, {KindRefund, g.mix.Refund}, {KindRetry, g.mix.Retry},
	} {
		if w < c.w {
			return c.k
		}
		w -= c.w
	}
	panic("BUG: mix weights do not add up")
}

// amount draws a typed-in amount, log-uniform between amountMin and
// amountMax and rounded to whole tenge: small shops are more frequent than
// large ones.
func (g *Generator) amount() domain.Tiyn {
	lo, hi := math.Log(float64(amountMin)), math.Log(float64(amountMax))
	a := domain.Tiyn(math.Exp(lo + g.rng.Float64()*(hi-lo)))
	return a / 100 * 100
}

// basket draws 1..basketLinesMax lines, mostly few, about one in five
// outside the catalogue.
func (g *Generator) basket() []Line {
	n := 1 + int(g.rng.ExpFloat64()*5)
	n = min(n, basketLinesMax)
	lines := make([]Line, n)
	for i := range lines {
		p := Products[g.rng.IntN(len(Products))]
		price := p.PriceMin + domain.Tiyn(g.rng.Int64N(int64(p.PriceMax-p.PriceMin)+1))
		lines[i] = Line{SKU: p.SKU, Category: p.Category, Amount: price / 100 * 100}
	}
	return lines
}

// Family is one family of the set-up issuance.
type Family struct {
	ID      string
	Members int
	City    string
}

var cities = []string{"Almaty", "Astana", "Shymkent", "Karaganda", "Aktobe",
	"Pavlodar", "Kokshetau", "Taraz", "Oskemen", "Semey"}

// Families returns n families, sized as the recipients of targeted social
// assistance are (mostly 3-7 members, a long tail up to 12), drawn from the
// seed. Their ids start with prefix, so two runs against one gateway do not
// share vouchers (issuance is idempotent per family and month).
func Families(seed uint64, prefix string, n int) []Family {
	rng := rand.New(rand.NewPCG(seed, 0x46414d494c59))
	fams := make([]Family, n)
	for i := range fams {
		members := 3 + int(rng.ExpFloat64()*2)
		fams[i] = Family{
			ID:      fmt.Sprintf("%s-%07d", prefix, i),
			Members: min(members, 12),
			City:    cities[rng.IntN(len(cities))],
		}
	}
	return fams
}

// Store is one shop of the set-up.
type Store struct {
	ID         string
	Name       string
	BIN        string
	City       string
	BIC        string
	IBAN       string
	DiscountBP int64
}

var banks = []struct{ bic, code string }{
	{"HSBKKZKX", "601"}, {"KCJBKZKX", "722"}, {"CASPKZKA", "722"},
	{"HCSKKZKA", "998"}, {"ALFAKZKA", "826"},
}

// Stores returns n shops with valid identifiers: a BIN with its mod-11
// check digit, a KZ IBAN with its check digits, a BIC of one of a few
// banks (so settlement has several batches) and a discount of 0-15 %.
// Their ids start with prefix.
func Stores(seed uint64, prefix string, n int) []Store {
	rng := rand.New(rand.NewPCG(seed, 0x53544f5245))
	stores := make([]Store, n)
	for i := range stores {
		var bin string
		for ok := false; !ok; {
			bin, ok = domain.BINWithCheck(fmt.Sprintf("%02d0440%05d", 10+rng.IntN(15), rng.IntN(100000)))
		}
		bank := banks[i%len(banks)]
		account := fmt.Sprintf("KZT%010d", rng.Int64N(1e10))
		stores[i] = Store{
			ID:         fmt.Sprintf("%s-store-%04d", prefix, i),
			Name:       fmt.Sprintf("Load test shop %d", i),
			BIN:        bin,
			City:       cities[i%len(cities)],
			BIC:        bank.bic,
			IBAN:       domain.IBANWithCheck(bank.code, account),
			DiscountBP: int64(rng.IntN(16)) * 100,
		}
	}
	return stores
}
