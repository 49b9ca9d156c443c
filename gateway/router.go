package gateway

import (
	"strings"
)

// role is who a bearer token says the caller is.
type role uint8

const (
	roleNone role = iota
	roleAdmin
	roleWallet
	roleTerminal
	roleSettlement
)

var roleNames = [...]string{"none", "admin", "wallet", "terminal", "settlement"}

func (r role) String() string { return roleNames[r] }

// roleSet is a set of roles allowed on a route.
type roleSet uint8

func roles(rs ...role) roleSet {
	var s roleSet
	for _, r := range rs {
		s |= 1 << r
	}
	return s
}

func (s roleSet) has(r role) bool { return s&(1<<r) != 0 }

// Body limits of the contract.
const (
	bodyMax         = 64 << 10 // every endpoint but issuance
	issuanceBodyMax = 16 << 20 // POST /v1/issuances
)

// routeID numbers the API's routes; metrics and the router index by it.
type routeID uint8

const (
	routeIssuances routeID = iota
	routeActivation
	routeQR
	routeVoucher
	routeStorePut
	routeTerminalPost
	routeCatalogue
	routeRedemptions
	routeRefunds
	routeRedemption
	routeBalance
	routeCutoffs
	routeBatches
	routeBatch
	routePayments
	routeLines
	routeAcknowledgement
	routeCheckpoints
	routeReconciliation
	routeTerminalKey
	routeAdminLog
	routeQRKeys
	routeQRKeyRotation
	routeCount
	routeUnmatched = routeCount // label of requests that match no route
)

// route is one row of the routing table.
type route struct {
	method  string
	pattern string // path with {param} placeholders, as written in v1.md
	roles   roleSet
	serve   func(*call)
	segs    []string // pattern split at '/', without the leading empty one
	id      routeID  // its index in routeTable
}

// routeTable lists every API route. Settlement routes all go to
// serveSettlement (settlement.go), which picks the operation by c.route.id.
var routeTable = [routeCount]route{
	routeIssuances:       {"POST", "/v1/issuances", roles(roleAdmin), (*call).serveIssuance, nil, 0},
	routeActivation:      {"POST", "/v1/vouchers/{voucher_id}/activation", roles(roleWallet), (*call).serveActivation, nil, 0},
	routeQR:              {"POST", "/v1/vouchers/{voucher_id}/qr", roles(roleWallet), (*call).serveQR, nil, 0},
	routeVoucher:         {"GET", "/v1/vouchers/{voucher_id}", roles(roleWallet, roleAdmin), (*call).serveVoucher, nil, 0},
	routeStorePut:        {"PUT", "/v1/stores/{store_id}", roles(roleAdmin), (*call).serveStorePut, nil, 0},
	routeTerminalPost:    {"POST", "/v1/stores/{store_id}/terminals", roles(roleAdmin), (*call).serveTerminalPost, nil, 0},
	routeCatalogue:       {"GET", "/v1/catalogue", roles(roleTerminal, roleAdmin), (*call).serveCatalogue, nil, 0},
	routeRedemptions:     {"POST", "/v1/redemptions", roles(roleTerminal), (*call).serveRedemption, nil, 0},
	routeRefunds:         {"POST", "/v1/redemptions/{redemption_id}/refunds", roles(roleTerminal), (*call).serveRefund, nil, 0},
	routeRedemption:      {"GET", "/v1/redemptions/{redemption_id}", roles(roleTerminal, roleAdmin), (*call).serveRedemptionGet, nil, 0},
	routeBalance:         {"POST", "/v1/balance-inquiries", roles(roleTerminal), (*call).serveBalance, nil, 0},
	routeCutoffs:         {"POST", "/v1/settlement/cutoffs", roles(roleAdmin), settlementEntry, nil, 0},
	routeBatches:         {"GET", "/v1/settlement/batches", roles(roleAdmin, roleSettlement), settlementEntry, nil, 0},
	routeBatch:           {"GET", "/v1/settlement/batches/{batch_id}", roles(roleAdmin, roleSettlement), settlementEntry, nil, 0},
	routePayments:        {"GET", "/v1/settlement/batches/{batch_id}/payments.xml", roles(roleAdmin, roleSettlement), settlementEntry, nil, 0},
	routeLines:           {"GET", "/v1/settlement/batches/{batch_id}/lines.csv", roles(roleAdmin, roleSettlement), settlementEntry, nil, 0},
	routeAcknowledgement: {"POST", "/v1/settlement/batches/{batch_id}/acknowledgement", roles(roleSettlement), settlementEntry, nil, 0},
	routeCheckpoints:     {"POST", "/v1/admin/checkpoints", roles(roleAdmin), (*call).serveCheckpoint, nil, 0},
	routeReconciliation:  {"GET", "/v1/settlement/reconciliation", roles(roleAdmin), settlementEntry, nil, 0},
	routeTerminalKey:     {"POST", "/v1/stores/{store_id}/terminals/{terminal_id}/key", roles(roleAdmin), (*call).serveTerminalKeyRotation, nil, 0},
	routeAdminLog:        {"GET", "/v1/audit", roles(roleAdmin), (*call).serveAdminLog, nil, 0},
	routeQRKeys:          {"GET", "/v1/qr-keys", roles(roleAdmin), (*call).serveQRKeys, nil, 0},
	routeQRKeyRotation:   {"POST", "/v1/qr-keys", roles(roleAdmin), (*call).serveQRKeyRotation, nil, 0},
}

