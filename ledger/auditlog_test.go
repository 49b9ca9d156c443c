package ledger

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"azyq/domain"
)

var testAdmin = Actor{Role: "admin", ID: CredentialID("admin-secret-token"), Remote: "127.0.0.1"}

// adminLogAll reads the whole admin log page by page.
func adminLogAll(t *testing.T, l *Ledger, page int) []AdminAction {
	t.Helper()
	var all []AdminAction
	cursor := uint64(0)
	for range 10_000 {
		recs, err := l.AdminLog(cursor, page)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return all
		}
		all = append(all, recs...)
		cursor = recs[len(recs)-1].Seq
	}
	t.Fatal("admin log paging did not end")
	return nil
}

// TestAdminLogRecordsEveryAdminChange protects the audit trail: each admin
// write (store create and update, terminal add, key rotation, issuance that
// creates and issuance that does not, an action of another package) leaves
// exactly one record with who, what, when, before and after; records are
// numbered densely in commit order, survive a restart, page by cursor, and
// never hold a key or a token.
func TestAdminLogRecordsEveryAdminChange(t *testing.T) {
	f := newFixture(t) // PutStore and AddTerminal by RoleSystem: records 1, 2
	l := f.l

	shop := testShop("S2", 500)
	if _, err := l.PutStoreBy(testAdmin, shop); err != nil {
		t.Fatal(err)
	}
	shop.IBAN = domain.IBANWithCheck("601", "KZT0000099999")
	f.clock.Add(time.Minute)
	if _, err := l.PutStoreBy(testAdmin, shop); err != nil {
		t.Fatal(err)
	}
	newKey := sha256.Sum256([]byte("key-T2"))
	if _, err := l.AddTerminalBy(testAdmin, "S2", "T2", newKey); err != nil {
		t.Fatal(err)
	}
	rotated := sha256.Sum256([]byte("key-T2-next"))
	if _, err := l.RotateTerminalKeyBy(testAdmin, "T2", rotated, time.Hour); err != nil {
		t.Fatal(err)
	}
	m := domain.MonthOf(f.clock.Now(), l.Programme().Location)
	fams := []Family{{FamilyID: "F-1", Members: 2}, {FamilyID: "F-2", Members: 3}}
	if _, err := l.IssueBy(testAdmin, m, fams); err != nil {
		t.Fatal(err)
	}
	if _, err := l.IssueBy(testAdmin, m, fams); err != nil {
		t.Fatal(err)
	}
	cutoff := AdminAction{Actor: testAdmin, Action: "settlement.cutoff", Object: "cutoff/1",
		After: json.RawMessage(`{"batches":["B1"]}`)}
	if _, err := l.RecordAdminAction(cutoff); err != nil {
		t.Fatal(err)
	}

	want := []struct {
		role, action, object string
		before, after        []string // substrings
	}{
		{RoleSystem, ActionStorePut, "store/S1", nil, []string{`"discount_bp":1000`}},
		{RoleSystem, ActionTerminalAdd, "terminal/T1", nil, []string{`"store_id":"S1"`}},
		{"admin", ActionStorePut, "store/S2", nil, []string{`"iban":"KZ89125KZT0000012345"`}},
		{"admin", ActionStorePut, "store/S2", []string{`"iban":"KZ89125KZT0000012345"`}, []string{`"iban":"` + shop.IBAN + `"`}},
		{"admin", ActionTerminalAdd, "terminal/T2", nil, []string{`"key_id":"` + keyID(newKey) + `"`}},
		{"admin", ActionTerminalKeyRotate, "terminal/T2", []string{`"key_id":"` + keyID(newKey) + `"`},
			[]string{`"key_id":"` + keyID(rotated) + `"`, `"previous_key_id":"` + keyID(newKey) + `"`}},
		{"admin", ActionIssuance, "month/" + m.String(), nil, []string{`"created":2`, `"face_value":2162500`}},
		{"admin", ActionIssuance, "month/" + m.String(), nil, []string{`"created":0`, `"existing":2`}},
		{"admin", "settlement.cutoff", "cutoff/1", nil, []string{`"batches":["B1"]`}},
	}
	check := func(recs []AdminAction) {
		t.Helper()
		if len(recs) != len(want) {
			t.Fatalf("admin log has %d records, want %d: %+v", len(recs), len(want), recs)
		}
		for i, w := range want {
			r := recs[i]
			if r.Seq != uint64(i+1) || r.Actor.Role != w.role || r.Action != w.action || r.Object != w.object {
				t.Errorf("record %d: seq %d %s %s %s, want %d %s %s %s", i, r.Seq, r.Actor.Role, r.Action, r.Object,
					i+1, w.role, w.action, w.object)
			}
			if (r.Before == nil) != (w.before == nil) {
				t.Errorf("record %d: before %s, want %v", i, r.Before, w.before)
			}
			for _, s := range w.before {
				if !strings.Contains(string(r.Before), s) {
					t.Errorf("record %d: before %s lacks %s", i, r.Before, s)
				}
			}
			for _, s := range w.after {
				if !strings.Contains(string(r.After), s) {
					t.Errorf("record %d: after %s lacks %s", i, r.After, s)
				}
			}
			if r.At.IsZero() || i > 0 && r.At.Before(recs[i-1].At) {
				t.Errorf("record %d: time %v after %v", i, r.At, recs[i-1].At)
			}
			if r.Actor.Role == "admin" && (r.Actor.ID != testAdmin.ID || r.Actor.Remote != testAdmin.Remote) {
				t.Errorf("record %d: actor %+v, want %+v", i, r.Actor, testAdmin)
			}
			raw := fmt.Sprintf("%+v %s %s", r.Actor, r.Before, r.After)
			for _, secret := range []string{"admin-secret-token", fmt.Sprintf("%x", newKey), fmt.Sprintf("%x", rotated)} {
				if strings.Contains(raw, secret) {
					t.Errorf("record %d holds a secret: %s", i, raw)
				}
			}
		}
	}
	check(adminLogAll(t, l, 1000))
	check(adminLogAll(t, l, 2))

	f.reopen()
	check(adminLogAll(t, f.l, 4))
	if recs, err := f.l.AdminLog(uint64(len(want)), 10); err != nil || len(recs) != 0 {
		t.Fatalf("reading past the end: %v, %v", recs, err)
	}

	// Appends continue the numbering after a restart.
	if _, err := f.l.PutStoreBy(testAdmin, testShop("S3", 0)); err != nil {
		t.Fatal(err)
	}
	recs, err := f.l.AdminLog(uint64(len(want)), 10)
	if err != nil || len(recs) != 1 || recs[0].Seq != uint64(len(want)+1) || recs[0].Object != "store/S3" {
		t.Fatalf("record after restart: %+v, %v", recs, err)
	}
}

