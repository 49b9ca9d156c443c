package gateway

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"azyq/domain"
	"azyq/ledger"
)

// These tests put a fault-injecting filesystem under the ledger of an
// in-process gateway serving real HTTP, and protect two promises of the
// commit path:
//
//   - when the disk fails a write or a sync, the gateway stops moving money
//     (every request 503 unavailable, /readyz 503) and acknowledges nothing
//     it did not persist;
//   - after a power loss (only synced bytes survive) or a restart on a
//     healthy disk, every acknowledged redemption is there and the books
//     pass the offline audit.
//
// Each prints its seed; AZYQ_DISKFAULT_SEED replays it.

const (
	dfAdmin    = "diskfault-admin"
	dfWallet   = "diskfault-wallet"
	dfTermKey  = "diskfault-terminal"
	dfWorkers  = 8
	dfVouchers = 16
	dfSendMax  = 50_000 // requests per test, a bound on every loop
)

var dfNow = time.Date(2026, 12, 3, 10, 0, 0, 0, time.FixedZone("+05", 5*3600))

func dfSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("AZYQ_DISKFAULT_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("cannot parse AZYQ_DISKFAULT_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (replay with AZYQ_DISKFAULT_SEED=%d)", seed, seed)
	return seed
}

// dfGateway is a gateway serving HTTP on loopback over a ledger on fs.
type dfGateway struct {
	t        *testing.T
	led      *ledger.Ledger
	srv      *Server
	ops      *httptest.Server
	base     string
	client   *http.Client
	served   chan error
	vouchers []ledger.VoucherID
	face     map[ledger.VoucherID]int64
}

func dfOpen(t *testing.T, dir string, fs vfs.FS) *ledger.Ledger {
	t.Helper()
	led, err := ledger.Open(ledger.Config{Dir: dir, FS: fs, Programme: domain.DefaultProgramme(),
		Now: func() time.Time { return dfNow }})
	if err != nil {
		t.Fatalf("cannot open ledger: %v", err)
	}
	return led
}

// newDFGateway serves led and seeds it with a shop, a terminal and active
// vouchers.
func newDFGateway(t *testing.T, led *ledger.Ledger) *dfGateway {
	t.Helper()
	now := func() time.Time { return dfNow }
	qr, err := NewQRKeys([]QRKey{fzQRKey()}, 2*time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Ledger: led, QR: qr, AdminToken: dfAdmin, WalletToken: dfWallet})
	if err != nil {
		t.Fatal(err)
	}
	g := &dfGateway{t: t, led: led, srv: srv, served: make(chan error, 1), face: map[ledger.VoucherID]int64{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { g.served <- srv.Serve(ln) }()
	srv.SetReady(true)
	g.base = "http://" + ln.Addr().String()
	g.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: dfWorkers * 2}, Timeout: 30 * time.Second}
	g.ops = httptest.NewServer(srv.OpsHandler())

	st := ledger.Store{ID: "S1", Name: "Shop", BIN: "260140001231", City: "Pavlodar",
		BankBIC: "HSBKKZKX", IBAN: "KZ89125KZT0000012345", DiscountBP: 500}
	if _, err := led.PutStore(st); err != nil {
		t.Fatal(err)
	}
	if _, err := led.AddTerminal("S1", "T1", sha256.Sum256([]byte(dfTermKey))); err != nil {
		t.Fatal(err)
	}
	var fams []ledger.Family
	for i := range dfVouchers {
		fams = append(fams, ledger.Family{FamilyID: fmt.Sprintf("F-%d", i), Members: 1 + i%4})
	}
	out, err := led.Issue(domain.MonthOf(dfNow, led.Programme().Location), fams)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range out {
		if _, err := led.Activate(o.Voucher.ID); err != nil {
			t.Fatal(err)
		}
		g.vouchers = append(g.vouchers, o.Voucher.ID)
		g.face[o.Voucher.ID] = int64(o.Voucher.FaceValue)
	}
	return g
}

// close stops serving; the caller closes the ledger.
func (g *dfGateway) close() {
	g.srv.http.Shutdown()
	<-g.served
	g.ops.Close()
	g.client.CloseIdleConnections()
}

