// Package api holds the OpenAPI description of the gateway's v1 HTTP API
// (openapi.yaml) and the test that keeps it in step with the routes the
// gateway serves.
package api

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"azyq/gateway"
)

// contractCodes is the error table of the v1 contract, status by status,
// plus the gateway's two additions (405 and 500).
var contractCodes = map[int][]string{
	400: {"invalid_request", "consent_required", "idempotency_key_missing"},
	401: {"unauthenticated"},
	402: {"qr_invalid", "qr_expired", "qr_used", "voucher_not_active", "voucher_expired",
		"insufficient_funds", "no_eligible_items"},
	403: {"forbidden"},
	404: {"not_found"},
	405: {"method_not_allowed"},
	409: {"conflict", "idempotency_key_reused", "request_in_progress"},
	413: {"body_too_large"},
	422: {"activation_window_closed", "activation_window_not_open", "refund_exceeds_redemption", "mrp_unknown"},
	429: {"rate_limited"},
	500: {"internal"},
	503: {"unavailable"},
}

var methods = []string{"get", "put", "post", "delete", "patch", "head", "options"}

// spec is the parsed openapi.yaml with helpers to follow $refs.
type spec struct {
	t    *testing.T
	root map[string]any
}

func load(t *testing.T) *spec {
	t.Helper()
	data, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := yaml.Unmarshal(data, &root); err != nil {
		t.Fatalf("cannot parse openapi.yaml: %v", err)
	}
	return &spec{t: t, root: root}
}

// lookup resolves a local reference such as "#/components/schemas/Error".
func (s *spec) lookup(ref string) (any, bool) {
	rest, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, false
	}
	var node any = s.root
	for _, part := range strings.Split(rest, "/") {
		m, ok := node.(map[string]any)
		if !ok {
			return nil, false
		}
		if node, ok = m[part]; !ok {
			return nil, false
		}
	}
	return node, true
}

// deref follows $ref until it reaches an object without one.
func (s *spec) deref(node any) map[string]any {
	for range 10 {
		m, _ := node.(map[string]any)
		ref, ok := m["$ref"].(string)
		if !ok {
			return m
		}
		if node, ok = s.lookup(ref); !ok {
			s.t.Fatalf("unresolved $ref %q", ref)
		}
	}
	s.t.Fatal("$ref chain too long")
	return nil
}

// operation is one (method, path) of the spec.
type operation struct {
	method, path string
	op           map[string]any
	pathItem     map[string]any
}

func (s *spec) operations() []operation {
	paths, _ := s.root["paths"].(map[string]any)
	var out []operation
	for path, item := range paths {
		pi, _ := item.(map[string]any)
		for _, m := range methods {
			if op, ok := pi[m].(map[string]any); ok {
				out = append(out, operation{method: strings.ToUpper(m), path: path, op: op, pathItem: pi})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].path+out[i].method < out[j].path+out[j].method
	})
	return out
}