// TestAdminLogRefusesBadRecords protects the log from callers: an invalid
// record is refused as invalid_request and nothing is appended.
func TestAdminLogRefusesBadRecords(t *testing.T) {
	f := newFixture(t)
	before := adminLogAll(t, f.l, 100)
	bad := []AdminAction{
		{Actor: testAdmin},
		{Actor: testAdmin, Action: strings.Repeat("a", adminActionMax+1)},
		{Actor: testAdmin, Action: "x", Object: strings.Repeat("o", adminObjectMax+1)},
		{Actor: Actor{Role: "admin", ID: strings.Repeat("i", adminIDMax+1)}, Action: "x"},
		{Actor: testAdmin, Action: "x", After: json.RawMessage(`{"unterminated":`)},
		{Actor: testAdmin, Action: "x", Before: json.RawMessage(`"` + strings.Repeat("b", adminValueMax) + `"`)},
		{Actor: testAdmin, Action: "bad utf-8 \xff"},
	}
	for i, rec := range bad {
		if _, err := f.l.RecordAdminAction(rec); code(err) != CodeInvalid {
			t.Errorf("bad record %d: got %v, want invalid_request", i, err)
		}
	}
	if after := adminLogAll(t, f.l, 100); len(after) != len(before) {
		t.Fatalf("refused records were appended: %d → %d", len(before), len(after))
	}
}

