package gateway

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"strings"
	"testing"

	"azyq/settlement"
)

// TestSettlementEndpoints protects the Settlement section of the contract
// through the real server: roles, the cut-off, listing with its cursor,
// the batch with its shops, both exports, acknowledgement semantics with
// strict decoding, and the reconciliation report.
func TestSettlementEndpoints(t *testing.T) {
	e := newEnv(t)
	term := e.shop("S1", "T1", 1000)
	id := e.voucher("F-1", 4)
	r := e.redeem(term, e.qr(id), 180_000)
	e.expect(r, 201, "")
	var red struct {
		RedemptionID string `json:"redemption_id"`
	}
	json.Unmarshal(r.body, &red)
	e.expect(e.do("POST", "/v1/redemptions/"+red.RedemptionID+"/refunds", term, `{"amount":30000}`,
		"Idempotency-Key", newKey()), 201, "")

	// Roles: the settlement role cannot cut, admin cannot acknowledge.
	e.expect(e.do("POST", "/v1/settlement/cutoffs", settlementTok, ""), 403, "forbidden")
	e.expect(e.do("POST", "/v1/settlement/cutoffs", term, ""), 403, "forbidden")
	e.expect(e.do("POST", "/v1/settlement/cutoffs", adminTok, `{"x":1}`), 400, "invalid_request")

	r = e.do("POST", "/v1/settlement/cutoffs", adminTok, "{}")
	e.expect(r, 201, "")
	var cut struct {
		CutoffID   string   `json:"cutoff_id"`
		At         string   `json:"at"`
		Batches    []string `json:"batches"`
		FromPeriod uint64   `json:"from_period"`
		ToPeriod   uint64   `json:"to_period"`
	}
	r.decode(t, &cut)
	if len(cut.Batches) != 1 || cut.CutoffID == "" || cut.At == "" {
		t.Fatalf("cut-off: %s", r.body)
	}
	bid := cut.Batches[0]

	// The admin log names the cut-off and who asked for it.
	r = e.do("GET", "/v1/audit", adminTok, "")
	e.expect(r, 200, "")
	if !bytes.Contains(r.body, []byte(`"settlement.cutoff"`)) || !bytes.Contains(r.body, []byte("cutoff/"+cut.CutoffID)) {
		t.Fatalf("admin log without the cut-off: %s", r.body)
	}

	r = e.do("GET", "/v1/settlement/batches?status=ready&limit=10", settlementTok, "")
	e.expect(r, 200, "")
	var page struct {
		Batches []settlement.Batch `json:"batches"`
		Next    string             `json:"next"`
	}
	r.decode(t, &page)
	if len(page.Batches) != 1 || page.Next != "" || page.Batches[0].Net != 150_000 || page.Batches[0].Stores != nil {
		t.Fatalf("list: %s", r.body)
	}
	for _, q := range []string{"limit=0", "limit=x", "limit=1001", "status=open", "after=nope"} {
		e.expect(e.do("GET", "/v1/settlement/batches?"+q, adminTok, ""), 400, "invalid_request")
	}

	r = e.do("GET", "/v1/settlement/batches/"+bid, adminTok, "")
	e.expect(r, 200, "")
	var b settlement.Batch
	r.decode(t, &b)
	if len(b.Stores) != 1 || b.Stores[0].Gross != 180_000 || b.Stores[0].Refunds != 30_000 || b.Stores[0].Paid != 150_000 {
		t.Fatalf("batch: %s", r.body)
	}
	e.expect(e.do("GET", "/v1/settlement/batches/B0000000099", adminTok, ""), 404, "not_found")

	r = e.do("GET", "/v1/settlement/batches/"+bid+"/payments.xml", settlementTok, "")
	e.expect(r, 200, "")
	var doc settlement.Document
	if err := xml.Unmarshal(r.body, &doc); err != nil || doc.Init.GroupHeader.ControlSum != "1500.00" ||
		!strings.HasPrefix(r.header.Get("Content-Type"), "application/xml") {
		t.Fatalf("payments.xml: %v %s", err, r.body)
	}

	r = e.do("GET", "/v1/settlement/batches/"+bid+"/lines.csv", settlementTok, "")
	e.expect(r, 200, "")
	rows := strings.Split(strings.TrimSpace(string(r.body)), "\n")
	if len(rows) != 3 || rows[0]+"\n" != settlement.LinesHeader ||
		!strings.HasPrefix(rows[1], "redemption,"+red.RedemptionID+","+red.RedemptionID+",S1,T1,"+id+",180000,") ||
		!strings.Contains(rows[2], ","+red.RedemptionID+",S1,T1,"+id+",30000,") {
		t.Fatalf("lines.csv:\n%s", r.body)
	}

	// Acknowledgement.
	ack := "/v1/settlement/batches/" + bid + "/acknowledgement"
	e.expect(e.do("POST", ack, adminTok, `{"reference":"R1"}`), 403, "forbidden")
	for _, body := range []string{``, `{}`, `{"reference":""}`, `{"reference":1}`, `{"reference":"R1","x":1}`,
		`{"reference":"R1"} {}`, fmt.Sprintf(`{"reference":%q}`, strings.Repeat("r", 141)), `{"reference":"\u0001"}`} {
		e.expect(e.do("POST", ack, settlementTok, body), 400, "invalid_request")
	}
	r = e.do("POST", ack, settlementTok, `{"reference":"R1"}`)
	e.expect(r, 200, "")
	first := string(r.body)
	var acked settlement.Batch
	r.decode(t, &acked)
	if acked.Status != "acknowledged" || acked.Reference != "R1" {
		t.Fatalf("ack: %s", r.body)
	}
	e.restart()
	r = e.do("POST", ack, settlementTok, `{"reference":"R1"}`)
	if r.status != 200 || string(r.body) != first {
		t.Fatalf("repeat ack: %s, first %s", r, first)
	}
	e.expect(e.do("POST", ack, settlementTok, `{"reference":"R2"}`), 409, "conflict")
	e.expect(e.do("POST", "/v1/settlement/batches/B0000000099/acknowledgement", settlementTok, `{"reference":"R1"}`), 404, "not_found")

	// Reconciliation: admin only, and its books check out.
	e.expect(e.do("GET", "/v1/settlement/reconciliation?from=2026-12-01&to=2027-01-01", settlementTok, ""), 403, "forbidden")
	e.expect(e.do("GET", "/v1/settlement/reconciliation?from=2026-12-01", adminTok, ""), 400, "invalid_request")
	e.expect(e.do("GET", "/v1/settlement/reconciliation?from=2027-01-01&to=2026-12-01", adminTok, ""), 400, "invalid_request")
	r = e.do("GET", "/v1/settlement/reconciliation?from=2026-12-01&to=2027-01-01T00:00:00%2B05:00", adminTok, "")
	e.expect(r, 200, "")
	var rec settlement.Reconciliation
	r.decode(t, &rec)
	if p := rec.Check(); len(p) != 0 {
		t.Fatalf("reconciliation problems %v: %s", p, r.body)
	}
	if rec.Total.Issued != 1_730_000 || rec.Total.Redeemed != 180_000 || rec.Total.Settled != 150_000 ||
		len(rec.Stores) != 1 || rec.Total.Spent != 150_000 {
		t.Fatalf("reconciliation: %s", r.body)
	}
}

