package ledger

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"azyq/domain"
)

// The crash test runs the ledger in a child process (this test binary,
// re-executed with crashChildEnv set), which redeems and refunds from
// several goroutines and reports each operation on stdout: a "B" line
// before the call and an "A" (approved) or "D" (declined) line after it
// returned. The parent kills the child with SIGKILL at a random moment,
// reopens the data directory and checks that every acknowledged operation
// survived, that nothing else did except operations still in flight, and
// that the books balance; then it starts the next round on the same
// directory.
const (
	crashChildEnv   = "AZYQ_CRASH_CHILD_DIR"
	crashSeedEnv    = "AZYQ_CRASH_SEED"
	crashVouchers   = 8
	crashGoroutines = 4
	crashOpsMax     = 20_000 // a child that is never killed stops here
)

var crashNow = mustTime("2026-12-03T10:00:00+05:00")

func crashProgramme() *domain.Programme { return domain.DefaultProgramme() }

func crashFingerprint(key string) [32]byte { return sha256.Sum256([]byte(key)) }

// TestCrash protects durability: what the ledger acknowledged survives a
// SIGKILL, and a restart finds consistent state, over several rounds.
func TestCrash(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(t, dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns processes")
	}
	seed := *seedFlag
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (replay: go test ./ledger -run 'TestCrash$' -seed %d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := t.TempDir()
	acked := map[string]crashOp{} // by idempotency key, over all rounds
	for round := range 5 {
		lines := crashRound(t, dir, round, seed, time.Duration(rng.IntN(300))*time.Millisecond)
		crashCheck(t, dir, round, lines, acked)
	}
}

// crashOp is an operation as the child reported it.
type crashOp struct {
	key  string
	kind byte // 'R' redemption, 'F' refund
	body string
}

// crashRound runs one child until it is killed and returns its stdout lines.
func crashRound(t *testing.T, dir string, round int, seed uint64, after time.Duration) []string {
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrash$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s=%d", crashSeedEnv, seed+uint64(round)))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	var lines []string
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if sc.Text() == "READY" {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-done:
		cmd.Wait()
		t.Fatalf("round %d: child ended before it was ready: %s", round, stderr.String())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("round %d: child not ready after 30 s: %s", round, stderr.String())
	}
	time.Sleep(after)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	cmd.Wait()
	if len(lines) > 0 && lines[len(lines)-1] == "DONE" {
		t.Logf("round %d: the child finished before it was killed", round)
	}
	return lines
}

// crashCheck reopens the directory after a round and checks it against
// what the child reported.
func crashCheck(t *testing.T, dir string, round int, lines []string, acked map[string]crashOp) {
	begun := map[string]byte{}
	n := 0
	for _, line := range lines {
		f := strings.SplitN(line, " ", 4)
		switch f[0] {
		case "B":
			begun[f[2]] = f[1][0]
		case "A", "D":
			acked[f[2]] = crashOp{key: f[2], kind: f[1][0], body: f[3]}
			delete(begun, f[2])
			n++
		}
	}
	l, err := Open(Config{Dir: dir, Programme: crashProgramme(), Now: func() time.Time { return crashNow }})
	if err != nil {
		t.Fatalf("round %d: reopen: %v", round, err)
	}
	defer l.Close()
	if err := l.CheckBooks(); err != nil {
		t.Fatalf("round %d: %v", round, err)
	}

	// Every acknowledged answer is there, byte for byte.
	seqs := map[uint64]bool{}
	for key, op := range acked {
		res, resp, err := l.Reserve(testTerminal, key, crashFingerprint(key))
		if err != nil || res != nil || string(resp.Body) != op.body {
			t.Fatalf("round %d: acknowledged %s (%s) is lost: %v %v %v", round, key, op.body, res, resp, err)
		}
		if op.kind == 'R' && !strings.HasPrefix(op.body, "declined") {
			var seq uint64
			var approved, balance domain.Tiyn
			fmt.Sscan(op.body, &seq, &approved, &balance)
			red, err := l.Redemption(seq)
			if err != nil || red.Approved != approved {
				t.Fatalf("round %d: acknowledged redemption %d of %d: %+v %v", round, seq, approved, red, err)
			}
			seqs[seq] = true
		}
		if op.kind == 'F' && !strings.HasPrefix(op.body, "declined") {
			var seq uint64
			fmt.Sscan(op.body, &seq)
			seqs[seq] = true
		}
	}

	// Operations in flight at the kill are whole or absent.
	inflight := 0
	for key := range begun {
		res, resp, err := l.Reserve(testTerminal, key, crashFingerprint(key))
		switch {
		case err != nil:
			t.Fatalf("round %d: in-flight %s: %v", round, key, err)
		case res != nil:
			res.Release()
		default:
			// Committed though never acknowledged: from now on it is
			// part of the history later rounds check.
			var seq uint64
			fmt.Sscan(string(resp.Body), &seq)
			seqs[seq] = true
			acked[key] = crashOp{key: key, kind: begun[key], body: string(resp.Body)}
			inflight++
		}
	}

	// No movement exists that was neither acknowledged nor in flight, and
	// each voucher's balance is its face value less what its movements
	// say.
	spent := map[VoucherID]domain.Tiyn{}
	for seq := uint64(1); seq <= l.seq.Load(); seq++ {
		// Commits run concurrently, so the kill can leave a later sequence
		// number durable and an earlier one, never acknowledged, absent.
		if _, ok, err := l.get(movementKey(nil, seq)); err != nil || !ok {
			if err != nil {
				t.Fatal(err)
			}
			continue
		}
		if !seqs[seq] {
			t.Fatalf("round %d: movement %d was never acknowledged nor in flight", round, seq)
		}
		red, err := l.Redemption(seq)
		if code(err) == CodeNotFound {
			continue // a refund, counted with its redemption
		}
		if err != nil {
			t.Fatal(err)
		}
		spent[red.Voucher] += red.Approved
		refunds, err := l.Refunds(seq)
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range refunds {
			if ref.CreditedTo == CreditVoucher {
				spent[red.Voucher] -= ref.Amount
			}
		}
	}
	for id := VoucherID(1); id <= crashVouchers; id++ {
		v, err := l.Voucher(id)
		if err != nil || v.Balance != v.FaceValue-spent[id] || v.Spent != spent[id] {
			t.Fatalf("round %d: voucher %s: %+v %v, movements spent %d", round, id, v, err, spent[id])
		}
	}
	t.Logf("round %d: %d operations acknowledged, %d in flight at the kill, %d of them committed, sequence %d",
		round, n, len(begun), inflight, l.seq.Load())
}

// crashChild is the child process: it sets the ledger up if needed, then
// applies operations until it is killed.
func crashChild(t *testing.T, dir string) {
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	l, err := Open(Config{Dir: dir, Programme: crashProgramme(), Now: func() time.Time { return crashNow }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.PutStore(testShop(testStore, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Terminal(testTerminal); !ok {
		if _, err := l.AddTerminal(testStore, testTerminal, sha256.Sum256([]byte("crash"))); err != nil {
			t.Fatal(err)
		}
	}
	families := make([]Family, crashVouchers)
	for i := range families {
		families[i] = Family{FamilyID: fmt.Sprintf("F%d", i), Members: 2}
	}
	if _, err := l.Issue(dec2026, families); err != nil {
		t.Fatal(err)
	}
	for id := VoucherID(1); id <= crashVouchers; id++ {
		if _, err := l.Activate(id); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		os.Stdout.WriteString(fmt.Sprintf(format, args...) + "\n")
	}
	say("READY")
	var wg sync.WaitGroup
	for g := range crashGoroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			var mine []uint64
			for i := range crashOpsMax / crashGoroutines {
				key := fmt.Sprintf("s%d-g%d-%d", seed, g, i)
				res, _, err := l.Reserve(testTerminal, key, crashFingerprint(key))
				if err != nil {
					t.Error(err)
					return
				}
				if len(mine) > 0 && rng.IntN(4) == 0 {
					say("B F %s", key)
					ref, err := l.Refund(&RefundRequest{Redemption: mine[rng.IntN(len(mine))], StoreID: testStore,
						TerminalID: testTerminal, Amount: domain.Tiyn(1 + rng.IntN(500)), Idem: res,
						Render: func(ref *Refund, r *Refusal) Response {
							if r != nil {
								return Response{Status: 422, Body: []byte("declined " + r.Code.String())}
							}
							return Response{Status: 201, Body: fmt.Appendf(nil, "%d %d", ref.Seq, ref.Amount)}
						}})
					res.Release()
					switch {
					case err == nil:
						say("A F %s %d %d", key, ref.Seq, ref.Amount)
					case AsRefusal(err) != nil:
						say("D F %s declined %s", key, AsRefusal(err).Code)
					default:
						t.Error(err)
						return
					}
					continue
				}
				id := VoucherID(1 + rng.IntN(crashVouchers))
				say("B R %s", key)
				red, err := l.Redeem(&RedeemRequest{
					Token:   Token{Voucher: id, Nonce: seed<<20 | uint64(g)<<16 | uint64(i), Expires: crashNow.Add(time.Minute)},
					StoreID: testStore, TerminalID: testTerminal, Amount: domain.Tiyn(1 + rng.IntN(2_000)), Idem: res,
					Render: func(red *Redemption, r *Refusal) Response {
						if r != nil {
							return Response{Status: 402, Body: []byte("declined " + r.Code.String())}
						}
						return Response{Status: 201, Body: fmt.Appendf(nil, "%d %d %d", red.Seq, red.Approved, red.Balance)}
					}})
				res.Release()
				switch {
				case err == nil:
					mine = append(mine, red.Seq)
					say("A R %s %d %d %d", key, red.Seq, red.Approved, red.Balance)
				case AsRefusal(err) != nil:
					say("D R %s declined %s", key, AsRefusal(err).Code)
				default:
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	say("DONE")
	l.Close()
}

// TestPowerLoss protects durability against losing the page cache, which
// a killed process keeps: redemptions run from several goroutines on a
// crashable in-memory filesystem, and at random moments the test clones
// it as a power loss would leave it (all synced data, a random part of the
// rest). Opening a clone must find every redemption acknowledged before
// the clone was taken, and balanced books.
func TestPowerLoss(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (replay: go test ./ledger -run 'TestPowerLoss$' -seed %d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 11))
	fs := vfs.NewCrashableMem()
	const dir = "/ledger"
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := Open(Config{Dir: dir, FS: fs, Programme: crashProgramme(), Now: func() time.Time { return crashNow }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.PutStore(testShop(testStore, 1000)); err != nil {
		t.Fatal(err)
	}
	families := make([]Family, crashVouchers)
	for i := range families {
		families[i] = Family{FamilyID: fmt.Sprintf("F%d", i), Members: 30}
	}
	if _, err := l.Issue(dec2026, families); err != nil {
		t.Fatal(err)
	}
	for id := VoucherID(1); id <= crashVouchers; id++ {
		if _, err := l.Activate(id); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	acked := map[uint64]domain.Tiyn{}
	stop := make(chan struct{})
	perGoroutine := uint64(1_500)
	if raceEnabled || testing.Short() {
		perGoroutine = 150
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range perGoroutine {
				select {
				case <-stop:
					return
				default:
				}
				red, err := l.Redeem(&RedeemRequest{
					Token:   Token{Voucher: VoucherID(1 + (i+uint64(g))%crashVouchers), Nonce: uint64(g)<<32 | i, Expires: crashNow.Add(time.Minute)},
					StoreID: testStore, TerminalID: testTerminal, Amount: 100})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked[red.Seq] = red.Approved
				mu.Unlock()
			}
		})
	}
	pause := 40
	if raceEnabled || testing.Short() {
		pause = 400
	}
	for round := range 5 {
		time.Sleep(time.Duration(5+rng.IntN(pause/5)) * time.Millisecond)
		mu.Lock()
		durable := maps.Clone(acked)
		mu.Unlock()
		clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rng})

		cl, err := Open(Config{Dir: dir, FS: clone, Programme: crashProgramme(), Now: func() time.Time { return crashNow }})
		if err != nil {
			t.Fatalf("round %d: open the clone: %v", round, err)
		}
		if err := cl.CheckBooks(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for seq, amount := range durable {
			if red, err := cl.Redemption(seq); err != nil || red.Approved != amount {
				t.Fatalf("round %d: acknowledged redemption %d lost after power loss: %+v %v", round, seq, red, err)
			}
		}
		t.Logf("round %d: %d acknowledged redemptions, %d on the clone", round, len(durable), cl.seq.Load())
		cl.Close()
	}
	close(stop)
	wg.Wait()
}