// roles lists the security schemes of an operation: any one of them may
// call it.
func (o *operation) roles() []string {
	var out []string
	sec, _ := o.op["security"].([]any)
	for _, req := range sec {
		for name := range req.(map[string]any) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// TestRoutesMatchGateway protects the description's promise: every route
// the gateway serves is documented, every documented route is served, and
// each is open to exactly the roles the gateway lets in.
func TestRoutesMatchGateway(t *testing.T) {
	s := load(t)
	documented := map[string][]string{}
	for _, o := range s.operations() {
		documented[o.method+" "+o.path] = o.roles()
	}

	served := map[string][]string{}
	for _, r := range gateway.Routes() {
		if r.Operations {
			continue
		}
		roles := slices.Clone(r.Roles)
		sort.Strings(roles)
		served[r.Method+" "+r.Path] = roles
	}
	if len(served) == 0 {
		t.Fatal("gateway.Routes lists no API route")
	}

	for route, roles := range served {
		doc, ok := documented[route]
		switch {
		case !ok:
			t.Errorf("%s is served but not in openapi.yaml", route)
		case !slices.Equal(doc, roles):
			t.Errorf("%s: openapi.yaml allows roles %v, the gateway %v", route, doc, roles)
		}
	}
	for route := range documented {
		if _, ok := served[route]; !ok {
			t.Errorf("%s is in openapi.yaml but not served", route)
		}
	}

	// The operations listener is not the API's and must not be described
	// as if it were.
	for _, r := range gateway.Routes() {
		if _, ok := documented[r.Method+" "+r.Path]; ok && r.Operations {
			t.Errorf("%s %s belongs to the operations listener, not the API", r.Method, r.Path)
		}
	}
}

// TestDocumentShape protects the parts of the description clients
// generate code from: the OpenAPI version, the four roles, resolvable
// references, path parameters that match their placeholders, and the
// contract's headers where the contract puts them.
func TestDocumentShape(t *testing.T) {
	s := load(t)
	if v, _ := s.root["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		t.Fatalf("openapi: %q, want 3.1.x", v)
	}
	schemes := s.deref(s.mustLookup("#/components/securitySchemes"))
	for _, role := range []string{"admin", "wallet", "terminal", "settlement"} {
		sc, _ := schemes[role].(map[string]any)
		if sc["type"] != "http" || sc["scheme"] != "bearer" {
			t.Errorf("security scheme %q: %v, want http bearer", role, sc)
		}
	}

	// Every $ref anywhere resolves.
	var walk func(path string, node any)
	walk = func(path string, node any) {
		switch n := node.(type) {
		case map[string]any:
			if ref, ok := n["$ref"].(string); ok {
				if _, ok := s.lookup(ref); !ok {
					t.Errorf("%s: $ref %q does not resolve", path, ref)
				}
			}
			for k, v := range n {
				walk(path+"/"+k, v)
			}
		case []any:
			for i, v := range n {
				walk(path+"/"+strconv.Itoa(i), v)
			}
		}
	}
	walk("", s.root)

	for _, o := range s.operations() {
		name := o.method + " " + o.path
		params := s.parameters(o)

		// Path placeholders and path parameters are the same set.
		var placeholders []string
		for _, seg := range strings.Split(o.path, "/") {
			if strings.HasPrefix(seg, "{") {
				placeholders = append(placeholders, strings.Trim(seg, "{}"))
			}
		}
		var pathParams []string
		for _, p := range params {
			if p["in"] == "path" {
				pathParams = append(pathParams, p["name"].(string))
				if p["required"] != true {
					t.Errorf("%s: path parameter %v is not required", name, p["name"])
				}
			}
		}
		sort.Strings(placeholders)
		sort.Strings(pathParams)
		if !slices.Equal(placeholders, pathParams) {
			t.Errorf("%s: placeholders %v, path parameters %v", name, placeholders, pathParams)
		}

		// Every response carries X-Request-Id.
		responses, _ := o.op["responses"].(map[string]any)
		for status, r := range responses {
			headers, _ := s.deref(r)["headers"].(map[string]any)
			if _, ok := headers["X-Request-Id"]; !ok {
				t.Errorf("%s %s: no X-Request-Id header", name, status)
			}
		}
		for _, status := range []string{"401", "403", "429", "503"} {
			if _, ok := responses[status]; !ok {
				t.Errorf("%s: no %s response", name, status)
			}
		}

		// The money-moving POSTs require Idempotency-Key and mark replays.
		moves := o.method == "POST" && (o.path == "/v1/redemptions" || o.path == "/v1/redemptions/{redemption_id}/refunds")
		hasKey := false
		for _, p := range params {
			if p["in"] == "header" && p["name"] == "Idempotency-Key" {
				hasKey = p["required"] == true
			}
		}
		if hasKey != moves {
			t.Errorf("%s: requires Idempotency-Key: %t, want %t", name, hasKey, moves)
		}
		if moves {
			headers, _ := s.deref(responses["201"])["headers"].(map[string]any)
			if _, ok := headers["Idempotent-Replayed"]; !ok {
				t.Errorf("%s 201: no Idempotent-Replayed header", name)
			}
		}
	}

	// The catalogue supports conditional requests.
	cat := s.deref(s.mustLookup("#/paths/~1v1~1catalogue/get"))
	catOp := operation{method: "GET", path: "/v1/catalogue", op: cat, pathItem: map[string]any{}}
	hasINM := false
	for _, p := range s.parameters(catOp) {
		hasINM = hasINM || p["in"] == "header" && p["name"] == "If-None-Match"
	}
	headers, _ := s.deref(s.mustLookup("#/paths/~1v1~1catalogue/get/responses/200"))["headers"].(map[string]any)
	if _, ok := headers["ETag"]; !ok || !hasINM {
		t.Errorf("GET /v1/catalogue: ETag on 200 %t, If-None-Match parameter %t", ok, hasINM)
	}
	s.mustLookup("#/paths/~1v1~1catalogue/get/responses/304")

	// Retry-After comes with 429.
	headers, _ = s.deref(s.mustLookup("#/components/responses/RateLimited"))["headers"].(map[string]any)
	if _, ok := headers["Retry-After"]; !ok {
		t.Error("429 rate_limited has no Retry-After header")
	}
}

func (s *spec) mustLookup(ref string) any {
	// Paths contain slashes; JSON pointers escape them as ~1.
	parts := strings.Split(strings.TrimPrefix(ref, "#/"), "/")
	var node any = s.root
	for _, p := range parts {
		p = strings.ReplaceAll(strings.ReplaceAll(p, "~1", "/"), "~0", "~")
		m, ok := s.deref(node)[p]
		if !ok {
			s.t.Fatalf("%s: no %q", ref, p)
		}
		node = m
	}
	return node
}

// parameters returns the operation's parameters with the path item's,
// references resolved.
func (s *spec) parameters(o operation) []map[string]any {
	var out []map[string]any
	for _, src := range []map[string]any{o.pathItem, o.op} {
		list, _ := src["parameters"].([]any)
		for _, p := range list {
			out = append(out, s.deref(p))
		}
	}
	return out
}

// TestErrorCodes protects the error model: every code of the contract is
// documented under its status on some operation, no response names a code
// under another status, and a response's schema enum (where it narrows
// the codes) agrees with its x-error-codes.
func TestErrorCodes(t *testing.T) {
	s := load(t)
	statusOf := map[string]int{}
	for status, codes := range contractCodes {
		for _, c := range codes {
			statusOf[c] = status
		}
	}

	// The Error schema's enum is exactly the contract's codes.
	errSchema := s.deref(s.mustLookup("#/components/schemas/Error"))
	enum := s.deref(s.deref(s.deref(errSchema["properties"])["error"])["properties"])["code"].(map[string]any)["enum"].([]any)
	if len(enum) != len(statusOf) {
		t.Errorf("Error.code enum has %d codes, the contract %d", len(enum), len(statusOf))
	}
	for _, c := range enum {
		if _, ok := statusOf[c.(string)]; !ok {
			t.Errorf("Error.code enum has %q, which the contract does not", c)
		}
	}

	// Every documented error response lists its codes, under their status.
	documented := map[string]bool{}
	check := func(where string, status int, r map[string]any) {
		if status < 400 {
			return
		}
		codes, ok := r["x-error-codes"].([]any)
		if !ok || len(codes) == 0 {
			t.Errorf("%s: %d response has no x-error-codes", where, status)
			return
		}
		var names []string
		for _, c := range codes {
			name := fmt.Sprint(c)
			names = append(names, name)
			documented[name] = true
			if statusOf[name] != status {
				t.Errorf("%s: code %q under %d; the contract answers it with %d", where, name, status, statusOf[name])
			}
		}
		if narrowed := narrowedCodes(s, r); narrowed != nil && !slices.Equal(narrowed, names) {
			t.Errorf("%s: schema enum %v, x-error-codes %v", where, narrowed, names)
		}
	}
	for _, o := range s.operations() {
		responses, _ := o.op["responses"].(map[string]any)
		for st, r := range responses {
			status, err := strconv.Atoi(st)
			if err != nil {
				t.Errorf("%s %s: response %q is not a status", o.method, o.path, st)
				continue
			}
			check(o.method+" "+o.path, status, s.deref(r))
		}
	}
	// The gateway's additions are documented as components for every path.
	check("MethodNotAllowed", 405, s.deref(s.mustLookup("#/components/responses/MethodNotAllowed")))
	check("Internal", 500, s.deref(s.mustLookup("#/components/responses/Internal")))

	for code, status := range statusOf {
		if !documented[code] {
			t.Errorf("code %q (%d) is documented nowhere", code, status)
		}
	}
}

// narrowedCodes returns the code enum that a response's allOf schema adds
// to Error, or nil when it does not narrow it.
func narrowedCodes(s *spec, r map[string]any) []string {
	content, _ := r["content"].(map[string]any)
	media, _ := content["application/json"].(map[string]any)
	schema, _ := media["schema"].(map[string]any)
	all, _ := schema["allOf"].([]any)
	for _, part := range all {
		if m, _ := part.(map[string]any); m["$ref"] != nil {
			continue // the Error schema itself, with every code
		}
		p := s.deref(part)
		props, _ := p["properties"].(map[string]any)
		e, _ := props["error"].(map[string]any)
		eprops, _ := e["properties"].(map[string]any)
		code, _ := eprops["code"].(map[string]any)
		if enum, ok := code["enum"].([]any); ok {
			var out []string
			for _, c := range enum {
				out = append(out, fmt.Sprint(c))
			}
			return out
		}
	}
	return nil
}
