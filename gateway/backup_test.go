package gateway

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"azyq/ledger"
)

// TestCheckpointEndpoint protects online backups through the admin API:
// only the admin may take one, a body other than {} is refused, a
// checkpoint opens as a ledger holding what was acknowledged before it,
// unfinished leftovers are cleaned up, only the newest checkpointsKeep are
// kept, and the metrics report them.
func TestCheckpointEndpoint(t *testing.T) {
	e := newEnv(t)
	voucher := e.voucher("F-CP-1", 3)

	e.expect(e.do("POST", "/v1/admin/checkpoints", walletTok, ""), 403, "forbidden")
	e.expect(e.do("POST", "/v1/admin/checkpoints", adminTok, `{"dir":"/tmp"}`), 400, "invalid_request")
	if names, _ := listCheckpoints(filepath.Join(e.dir, checkpointsDir)); len(names) != 0 {
		t.Fatalf("refused requests left checkpoints %v", names)
	}

	// A leftover of an interrupted checkpoint is removed by the next one.
	leftover := filepath.Join(e.dir, checkpointsDir, checkpointTmp+"20261203T000000.000Z")
	if err := os.MkdirAll(leftover, 0o700); err != nil {
		t.Fatal(err)
	}

	var first string
	for i := range checkpointsKeep + 1 {
		r := e.do("POST", "/v1/admin/checkpoints", adminTok, "{}")
		e.expect(r, 201, "")
		var out struct {
			Checkpoint string   `json:"checkpoint"`
			Path       string   `json:"path"`
			CreatedAt  string   `json:"created_at"`
			Bytes      int64    `json:"bytes"`
			Kept       []string `json:"kept"`
		}
		r.decode(t, &out)
		if out.Bytes <= 0 || out.Path != filepath.Join(e.dir, checkpointsDir, out.Checkpoint) {
			t.Fatalf("checkpoint answer %s: want a positive size and a path under DATA/checkpoints", r)
		}
		if i == 0 {
			first = out.Path
		}
		if want := min(i+1, checkpointsKeep); len(out.Kept) != want || out.Kept[len(out.Kept)-1] != out.Checkpoint {
			t.Fatalf("after checkpoint %d kept %v, want %d ending with %s", i+1, out.Kept, want, out.Checkpoint)
		}
		e.clock.add(time.Second)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("unfinished checkpoint %s still there (%v)", leftover, err)
	}
	if _, err := os.Stat(first); !os.IsNotExist(err) {
		t.Errorf("oldest checkpoint %s not deleted beyond %d kept (%v)", first, checkpointsKeep, err)
	}

	// The newest checkpoint opens as a ledger with the voucher in it.
	names, err := listCheckpoints(filepath.Join(e.dir, checkpointsDir))
	if err != nil || len(names) != checkpointsKeep {
		t.Fatalf("checkpoints on disk %v (%v), want %d", names, err, checkpointsKeep)
	}
	dir := filepath.Join(e.dir, checkpointsDir, names[len(names)-1], "ledger")
	cp, err := ledger.Open(ledger.Config{Dir: dir, Programme: e.prog, Now: e.clock.Now, ReadOnly: true})
	if err != nil {
		t.Fatalf("cannot open checkpoint %s: %v", dir, err)
	}
	defer cp.Close()
	id, err := ledger.ParseVoucherID(voucher)
	if err != nil {
		t.Fatal(err)
	}
	v, err := cp.Voucher(id)
	if err != nil || v.Status != ledger.StatusActive || v.FamilyID != "F-CP-1" {
		t.Errorf("voucher in checkpoint = %+v, %v; want the active voucher of F-CP-1", v, err)
	}

	// The metrics count the checkpoints and date the newest.
	mfs, err := e.srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "azyq_checkpoint") {
			got[mf.GetName()] = mf.Metric[0].GetGauge().GetValue()
		}
	}
	newest, _ := time.Parse(checkpointLayout, names[len(names)-1])
	if got["azyq_checkpoints"] != checkpointsKeep || got["azyq_checkpoint_last_timestamp_seconds"] != float64(newest.UnixNano())/1e9 {
		t.Errorf("checkpoint metrics = %v, want %d checkpoints, newest at %v", got, checkpointsKeep, newest)
	}
}

// TestVoucherMetrics protects the vouchers-by-status gauges: they follow
// issuance and activation once the census is older than its maximum age.
func TestVoucherMetrics(t *testing.T) {
	e := newEnv(t)
	census := func() map[string]float64 {
		mfs, err := e.srv.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "azyq_vouchers" && mf.GetName() != "azyq_voucher_balance_tiyn" {
				continue
			}
			for _, m := range mf.Metric {
				out[mf.GetName()+"/"+labelValue(m, "status")] = m.GetGauge().GetValue()
			}
		}
		return out
	}
	if got := census()["azyq_vouchers/active"]; got != 0 {
		t.Fatalf("active vouchers on an empty ledger = %g", got)
	}
	e.voucher("F-M-1", 2)
	e.clock.add(voucherStatsMaxAge)
	got := census()
	if got["azyq_vouchers/active"] != 1 || got["azyq_voucher_balance_tiyn/active"] != 2*4325*100 {
		t.Errorf("census after one activation = %v, want 1 active worth 865000", got)
	}
	if body, _ := json.Marshal(got); len(body) == 0 {
		t.Fatal("empty census")
	}
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