// TestAdminLogConcurrentAppends protects invariant 1 of adminLog: many
// admins writing at once get dense, unique sequence numbers, and a reader
// tailing the log meanwhile never sees a gap or a record twice.
func TestAdminLogConcurrentAppends(t *testing.T) {
	f := newFixture(t)
	start := len(adminLogAll(t, f.l, 100))
	const writers, each = 4, 15

	var wg sync.WaitGroup
	var done atomic.Bool
	tailErr := make(chan error, 1)
	go func() {
		cursor := uint64(0)
		// Bounded in time, not in reads: an empty read returns at once, so
		// a count of reads can run out before the writers' syncs finish.
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			finished := done.Load()
			recs, err := f.l.AdminLog(cursor, 7)
			if err != nil {
				tailErr <- err
				return
			}
			for _, r := range recs {
				if r.Seq != cursor+1 {
					tailErr <- fmt.Errorf("tail read seq %d after %d", r.Seq, cursor)
					return
				}
				cursor = r.Seq
			}
			if finished && len(recs) == 0 {
				break
			}
			if len(recs) == 0 {
				time.Sleep(100 * time.Microsecond)
			}
		}
		if want := uint64(start + writers*each); cursor != want {
			tailErr <- fmt.Errorf("tail ended at %d, want %d", cursor, want)
			return
		}
		tailErr <- nil
	}()
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				var err error
				if i%2 == 0 {
					_, err = f.l.PutStoreBy(testAdmin, testShop(fmt.Sprintf("W%d-%d", w, i), 100))
				} else {
					_, err = f.l.RecordAdminAction(AdminAction{Actor: testAdmin, Action: "qr.key_add", Object: fmt.Sprintf("qr-key/%d-%d", w, i)})
				}
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	done.Store(true)
	if err := <-tailErr; err != nil {
		t.Fatal(err)
	}
}

// TestAdminLogAtomicWithChange protects invariant 3 of adminLog: when the
// disk fails the sync of an admin change, neither the change nor its record
// is acknowledged, and after a restart on a healthy disk the change and its
// record are both there or both absent.
func TestAdminLogAtomicWithChange(t *testing.T) {
	now := mustTime("2026-12-03T10:00:00+05:00")
	dir := t.TempDir()
	var failing atomic.Bool
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failing.Load() && (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData ||
			op.Kind == errorfs.OpFileWrite || op.Kind == errorfs.OpFileWriteAt) {
			return errorfs.ErrInjected
		}
		return nil
	})
	open := func(fs vfs.FS) *Ledger {
		l, err := Open(Config{Dir: dir, FS: fs, Programme: domain.DefaultProgramme(),
			Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open(errorfs.Wrap(vfs.Default, inj))
	if _, err := l.PutStoreBy(testAdmin, testShop("S1", 100)); err != nil {
		t.Fatal(err)
	}

	failing.Store(true)
	_, err := l.PutStoreBy(testAdmin, testShop("S2", 100))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("store write on a failing disk: %v, want ErrUnavailable", err)
	}
	if _, err := l.AdminLog(0, 10); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("admin log of a stopped ledger: %v, want ErrUnavailable", err)
	}
	l.Close()
	failing.Store(false)

	l = open(vfs.Default)
	defer l.Close()
	recs, err := l.AdminLog(0, 10)
	if err != nil {
		t.Fatal(err)
	}
	_, stored := l.Store("S2")
	logged := len(recs) == 2 && recs[1].Object == "store/S2"
	if stored != logged || len(recs) < 1 || len(recs) > 2 || recs[0].Object != "store/S1" {
		t.Fatalf("after restart: store S2 present %v, records %+v", stored, recs)
	}
	if _, err := l.PutStoreBy(testAdmin, testShop("S3", 100)); err != nil {
		t.Fatal(err)
	}
	if recs, _ := l.AdminLog(0, 10); recs[len(recs)-1].Seq != uint64(len(recs)) {
		t.Fatalf("numbering has a gap after the failure: %+v", recs)
	}
}
