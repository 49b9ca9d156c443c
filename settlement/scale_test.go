package settlement

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"

	"azyq/domain"
	"azyq/ledger"
)

// scaleEnv turns on the measurements below; they build a million synced
// movements, which takes about a minute, so plain `go test` skips them:
//
//	SETTLEMENT_SCALE=1 go test -run 'TestScale' -v ./settlement/
func scaleEnv(t *testing.T) {
	if os.Getenv("SETTLEMENT_SCALE") == "" {
		t.Skip("set SETTLEMENT_SCALE=1 to measure the cut-off at scale")
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// load redeems n movements spread over the shops from the given vouchers,
// with workers goroutines, each on its own vouchers. It returns the
// latencies in microseconds when hist is set.
func (f *fixture) load(n, workers int, shops []string, vouchers []ledger.VoucherID, hist *hdr.Histogram) {
	f.t.Helper()
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := hdr.New(1, 10_000_000, 3)
			mine := vouchers[w*len(vouchers)/workers : (w+1)*len(vouchers)/workers]
			for i := 0; ; i++ {
				k := next.Add(1)
				if k > int64(n) {
					break
				}
				start := time.Now()
				_, err := f.l.Redeem(&ledger.RedeemRequest{
					Token: ledger.Token{Voucher: mine[i%len(mine)], Nonce: nonce.Add(1),
						Expires: f.clock.Now().Add(time.Minute)},
					StoreID: shops[int(k)%len(shops)], TerminalID: "T", Amount: 100,
				})
				if err != nil {
					f.t.Error(err)
					return
				}
				local.RecordValue(time.Since(start).Microseconds())
			}
			if hist != nil {
				mu.Lock()
				hist.Merge(local)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestScaleCutoff measures a cut-off's own duration over 1,000,000
// movements across 1,000 shops (SETTLEMENT_MOVEMENTS and SETTLEMENT_SHOPS
// change the sizes) and checks the batches add up to them.
func TestScaleCutoff(t *testing.T) {
	scaleEnv(t)
	movements := envInt("SETTLEMENT_MOVEMENTS", 1_000_000)
	nshops := envInt("SETTLEMENT_SHOPS", 1_000)
	f := newFixture(t)
	banks := []string{"HSBKKZKX", "KCJBKZKX", "CASPKZKA", "HCSKKZKA", "ATYNKZKA"}
	shops := make([]string, nshops)
	for i := range shops {
		shops[i] = fmt.Sprintf("S%04d", i)
		f.shop(shops[i], banks[i%len(banks)])
	}
	vouchers := f.vouchers("F", max(movements/1000, 64))

	start := time.Now()
	f.load(movements, 64, shops, vouchers, nil)
	t.Logf("built %d movements across %d shops in %s", movements, nshops, time.Since(start))

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	start = time.Now()
	c := f.cutoff()
	d := time.Since(start)
	runtime.ReadMemStats(&ms)
	t.Logf("cut-off of %d movements, %d shops, %d batches: %s, %d MiB allocated",
		movements, nshops, len(c.Batches), d, (ms.TotalAlloc-before)>>20)

	var count int64
	var gross domain.Tiyn
	for _, id := range c.Batches {
		b := f.batch(id)
		count += b.RedemptionCount
		gross += b.Gross
	}
	if count != int64(movements) || gross != domain.Tiyn(100*movements) {
		t.Fatalf("batches hold %d redemptions worth %d", count, gross)
	}
	if d > time.Second {
		t.Errorf("cut-off took %s, target under 1 s", d)
	}
}

// TestScaleLatency measures redemption latency in process (the ledger's
// Redeem with its synced commit) without and then with cut-offs running in
// a loop, and compares the p99s; the target is at most 2x apart.
func TestScaleLatency(t *testing.T) {
	scaleEnv(t)
	n := envInt("SETTLEMENT_REDEMPTIONS", 200_000)
	workers := envInt("SETTLEMENT_WORKERS", 64)
	f := newFixture(t)
	shops := make([]string, 1000)
	for i := range shops {
		shops[i] = fmt.Sprintf("S%04d", i)
		f.shop(shops[i], []string{"HSBKKZKX", "KCJBKZKX", "CASPKZKA"}[i%3])
	}
	vouchers := f.vouchers("F", 4*workers)
	f.load(n/10, workers, shops, vouchers, nil) // warm up

	quiet := hdr.New(1, 10_000_000, 3)
	start := time.Now()
	f.load(n, workers, shops, vouchers, quiet)
	quietTook := time.Since(start)

	busy := hdr.New(1, 10_000_000, 3)
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		cuts := 0
		for {
			select {
			case <-stop:
				done <- cuts
				return
			default:
			}
			if _, err := f.s.Cutoff(); err != nil {
				t.Error(err)
			}
			cuts++
		}
	}()
	start = time.Now()
	f.load(n, workers, shops, vouchers, busy)
	busyTook := time.Since(start)
	close(stop)
	cuts := <-done

	report := func(name string, h *hdr.Histogram, took time.Duration) {
		t.Logf("%-22s %d redemptions in %s (%.0f/s): p50 %d µs, p99 %d µs, p99.9 %d µs, max %d µs",
			name, h.TotalCount(), took.Round(time.Millisecond), float64(h.TotalCount())/took.Seconds(),
			h.ValueAtQuantile(50), h.ValueAtQuantile(99), h.ValueAtQuantile(99.9), h.Max())
	}
	report("without cut-offs:", quiet, quietTook)
	report(fmt.Sprintf("with %d cut-offs:", cuts), busy, busyTook)
	ratio := float64(busy.ValueAtQuantile(99)) / float64(quiet.ValueAtQuantile(99))
	t.Logf("p99 ratio %.2f (target at most 2)", ratio)
	if ratio > 2 {
		t.Errorf("p99 with cut-offs is %.2fx the p99 without", ratio)
	}
}