func (g *dfGateway) post(path, bearer, idem string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest("POST", g.base+path, bytes.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// dfAck is an acknowledged redemption.
type dfAck struct {
	seq      uint64
	voucher  ledger.VoucherID
	approved int64
}

// dfLoad runs redeeming workers until stop returns true, sending at most
// dfSendMax requests. onAnswer sees every answer (status 0: no answer).
type dfLoad struct {
	g    *dfGateway
	mu   sync.Mutex
	acks []dfAck
	sent atomic.Int64
}

func (d *dfLoad) run(seed uint64, stop func() bool, onAnswer func(status int, body []byte)) {
	var wg sync.WaitGroup
	for w := range dfWorkers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for n := 0; !stop() && d.sent.Add(1) <= dfSendMax; n++ {
				v := d.g.vouchers[rng.IntN(len(d.g.vouchers))]
				status, data, err := d.g.post("/v1/vouchers/"+v.String()+"/qr", dfWallet, "", nil)
				if err != nil || status != 201 {
					onAnswer(status, data)
					continue
				}
				var qr struct {
					QR string `json:"qr"`
				}
				if err := json.Unmarshal(data, &qr); err != nil {
					d.g.t.Errorf("mint answer %s: %v", data, err)
					return
				}
				body := fmt.Appendf(nil, `{"qr":%q,"amount":%d}`, qr.QR, 1+rng.Int64N(40_000))
				status, data, err = d.g.post("/v1/redemptions", dfTermKey, fmt.Sprintf("w%d-%d", w, n), body)
				if err != nil {
					status = 0
				}
				d.record(v, status, data)
				onAnswer(status, data)
			}
		})
	}
	wg.Wait()
}

func (d *dfLoad) record(v ledger.VoucherID, status int, data []byte) {
	if status != 201 {
		return
	}
	var r struct {
		ID       string `json:"redemption_id"`
		Voucher  string `json:"voucher_id"`
		Approved int64  `json:"approved"`
	}
	if err := json.Unmarshal(data, &r); err != nil || r.Voucher != v.String() {
		d.g.t.Errorf("redemption answer %s for %s: %v", data, v, err)
		return
	}
	seq, err := ledger.ParseRedemptionID(r.ID)
	if err != nil {
		d.g.t.Errorf("redemption answer %s: %v", data, err)
		return
	}
	d.mu.Lock()
	d.acks = append(d.acks, dfAck{seq: seq, voucher: v, approved: r.Approved})
	d.mu.Unlock()
}

func (d *dfLoad) acked() []dfAck {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]dfAck(nil), d.acks...)
}

// verifyRecovered checks a ledger reopened after the fault: the books
// balance, every acknowledged redemption is there with its amount, and no
// voucher paid more than its face value.
func verifyRecovered(t *testing.T, led *ledger.Ledger, acks []dfAck, face map[ledger.VoucherID]int64) {
	t.Helper()
	if err := led.CheckBooks(); err != nil {
		t.Fatal(err)
	}
	ackedSpent := map[ledger.VoucherID]int64{}
	for _, a := range acks {
		red, err := led.Redemption(a.seq)
		if err != nil {
			t.Fatalf("acknowledged redemption %s is lost: %v", ledger.RedemptionID(a.seq), err)
		}
		if int64(red.Approved) != a.approved || red.Voucher != a.voucher {
			t.Fatalf("acknowledged redemption %s: voucher %s approved %d, acknowledged %s %d",
				ledger.RedemptionID(a.seq), red.Voucher, red.Approved, a.voucher, a.approved)
		}
		ackedSpent[a.voucher] += a.approved
	}
	for id, f := range face {
		v, err := led.Voucher(id)
		if err != nil {
			t.Fatal(err)
		}
		// Redemptions that were never acknowledged may have reached the
		// disk; they can only lower the balance further.
		if int64(v.FaceValue) != f || int64(v.Balance) > f-ackedSpent[id] || v.Balance < 0 {
			t.Fatalf("voucher %s: face %d balance %d, acknowledged spending %d", id, v.FaceValue, v.Balance, ackedSpent[id])
		}
	}
}

// dfFault is a disk fault the injector can arm.
type dfFault struct {
	name  string
	kinds []errorfs.OpKind
	err   error
}

var dfFaults = []dfFault{
	{"sync fails", []errorfs.OpKind{errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo}, errorfs.ErrInjected},
	{"write fails", []errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt}, errorfs.ErrInjected},
	{"disk full", []errorfs.OpKind{errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync,
		errorfs.OpFileSyncData, errorfs.OpFileSyncTo, errorfs.OpCreate, errorfs.OpFilePreallocate}, syscall.ENOSPC},
}

