package bench

import (
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fastjson"

	"azyq/domain"
	"azyq/gateway"
	"azyq/ledger"
	"azyq/loadtest"
)

// BenchmarkQRVerify measures the check every redemption starts with: the
// HMAC of a minted token, its key id and its expiry.
func BenchmarkQRVerify(b *testing.B) {
	keys := newQRKeys(b)
	tok, _, err := keys.Mint(ledger.VoucherID(12345))
	if err != nil {
		b.Fatal(err)
	}
	raw := []byte(tok)
	b.ReportAllocs()
	for b.Loop() {
		if _, fault := keys.Verify(raw); fault != 0 {
			b.Fatalf("token refused: %v", fault)
		}
	}
}

// BenchmarkQRMint measures the wallet's side of the token.
func BenchmarkQRMint(b *testing.B) {
	keys := newQRKeys(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := keys.Mint(ledger.VoucherID(12345)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPriceBasket measures eligibility and discount over a basket of
// ten lines, two of them outside the catalogue.
func BenchmarkPriceBasket(b *testing.B) {
	prog := domain.DefaultProgramme()
	var lines []ledger.Line
	for i, p := range loadtest.Products[:8] {
		lines = append(lines, ledger.Line{SKU: p.SKU, Category: p.Category, Amount: p.PriceMin + domain.Tiyn(i)})
	}
	lines = append(lines, ledger.Line{SKU: "1", Amount: 5000}, ledger.Line{SKU: "2", Category: "tobacco", Amount: 9000})
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := ledger.Price(prog, lines, 1000); !ok {
			b.Fatal("basket priced as not eligible")
		}
	}
}

func newQRKeys(b *testing.B) *gateway.QRKeys {
	k, err := gateway.NewQRKey(1, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	keys, err := gateway.NewQRKeys([]gateway.QRKey{k}, 2*time.Minute, time.Now)
	if err != nil {
		b.Fatal(err)
	}
	return keys
}

// BenchmarkRedemptionHTTP is a whole redemption by amount, durable, through
// the gateway's API on a loopback socket: HTTP parsing, authentication,
// decoding, the token check, the ledger's synced commit and the answer.
// The QR token of each request is minted in-process (about a microsecond),
// standing in for the wallet. It sweeps the number of concurrent
// terminals, since throughput comes from sharing fsyncs among them; the
// redemptions/s metric is the one to read.
func BenchmarkRedemptionHTTP(b *testing.B) {
	for _, conc := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("terminals=%d", conc), func(b *testing.B) {
			benchRedemptions(b, conc)
		})
	}
}

func benchRedemptions(b *testing.B, conc int) {
	const vouchers = 4096
	addr, keys := startGateway(b)
	client, err := loadtest.NewClient(addr, conc+8, 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	termKey, ids := setUp(b, client, vouchers)

	var next atomic.Int64
	b.ReportAllocs()
	// RunParallel runs parallelism × GOMAXPROCS goroutines.
	b.SetParallelism(max(conc/runtime.GOMAXPROCS(0), 1))
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			id := ids[n%vouchers]
			qr, _, err := keys.Mint(id)
			if err != nil {
				b.Error(err)
				return
			}
			body := `{"qr":"` + qr + `","amount":100}`
			resp, err := client.Do("POST", "/v1/redemptions", termKey, "bench-"+strconv.FormatInt(n, 10), []byte(body))
			if err != nil || resp.Status != 201 {
				b.Errorf("redemption: %v, status %d: %s", err, resp.Status, resp.Body)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "redemptions/s")
}

// startGateway serves a gateway on a fresh ledger in a temporary
// directory, on a loopback port.
func startGateway(b *testing.B) (string, *gateway.QRKeys) {
	led, err := ledger.Open(ledger.Config{Dir: b.TempDir(), Programme: domain.DefaultProgramme()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { led.Close() })
	keys := newQRKeys(b)
	srv, err := gateway.New(gateway.Config{Ledger: led, QR: keys, AdminToken: "admin", WalletToken: "wallet"})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	srv.SetReady(true)
	b.Cleanup(func() { srv.Shutdown(b.Context()) })
	return ln.Addr().String(), keys
}

// setUp creates one shop, one terminal and activated vouchers of 30
// members, so that 100-tiyn redemptions never run out.
func setUp(b *testing.B, c *loadtest.Client, n int) (string, []ledger.VoucherID) {
	st := loadtest.Stores(1, "bench", 1)[0]
	body := fmt.Sprintf(`{"name":%q,"bin":%q,"city":%q,"bank_bic":%q,"iban":%q,"discount_bp":%d}`,
		st.Name, st.BIN, st.City, st.BIC, st.IBAN, st.DiscountBP)
	if _, err := c.Expect("PUT", "/v1/stores/"+st.ID, "admin", []byte(body), 200, "create store"); err != nil {
		b.Fatal(err)
	}
	resp, err := c.Expect("POST", "/v1/stores/"+st.ID+"/terminals", "admin",
		[]byte(`{"terminal_id":"bench-pos"}`), 201, "create terminal")
	if err != nil {
		b.Fatal(err)
	}
	termKey := fastjson.GetString(resp.Body, "api_key")

	month := domain.MonthOf(time.Now(), domain.DefaultProgramme().Location).String()
	fams := make([]byte, 0, n*64)
	for i := range n {
		if i > 0 {
			fams = append(fams, ',')
		}
		fams = fmt.Appendf(fams, `{"family_id":"B-%d","members":30,"city":"Almaty"}`, i)
	}
	resp, err = c.Expect("POST", "/v1/issuances", "admin",
		fmt.Appendf(nil, `{"month":%q,"families":[%s]}`, month, fams), 200, "issue")
	if err != nil {
		b.Fatal(err)
	}
	var ids []ledger.VoucherID
	for _, v := range fastjson.MustParseBytes(resp.Body).GetArray("vouchers") {
		s := string(v.GetStringBytes("voucher_id"))
		id, err := ledger.ParseVoucherID(s)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Expect("POST", "/v1/vouchers/"+s+"/activation", "wallet",
			[]byte(`{"consent":true}`), 200, "activate"); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
	}
	return termKey, ids
}
