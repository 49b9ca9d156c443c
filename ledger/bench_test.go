package ledger

import (
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"azyq/domain"
)

// benchNow is the fixed instant of the benchmarks: inside 2026-12, so every
// voucher issued for that month can be activated and spent.
var benchNow = mustTime("2026-12-03T10:00:00+05:00")

// benchLedger is a ledger with a shop and many active vouchers of 30
// members (12,975,000 tiyn each), enough for millions of small redemptions
// spread so that goroutines rarely wait on the same voucher.
type benchLedger struct {
	l   *Ledger
	ids []VoucherID
}

func openBenchLedger(tb testing.TB, dir string, vouchers int) *benchLedger {
	tb.Helper()
	l, err := Open(Config{Dir: dir, Programme: domain.DefaultProgramme(), Now: func() time.Time { return benchNow }})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	if _, err := l.PutStore(testShop(testStore, 1000)); err != nil {
		tb.Fatal(err)
	}
	if _, err := l.AddTerminal(testStore, testTerminal, sha256.Sum256([]byte("bench"))); err != nil {
		tb.Fatal(err)
	}
	families := make([]Family, vouchers)
	for i := range families {
		families[i] = Family{FamilyID: fmt.Sprintf("F-%07d", i), Members: 30, City: "Pavlodar"}
	}
	out, err := l.Issue(domain.MakeMonth(2026, time.December), families)
	if err != nil {
		tb.Fatal(err)
	}
	bl := &benchLedger{l: l, ids: make([]VoucherID, len(out))}
	for i := range out {
		bl.ids[i] = out[i].Voucher.ID
	}

	// Activate concurrently so that the activations share fsyncs.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(bl.ids)); i = next.Add(1) - 1 {
				if _, err := l.Activate(bl.ids[i]); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return bl
}

// walSyncs returns how many WAL fsyncs Pebble has done.
func walSyncs(l *Ledger) uint64 {
	var m dto.Metric
	if err := l.PebbleMetrics().LogWriter.FsyncLatency.Write(&m); err != nil {
		panic(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// BenchmarkRedeemParallel measures durable redemptions (Sync on, as in
// production) by amount from 1 to 256 goroutines, each taking the next
// voucher in turn. It reports redemptions per second, per WAL fsync, and
// allocations per redemption (of the whole process, Pebble included).
func BenchmarkRedeemParallel(b *testing.B) {
	for _, idem := range []bool{false, true} {
		for _, g := range []int{1, 16, 64, 256} {
			name := fmt.Sprintf("goroutines=%d", g)
			if idem {
				name = fmt.Sprintf("idempotent/goroutines=%d", g)
			}
			b.Run(name, func(b *testing.B) { benchRedeem(b, g, idem) })
		}
	}
}

func benchRedeem(b *testing.B, goroutines int, idem bool) {
	bl := openBenchLedger(b, b.TempDir(), 4096)
	expires := benchNow.Add(2 * time.Minute)
	render := func(red *Redemption, r *Refusal) Response {
		if r != nil {
			return Response{Status: 402, Body: []byte(r.Message)}
		}
		return Response{Status: 201, Body: AppendRedemptionID(make([]byte, 0, 64), red.Seq)}
	}
	var next atomic.Int64
	n := int64(b.N)
	syncs := walSyncs(bl.l)
	cpu := cpuTime()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()

	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			req := RedeemRequest{StoreID: testStore, TerminalID: testTerminal, Amount: 100}
			var key [16]byte
			for i := next.Add(1); i <= n; i = next.Add(1) {
				req.Token = Token{Voucher: bl.ids[int(i)%len(bl.ids)], Nonce: uint64(i), Expires: expires}
				if idem {
					res, _, err := bl.l.Reserve(testTerminal, string(appendUint(key[:0], uint64(i))), [32]byte{})
					if err != nil {
						b.Error(err)
						return
					}
					req.Idem, req.Render = res, render
					_, err = bl.l.Redeem(&req)
					res.Release()
					if err != nil {
						b.Error(err)
						return
					}
					continue
				}
				if _, err := bl.l.Redeem(&req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()

	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "redemptions/s")
	b.ReportMetric(float64(cpuTime()-cpu)/float64(time.Microsecond)/float64(b.N), "cpu-µs/redemption")
	if d := walSyncs(bl.l) - syncs; d > 0 {
		b.ReportMetric(float64(b.N)/float64(d), "redemptions/fsync")
	}
}

func appendUint(b []byte, v uint64) []byte {
	for {
		b = append(b, byte('0'+v%10))
		v /= 10
		if v == 0 {
			return b
		}
	}
}

// cpuTime returns the CPU time the process has used, user and system: on a
// shared machine, CPU per redemption is steadier than redemptions per second.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
