package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"text/tabwriter"

	"azyq/settlement"
)

func init() {
	register(&command{
		name:    "reconcile",
		summary: "reconcile issued, redeemed, settled and lapsed totals; exit 1 if the books disagree",
		usage:   "reconcile --from DATE --to DATE [--json]",
		run:     runReconcile,
	})
}

// runReconcile asks a running gateway (admin token) for the
// reconciliation of [from, to) and checks its identities here, with the
// same code the gateway's tests use (settlement.Reconciliation.Check):
//
//   - for the vouchers of the months beginning in the window, overall and
//     per city: issued = balances + net redeemed + lapsed, where net
//     redeemed is what vouchers paid to shops minus refunds credited back
//     to them (a refund of an expired voucher goes to the programme's
//     account and does not lower it);
//   - for the cut-offs in the window, overall, per city and per shop: the
//     batches' gross and refunds equal the journal's redemptions and
//     refunds in the batches' periods, and settled + carried out −
//     carried in = redemptions − refunds;
//   - every account of the books, vouchers included, sums to zero.
//
// The books are read while the gateway serves; run it at a quiet time
// (or twice) if a disagreement of the books could be money in flight.
func runReconcile(e *env, args []string) int {
	fs := e.flags("reconcile")
	from := fs.String("from", "", "start of the window, inclusive: YYYY-MM-DD (programme zone) or RFC 3339 (required)")
	to := fs.String("to", "", "end of the window, exclusive: YYYY-MM-DD (programme zone) or RFC 3339 (required)")
	asJSON := fs.Bool("json", false, "print the gateway's report as JSON instead of tables")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *from == "" || *to == "" || fs.NArg() != 0 {
		e.errorf("reconcile: --from and --to are required")
		return exitUsage
	}
	q := url.Values{"from": {*from}, "to": {*to}}
	body, err := e.client().do(context.Background(), "GET", "/v1/settlement/reconciliation?"+q.Encode(), nil)
	if err != nil {
		e.errorf("cannot reconcile: %v", err)
		if ae := asAPIError(err); ae != nil && ae.Status/100 == 4 {
			return exitProblem
		}
		return exitUsage
	}
	var r settlement.Reconciliation
	if err := json.Unmarshal(body, &r); err != nil {
		e.errorf("cannot decode the reconciliation: %v", err)
		return exitUsage
	}

	if *asJSON {
		e.stdout.Write(body)
		fmt.Fprintln(e.stdout)
	} else {
		printReconciliation(e, &r)
	}
	problems := r.Check()
	for _, p := range problems {
		e.errorf("books disagree: %s", p)
	}
	if len(problems) > 0 {
		return exitProblem
	}
	if !*asJSON {
		fmt.Fprintln(e.stdout, "books agree")
	}
	return exitOK
}

// printReconciliation prints the report as tables: totals and cities with
// both sides, shops with the settlement side.
func printReconciliation(e *env, r *settlement.Reconciliation) {
	fmt.Fprintf(e.stdout, "window %s to %s; months %v; cut-offs %d\n\n",
		r.From.Format("2006-01-02T15:04:05Z07:00"), r.To.Format("2006-01-02T15:04:05Z07:00"), r.Months, len(r.Cutoffs))
	w := tabwriter.NewWriter(e.stdout, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scope\tissued\tactivated\tbalances\tnet redeemed\tlapsed\tredeemed\trefunded\tsettled\tcarried in\tcarried out\tunsettled\t")
	row := func(scope string, f *settlement.Figures) {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", scope, f.Issued, f.Activated,
			f.Balances, f.Spent, f.Lapsed, f.Redeemed, f.Refunded, f.Settled, f.CarriedIn, f.CarriedOut, f.Unsettled)
	}
	row("total", &r.Total)
	for i := range r.Cities {
		row("city "+r.Cities[i].City, &r.Cities[i].Figures)
	}
	for i := range r.Stores {
		row("store "+r.Stores[i].StoreID, &r.Stores[i].Figures)
	}
	w.Flush()
	fmt.Fprintln(e.stdout, "\namounts in tiyn")
}
