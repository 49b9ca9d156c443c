package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"azyq/domain"
	"azyq/ledger"
)

func init() {
	register(&command{
		name:    "audit",
		summary: "check every invariant of a STOPPED data directory and print its totals",
		usage: "audit [--data DIR] [--program FILE] [--json]\n\n" +
			"Opens DIR/ledger (or DIR itself when it holds the ledger) read-only; gatewayd\n" +
			"must be stopped. Pass the --program file gatewayd runs with, so face values\n" +
			"are checked against the same MRP table. A checkpoint taken with\n" +
			"POST /v1/admin/checkpoints is a stopped data directory too:\n" +
			"gatewayctl audit --data DATA/checkpoints/NAME. Exit status 1 on any violation.",
		run: runAudit,
	})
}

func runAudit(e *env, args []string) int {
	fs := e.flags("audit")
	data := fs.String("data", e.data, "gateway data directory (the global --data works too)")
	program := fs.String("program", "", "programme configuration file gatewayd runs with (default: built-in)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if ok, status := parse(fs, args); !ok {
		return status
	}
	if fs.NArg() > 0 {
		e.errorf("audit: unexpected arguments %q", fs.Args())
		return exitUsage
	}
	if *data == "" {
		e.errorf("audit: name the data directory: gatewayctl audit --data DIR")
		return exitUsage
	}
	prog := domain.DefaultProgramme()
	if *program != "" {
		p, err := domain.LoadProgramme(*program)
		if err != nil {
			e.errorf("audit: %v", err)
			return exitUsage
		}
		prog = p
	}

	dir := ledgerDir(*data)
	start := time.Now()
	rep, err := ledger.Audit(ledger.Config{Dir: dir, Programme: prog, ReadOnly: true})
	if err != nil {
		e.errorf("audit: %v", err)
		return exitUsage
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			e.errorf("audit: cannot write the report: %v", err)
			return exitUsage
		}
	} else {
		printAudit(e.stdout, dir, rep, time.Since(start))
	}
	if !rep.OK() {
		return exitProblem
	}
	return exitOK
}

// ledgerDir returns where the ledger's Pebble files are: gatewayd keeps
// them in DATA/ledger, but the operator may name that directory itself.
func ledgerDir(data string) string {
	sub := filepath.Join(data, "ledger")
	if fi, err := os.Stat(sub); err == nil && fi.IsDir() {
		return sub
	}
	return data
}

func printAudit(w io.Writer, dir string, r *ledger.AuditReport, took time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
	money := func(t domain.Tiyn) string { return formatTiyn(t) }
	kind := func(k ledger.KindTotal) string { return fmt.Sprintf("%d, %s", k.Count, formatTiyn(k.Amount)) }

	fmt.Fprintf(w, "audit of %s (%s)\n\n", dir, took.Round(time.Millisecond))
	row("vouchers", r.Vouchers)
	row("  by status", fmt.Sprintf("issued %d, active %d, expired %d",
		r.ByStatus["issued"], r.ByStatus["active"], r.ByStatus["expired"]))
	row("  by stored state", fmt.Sprintf("issued %d, active %d, lapsed %d",
		r.ByState["issued"], r.ByState["active"], r.ByState["lapsed"]))
	row("issued (face values)", money(r.Issued))
	row("balances", money(r.Balances))
	row("spent", money(r.Spent))
	row("lapsed", money(r.Lapsed))
	row("redemptions", kind(r.Redemptions))
	row("refunds", kind(r.Refunds))
	row("  to vouchers", kind(r.RefundsVoucher))
	row("  to the programme", kind(r.RefundsProgramme))
	row("last sequence", r.LastSeq)
	row("periods with movements", r.Periods)
	row("open period", r.OpenPeriod)
	row("terminals", r.Terminals)
	row("used tokens", r.UsedTokens)
	row("idempotency records", r.Idempotency)
	row("lapsed months", r.LapsedMonths)
	row("settlement records", r.AuxRecords)
	row("paid to banks", money(r.PaidToBanks))
	row("other programme postings", money(r.ProgrammeRest))
	tw.Flush()

	fmt.Fprintln(w, "\naccounts:")
	names := make([]string, 0, len(r.Accounts))
	for name := range r.Accounts {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(tw, "  %s\t%s\n", name, money(r.Accounts[name]))
	}
	fmt.Fprintf(tw, "  (vouchers)\t%s\n", money(r.Balances))
	fmt.Fprintf(tw, "  sum\t%s\n", money(r.AccountSum))
	tw.Flush()

	if len(r.Stores) > 0 {
		fmt.Fprintln(w, "\nstores:")
		st := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(st, "store\tbank\tredemptions\tredeemed\trefunds\trefunded\tpayable\tpaid\t")
		for _, s := range r.Stores {
			fmt.Fprintf(st, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", s.ID, orDash(s.BankBIC),
				s.Redemptions.Count, s.Redemptions.Amount, s.Refunds.Count, s.Refunds.Amount, s.Payable, s.Paid)
		}
		st.Flush()
	}

	if r.OK() {
		fmt.Fprintln(w, "\nOK: no violations")
		return
	}
	fmt.Fprintf(w, "\nVIOLATIONS: %d\n", len(r.Violations)+r.ViolationsDropped)
	for _, v := range r.Violations {
		fmt.Fprintf(w, "  %s\n", v)
	}
	if r.ViolationsDropped > 0 {
		fmt.Fprintf(w, "  … and %d more not kept\n", r.ViolationsDropped)
	}
}