// TestSettlementBatchPayingNobody protects banks from a payment file with
// no transfer: a batch whose only shop refunded more than it sold carries
// the negative net, pays nothing, and has no payments.xml (409), while its
// JSON and lines.csv are served as usual.
func TestSettlementBatchPayingNobody(t *testing.T) {
	e := newEnv(t)
	term := e.shop("S1", "T1", 0)
	id := e.voucher("F-1", 4)
	r := e.redeem(term, e.qr(id), 100_000)
	e.expect(r, 201, "")
	var red struct {
		RedemptionID string `json:"redemption_id"`
	}
	json.Unmarshal(r.body, &red)
	e.expect(e.do("POST", "/v1/settlement/cutoffs", adminTok, ""), 201, "")

	// The whole redemption comes back in the next period: net −100000.
	e.expect(e.do("POST", "/v1/redemptions/"+red.RedemptionID+"/refunds", term, `{"amount":100000}`,
		"Idempotency-Key", newKey()), 201, "")
	r = e.do("POST", "/v1/settlement/cutoffs", adminTok, "")
	e.expect(r, 201, "")
	var cut struct {
		CutoffID   string   `json:"cutoff_id"`
		At         string   `json:"at"`
		Batches    []string `json:"batches"`
		FromPeriod uint64   `json:"from_period"`
		ToPeriod   uint64   `json:"to_period"`
	}
	r.decode(t, &cut)
	if len(cut.Batches) != 1 {
		t.Fatalf("cut-off: %s", r.body)
	}
	bid := cut.Batches[0]

	r = e.do("GET", "/v1/settlement/batches/"+bid, settlementTok, "")
	e.expect(r, 200, "")
	var b settlement.Batch
	r.decode(t, &b)
	if b.Net != 0 || len(b.Stores) != 1 || b.Stores[0].Net != -100_000 || b.Stores[0].Paid != 0 {
		t.Fatalf("batch paying nobody: %s", r.body)
	}
	e.expect(e.do("GET", "/v1/settlement/batches/"+bid+"/payments.xml", settlementTok, ""), 409, "conflict")
	e.expect(e.do("GET", "/v1/settlement/batches/"+bid+"/lines.csv", settlementTok, ""), 200, "")
}
