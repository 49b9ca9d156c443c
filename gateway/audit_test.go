package gateway

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"azyq/ledger"
)

// TestAdminLogAPI protects GET /v1/audit: every admin write through the
// API appears once, oldest first, with the caller's role, credential id and
// address and the object before and after; pages follow the cursor to the
// end; bad cursors and limits are 400; only the admin may read it.
func TestAdminLogAPI(t *testing.T) {
	g := newFzGateway(t)
	store := `{"name":"Magnum","bin":"260140001231","city":"Kokshetau","bank_bic":"HSBKKZKX","iban":"KZ89125KZT0000012345","discount_bp":%d}`
	for _, bp := range []int{1000, 1200} {
		if status, body := g.do("PUT", "/v1/stores/S7", fzAdmin, "", fmt.Appendf(nil, store, bp)); status != 200 {
			t.Fatalf("PUT store: %d %s", status, body)
		}
	}
	if status, body := g.do("POST", "/v1/stores/S7/terminals", fzAdmin, "", []byte(`{"terminal_id":"T7"}`)); status != 201 {
		t.Fatalf("POST terminal: %d %s", status, body)
	}
	if status, body := g.do("POST", "/v1/issuances", fzAdmin, "", []byte(`{"month":"2026-12","families":[{"family_id":"F-77","members":2}]}`)); status != 200 {
		t.Fatalf("POST issuance: %d %s", status, body)
	}

	type page struct {
		Actions []struct {
			Seq   uint64 `json:"seq"`
			At    string `json:"at"`
			Actor struct {
				Role, ID, Remote string
			} `json:"actor"`
			Action string          `json:"action"`
			Object string          `json:"object"`
			Before json.RawMessage `json:"before"`
			After  json.RawMessage `json:"after"`
		} `json:"actions"`
		Next string `json:"next"`
	}
	var all []string
	cursor, pages := "", 0
	for range 100 {
		uri := "/v1/audit?limit=2"
		if cursor != "" {
			uri += "&after=" + cursor
		}
		status, body := g.do("GET", uri, fzAdmin, "", nil)
		var p page
		if status != 200 || json.Unmarshal(body, &p) != nil {
			t.Fatalf("GET %s: %d %s", uri, status, body)
		}
		pages++
		for _, a := range p.Actions {
			if a.Actor.Role == "admin" {
				if a.Actor.ID != ledger.CredentialID(fzAdmin) || a.Actor.Remote != "127.0.0.1" || a.At == "" {
					t.Errorf("action %d by %+v at %q", a.Seq, a.Actor, a.At)
				}
				all = append(all, a.Action+" "+a.Object+" before="+string(a.Before))
			}
			if strconv.FormatUint(a.Seq, 10) == cursor {
				t.Fatalf("action %d returned twice", a.Seq)
			}
		}
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	want := []string{
		"store.put store/S7 before=null",
		`store.put store/S7 before={"id":"S7","name":"Magnum","bin":"260140001231","city":"Kokshetau","bank_bic":"HSBKKZKX","iban":"KZ89125KZT0000012345","discount_bp":1000}`,
		"terminal.add terminal/T7 before=null",
		"issuance month/2026-12 before=null",
	}
	if fmt.Sprint(all) != fmt.Sprint(want) {
		t.Fatalf("admin actions through the API:\n%q\nwant\n%q", all, want)
	}
	if pages < 3 {
		t.Fatalf("read %d pages of 2; the cursor did not page", pages)
	}

	for _, c := range []struct {
		uri, who string
		want     int
	}{
		{"/v1/audit?after=x", fzAdmin, 400},
		{"/v1/audit?limit=0", fzAdmin, 400},
		{"/v1/audit?limit=1001", fzAdmin, 400},
		{"/v1/audit", fzWallet, 403},
		{"/v1/audit", fzSettlement, 403},
		{"/v1/audit", fzTermKey, 403},
		{"/v1/audit", "", 401},
		{"/v1/audit?after=999999", fzAdmin, 200},
	} {
		if status, body := g.do("GET", c.uri, c.who, "", nil); status != c.want {
			t.Errorf("GET %s as %q: %d %s, want %d", c.uri, c.who, status, body, c.want)
		}
	}
}