// TestDiskFaultStopsMoney arms each fault in the middle of a redemption
// load: the gateway must stop moving money with 503 unavailable and a
// failing /readyz, and a restart on a healthy disk must find every
// acknowledged redemption and balanced books.
func TestDiskFaultStopsMoney(t *testing.T) {
	seed := dfSeed(t)
	for i, fault := range dfFaults {
		t.Run(fault.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			dir := t.TempDir()
			var armed atomic.Bool
			inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
				if !armed.Load() {
					return nil
				}
				for _, k := range fault.kinds {
					if op.Kind == k {
						return fmt.Errorf("injected %s on %s: %w", fault.name, op.Path, fault.err)
					}
				}
				return nil
			})
			led := dfOpen(t, dir, errorfs.Wrap(vfs.Default, inj))
			g := newDFGateway(t, led)

			// Redeem for a while, arm the fault, and keep going until
			// every worker has seen the gateway refuse.
			var unavailable atomic.Int64
			var afterArm atomic.Int64
			load := &dfLoad{g: g}
			armAfter := int64(50 + rng.IntN(300))
			var answered atomic.Int64
			load.run(seed, func() bool { return unavailable.Load() >= 3*dfWorkers }, func(status int, body []byte) {
				if answered.Add(1) == armAfter {
					armed.Store(true)
				}
				switch {
				case status == 503:
					if !bytes.Contains(body, []byte(`"code":"unavailable"`)) {
						t.Errorf("503 without the unavailable code: %s", body)
					}
					unavailable.Add(1)
				case armed.Load() && status != 0:
					afterArm.Add(1)
				case status == 0 || status >= 500:
					t.Errorf("answer %d %s", status, body)
				}
			})
			if unavailable.Load() < 3*dfWorkers {
				t.Fatalf("the gateway never stopped: %d answers, %d unavailable", answered.Load(), unavailable.Load())
			}

			// Stopped: not ready, every money request refused.
			if led.Err() == nil || g.srv.Ready() {
				t.Fatalf("after the fault: ledger err %v, ready %v", led.Err(), g.srv.Ready())
			}
			resp, err := http.Get(g.ops.URL + "/readyz")
			if err != nil || resp.StatusCode != 503 {
				t.Fatalf("/readyz after the fault: %v %v", resp, err)
			}
			resp.Body.Close()
			status, body, err := g.post("/v1/vouchers/"+g.vouchers[0].String()+"/qr", dfWallet, "", nil)
			if err != nil || status != 503 {
				t.Fatalf("mint after the fault: %d %s %v", status, body, err)
			}

			acks := load.acked()
			t.Logf("%s: %d acknowledged before the fault, %d answers after arming (in flight), then 503",
				fault.name, len(acks), afterArm.Load())
			g.close()
			led.Close()

			// A restart on a healthy disk finds everything acknowledged.
			led = dfOpen(t, dir, vfs.Default)
			verifyRecovered(t, led, acks, g.face)
			led.Close()
			dfAudit(t, dir, vfs.Default)
		})
	}
}

// TestPowerLossKeepsAcknowledged takes crash images of the disk in the
// middle of a redemption load: an image holds what was synced and a
// random part of what was not, as after a power loss. Every redemption
// acknowledged before the image was taken must be in it.
func TestPowerLossKeepsAcknowledged(t *testing.T) {
	seed := dfSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	fs := vfs.NewCrashableMem()
	const dir = "/data"
	led := dfOpen(t, dir, fs)
	g := newDFGateway(t, led)

	images := 3
	if testing.Short() {
		images = 1
	}
	type image struct {
		fs   *vfs.MemFS
		acks []dfAck
	}
	var taken []image
	var answered atomic.Int64
	var next atomic.Int64
	next.Store(int64(100 + rng.IntN(400)))
	load := &dfLoad{g: g}
	var mu sync.Mutex
	load.run(seed, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(taken) >= images
	}, func(status int, body []byte) {
		if status == 0 || status >= 500 {
			t.Errorf("answer %d %s", status, body)
		}
		if answered.Add(1) < next.Load() {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if answered.Load() < next.Load() || len(taken) >= images {
			return
		}
		// Acknowledgements first, then the image: each one was synced
		// before it was sent, so the image must hold it.
		acks := load.acked()
		clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(60), RNG: rand.New(rand.NewPCG(seed, uint64(len(taken))))})
		taken = append(taken, image{clone, acks})
		next.Store(answered.Load() + int64(100+rng.IntN(400)))
	})
	g.close()
	led.Close()
	if len(taken) < images {
		t.Fatalf("took %d crash images of %d", len(taken), images)
	}

	for i, img := range taken {
		led := dfOpen(t, dir, img.fs)
		verifyRecovered(t, led, img.acks, g.face)
		led.Close()
		dfAudit(t, dir, img.fs)
		t.Logf("image %d: %d acknowledged redemptions survived the power loss", i, len(img.acks))
	}
}

// dfAudit runs the offline audit of a closed data directory.
func dfAudit(t *testing.T, dir string, fs vfs.FS) {
	t.Helper()
	rep, err := ledger.Audit(ledger.Config{Dir: dir, FS: fs, Programme: domain.DefaultProgramme(),
		Now: func() time.Time { return dfNow }})
	if err != nil {
		t.Fatalf("cannot audit: %v", err)
	}
	if !rep.OK() {
		for _, v := range rep.Violations {
			t.Errorf("audit: %s", v)
		}
		t.Fatal("the audit found violations")
	}
}
