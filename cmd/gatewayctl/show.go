package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"azyq/domain"
	"azyq/ledger"
)

func init() {
	register(&command{
		name:    "voucher",
		summary: "show a voucher (GET /v1/vouchers/{voucher_id})",
		usage:   "voucher VOUCHER_ID [--json]",
		run:     runVoucher,
	})
	register(&command{
		name:    "redemption",
		summary: "show a redemption and its refunds total (GET /v1/redemptions/{redemption_id})",
		usage:   "redemption REDEMPTION_ID [--json]",
		run:     runRedemption,
	})
}

// voucherView is a voucher as the contract writes it.
type voucherView struct {
	VoucherID   string `json:"voucher_id"`
	FamilyID    string `json:"family_id"`
	Month       string `json:"month"`
	Members     int    `json:"members"`
	City        string `json:"city"`
	FaceValue   int64  `json:"face_value"`
	Balance     int64  `json:"balance"`
	Status      string `json:"status"`
	ActivatedAt string `json:"activated_at"`
	ExpiresAt   string `json:"expires_at"`
}

// redemptionView is a redemption as the contract writes it.
type redemptionView struct {
	RedemptionID string `json:"redemption_id"`
	VoucherID    string `json:"voucher_id"`
	StoreID      string `json:"store_id"`
	TerminalID   string `json:"terminal_id"`
	Status       string `json:"status"`
	Requested    int64  `json:"requested"`
	Approved     int64  `json:"approved"`
	Balance      int64  `json:"balance"`
	Refunded     int64  `json:"refunded"`
	CreatedAt    string `json:"created_at"`
	Lines        []struct {
		SKU      string `json:"sku"`
		Category string `json:"category"`
		Amount   int64  `json:"amount"`
		Eligible bool   `json:"eligible"`
		Discount int64  `json:"discount"`
		Payable  int64  `json:"payable"`
		Covered  int64  `json:"covered"`
	} `json:"lines"`
}

func runVoucher(e *env, args []string) int {
	return show(e, "voucher", args, func(id string) (string, bool) {
		_, err := ledger.ParseVoucherID(id)
		return "/v1/vouchers/" + id, err == nil
	}, printVoucher)
}

func runRedemption(e *env, args []string) int {
	return show(e, "redemption", args, func(id string) (string, bool) {
		_, err := ledger.ParseRedemptionID(id)
		return "/v1/redemptions/" + id, err == nil
	}, printRedemption)
}

// show fetches one object by id and prints it as a table, or as the
// gateway's JSON with --json.
func show(e *env, name string, args []string, path func(id string) (string, bool),
	print func(w io.Writer, data []byte) error) int {
	fs := e.flags(name)
	raw := fs.Bool("json", false, "print the gateway's JSON answer as it came")
	id, rest := splitFirstArg(args)
	if ok, status := parse(fs, rest); !ok {
		return status
	}
	if id == "" && fs.NArg() == 1 {
		id = fs.Arg(0)
	} else if fs.NArg() > 0 || id == "" {
		e.errorf("%s: give exactly one id: gatewayctl %s", name, commands[name].usage)
		return exitUsage
	}
	p, ok := path(id)
	if !ok {
		e.errorf("%s: %q is not a %s id", name, id, name)
		return exitUsage
	}

	data, err := e.client().do(context.Background(), "GET", p, nil)
	if err != nil {
		e.errorf("%s %s: %v", name, id, err)
		if asAPIError(err) != nil {
			return exitProblem
		}
		return exitUsage
	}
	if *raw {
		e.stdout.Write(data)
		if len(data) > 0 && data[len(data)-1] != '\n' {
			fmt.Fprintln(e.stdout)
		}
		return exitOK
	}
	if err := print(e.stdout, data); err != nil {
		e.errorf("%s %s: cannot decode the answer: %v", name, id, err)
		return exitProblem
	}
	return exitOK
}

func printVoucher(w io.Writer, data []byte) error {
	var v voucherView
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("voucher_id", v.VoucherID)
	row("family_id", v.FamilyID)
	row("month", v.Month)
	row("members", strconv.Itoa(v.Members))
	row("city", v.City)
	row("status", v.Status)
	row("face_value", formatTiyn(domain.Tiyn(v.FaceValue)))
	row("balance", formatTiyn(domain.Tiyn(v.Balance)))
	row("activated_at", orDash(v.ActivatedAt))
	row("expires_at", orDash(v.ExpiresAt))
	return tw.Flush()
}

func printRedemption(w io.Writer, data []byte) error {
	var r redemptionView
	if err := json.Unmarshal(data, &r); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("redemption_id", r.RedemptionID)
	row("status", r.Status)
	row("voucher_id", r.VoucherID)
	row("store_id", r.StoreID)
	row("terminal_id", r.TerminalID)
	row("created_at", r.CreatedAt)
	row("requested", formatTiyn(domain.Tiyn(r.Requested)))
	row("approved", formatTiyn(domain.Tiyn(r.Approved)))
	row("refunded", formatTiyn(domain.Tiyn(r.Refunded)))
	row("balance", formatTiyn(domain.Tiyn(r.Balance))+" (right after the redemption)")
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Lines == nil {
		return nil
	}

	fmt.Fprintf(w, "\nlines (%d):\n", len(r.Lines))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "#\tsku\tcategory\tamount\teligible\tdiscount\tpayable\tcovered\t")
	for i, l := range r.Lines {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%t\t%d\t%d\t%d\t\n",
			i+1, l.SKU, orDash(l.Category), l.Amount, l.Eligible, l.Discount, l.Payable, l.Covered)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