func settlementEntry(c *call) { c.s.serveSettlement(c) }

func init() {
	for i := range routeTable {
		r := &routeTable[i]
		if r.pattern == "" || r.serve == nil {
			panic("BUG: route " + r.pattern + " is incomplete")
		}
		r.segs = strings.Split(r.pattern[1:], "/")
		r.id = routeID(i)
		if len(r.segs) > segsMax {
			panic("BUG: route " + r.pattern + " has too many segments")
		}
	}
}

// segsMax is the most path segments a route has; paramsMax the most
// placeholders.
const (
	segsMax   = 6
	paramsMax = 2
)

// Route is a served route, for documentation and for the test that keeps
// api/openapi.yaml and the server in step.
type Route struct {
	Method string
	// Path is the pattern with {param} placeholders exactly as in v1.md.
	Path string
	// Roles lists the roles allowed to call it; empty on the operations
	// listener, which has no authentication.
	Roles []string
	// Operations marks the routes of the operations listener (metrics,
	// health, profiling), which are not part of the API.
	Operations bool
}

// Routes lists every route the gateway serves: the API's, then the
// operations listener's.
func Routes() []Route {
	out := make([]Route, 0, routeCount+4)
	for i := range routeTable {
		r := &routeTable[i]
		var names []string
		for ro := roleAdmin; ro <= roleSettlement; ro++ {
			if r.roles.has(ro) {
				names = append(names, ro.String())
			}
		}
		out = append(out, Route{Method: r.method, Path: r.pattern, Roles: names})
	}
	for _, p := range opsPaths {
		out = append(out, Route{Method: "GET", Path: p, Operations: true})
	}
	return out
}

// match finds the route of a path. found reports whether some route has the
// path; r is nil when none has it with this method.
func match(method, path []byte) (r *route, params [paramsMax][]byte, found bool) {
	var segs [segsMax][]byte
	n, ok := split(path, &segs)
	if !ok {
		return nil, params, false
	}
	for i := range routeTable {
		rt := &routeTable[i]
		if len(rt.segs) != n {
			continue
		}
		var ps [paramsMax][]byte
		np := 0
		hit := true
		for j, want := range rt.segs {
			if want[0] == '{' {
				ps[np] = segs[j]
				np++
				continue
			}
			if string(segs[j]) != want {
				hit = false
				break
			}
		}
		if !hit {
			continue
		}
		found = true
		if string(method) == rt.method {
			return rt, ps, true
		}
	}
	return nil, params, found
}

// split cuts an absolute path into its segments; it fails on more than
// segsMax segments or an empty one.
func split(path []byte, segs *[segsMax][]byte) (int, bool) {
	if len(path) < 2 || path[0] != '/' {
		return 0, false
	}
	path = path[1:]
	n := 0
	for {
		if n == segsMax {
			return 0, false
		}
		i := 0
		for i < len(path) && path[i] != '/' {
			i++
		}
		if i == 0 {
			return 0, false
		}
		segs[n] = path[:i]
		n++
		if i == len(path) {
			return n, true
		}
		path = path[i+1:]
	}
}

// allowed lists the methods a path accepts, for the Allow header of 405.
func allowed(path []byte) string {
	var methods []string
	for i := range routeTable {
		rt := &routeTable[i]
		if r, _, _ := match([]byte(rt.method), path); r == rt {
			methods = append(methods, rt.method)
		}
	}
	return strings.Join(methods, ", ")
}
