package ledger

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"azyq/domain"
)

// BenchmarkRecoverVouchers measures what a country's month of vouchers
// costs: the Go heap (and resident set) per active voucher once the ledger
// has recovered them, and the time Open takes to rebuild memory from the
// data directory. AZYQ_VOUCHERS sets the count (default 1,000,000; the
// targets are under 200 bytes per voucher and under 1 s to recover).
//
//	go test ./ledger -run '^$' -bench RecoverVouchers -benchtime 3x
func BenchmarkRecoverVouchers(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("AZYQ_VOUCHERS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatalf("AZYQ_VOUCHERS=%q: %v", s, err)
		}
	}
	dir := b.TempDir()
	fillVouchers(b, dir, n) // once: the sub-benchmark below is what repeats
	b.Run(fmt.Sprintf("vouchers=%d", n), func(b *testing.B) { benchRecover(b, dir, n) })
}

func benchRecover(b *testing.B, dir string, n int) {
	var heap, rss, recovery float64
	for range b.N {
		b.StopTimer()
		runtime.GC()
		debug.FreeOSMemory()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		rssBefore := residentBytes()
		b.StartTimer()

		start := time.Now()
		l, err := Open(Config{Dir: dir, Programme: domain.DefaultProgramme(), Now: func() time.Time { return benchNow }})
		if err != nil {
			b.Fatal(err)
		}
		recovery += time.Since(start).Seconds()

		b.StopTimer()
		if l.vouchers.len() != n {
			b.Fatalf("recovered %d vouchers, want %d", l.vouchers.len(), n)
		}
		runtime.GC()
		debug.FreeOSMemory()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap += float64(after.HeapInuse) - float64(before.HeapInuse)
		rss += float64(residentBytes() - rssBefore)
		runtime.KeepAlive(l)
		l.Close()
		b.StartTimer()
	}
	b.ReportMetric(heap/float64(b.N)/float64(n), "heap-B/voucher")
	b.ReportMetric(rss/float64(b.N)/float64(n), "rss-B/voucher")
	b.ReportMetric(recovery/float64(b.N), "recovery-s")
}

// fillVouchers issues n active vouchers of 2026-12 into dir.
func fillVouchers(tb testing.TB, dir string, n int) {
	start := time.Now()
	l, err := Open(Config{Dir: dir, Programme: domain.DefaultProgramme(), Now: func() time.Time { return benchNow }})
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	families := make([]Family, 0, IssuanceMax)
	for lo := 0; lo < n; lo += IssuanceMax {
		families = families[:0]
		for i := lo; i < min(lo+IssuanceMax, n); i++ {
			families = append(families, Family{FamilyID: fmt.Sprintf("F-%08d", i), Members: 1 + i%6, City: cityNames[i%len(cityNames)]})
		}
		if _, err := l.Issue(dec2026, families); err != nil {
			tb.Fatal(err)
		}
	}

	// Activate from many goroutines so that the activations share fsyncs.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 256 {
		wg.Go(func() {
			for id := next.Add(1); id <= int64(n); id = next.Add(1) {
				if _, err := l.Activate(VoucherID(id)); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	tb.Logf("issued and activated %d vouchers in %s", n, time.Since(start).Round(time.Millisecond))
}

var cityNames = []string{"Almaty", "Astana", "Shymkent", "Pavlodar", "Karaganda", "Aktobe", "Taraz", "Oskemen"}

// residentBytes returns the process's resident set size, or 0 where
// /proc is not available.
func residentBytes() int64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, resident int64
	fmt.Sscan(string(data), &size, &resident)
	return resident * int64(os.Getpagesize())
}
