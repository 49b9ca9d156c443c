// Command summary reads the load-test reports of one bench/compare run and
// prints them side by side with the gateway's ratio to each design, and
// checks the targets the gateway is held to.
//
//	summary gateway=gw.json postgres=pg.json redis=redis.json noop=noop.json [open=open.json]
//
// With --half-rate FILE it only prints half the redemption rate of a report,
// which compare.sh uses as the open-loop rate.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"azyq/loadtest"
)

// Targets the gateway is measured against.
const (
	postgresRatioMin = 10.0
	redisRatioMin    = 3.0
	ceilingShareMin  = 0.5
	openP99MaxUS     = 2000
)

func main() {
	half := flag.String("half-rate", "", "print half the POS operation rate of this report and exit")
	flag.Parse()
	if *half != "" {
		rep, err := loadtest.ReadReport(*half)
		if err != nil {
			fmt.Fprintln(os.Stderr, "summary:", err)
			os.Exit(2)
		}
		fmt.Printf("%.0f\n", rep.POSPerSecond/2)
		return
	}
	if err := run(flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "summary:", err)
		os.Exit(2)
	}
}

func run(args []string) error {
	names := []string{}
	reps := map[string]*loadtest.Report{}
	for _, a := range args {
		name, path, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("cannot parse argument %q: want name=report.json", a)
		}
		rep, err := loadtest.ReadReport(path)
		if err != nil {
			// A design that failed to run is reported, not fatal.
			fmt.Printf("%s: no report (%v)\n", name, err)
			continue
		}
		names = append(names, name)
		reps[name] = rep
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "design\tmode\tload\tbusy %\tlt %\tredemptions/s\tapproved/s\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\tfailures\tbooks\tgateway ×\t")
	gw := reps["gateway"]
	for _, n := range names {
		r := reps[n]
		ratio := "-"
		if gw != nil && n != "gateway" && n != "open" && r.RedemptionsPerSecond > 0 {
			ratio = fmt.Sprintf("%.2f", gw.RedemptionsPerSecond/r.RedemptionsPerSecond)
		}
		books := "-"
		if r.Books != nil {
			books = fmt.Sprintf("%d bad", len(r.Books.Violations))
		}
		mode := r.Mode
		if r.Rate > 0 {
			mode = fmt.Sprintf("open@%.0f", r.Rate)
		}
		o := r.Redemption
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.0f\t%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%s\t%s\t\n", n, mode,
			max(r.Load[0], r.Load[1]), 100*r.MachineBusy, 100*r.LoadTestCPU, r.RedemptionsPerSecond, r.ApprovedPerSecond, ms(o.P50), ms(o.P90), ms(o.P99), ms(o.P999),
			ms(o.Max), r.Failures, books, ratio)
	}
	tw.Flush()
	fmt.Println("load: the higher one-minute load average around the run (this run's own threads count too);")
	fmt.Println("busy %: share of all cores busy during the timed phase; lt %: the load test's own share of them")

	if gw == nil {
		return nil
	}
	fmt.Println()
	check := func(name string, got, want float64, ok bool) {
		verdict := "met"
		if !ok {
			verdict = "NOT met"
		}
		fmt.Printf("target %-34s %8.2f (want %s %.2f): %s\n", name, got, map[bool]string{true: "≥", false: "≤"}[name != "open-loop p99 ms"], want, verdict)
	}
	if r := reps["postgres"]; r != nil && r.RedemptionsPerSecond > 0 {
		x := gw.RedemptionsPerSecond / r.RedemptionsPerSecond
		check("gateway / PostgreSQL", x, postgresRatioMin, x >= postgresRatioMin)
	}
	if r := reps["redis"]; r != nil && r.RedemptionsPerSecond > 0 {
		x := gw.RedemptionsPerSecond / r.RedemptionsPerSecond
		check("gateway / Redis", x, redisRatioMin, x >= redisRatioMin)
	}
	if r := reps["noop"]; r != nil && r.RedemptionsPerSecond > 0 {
		x := gw.RedemptionsPerSecond / r.RedemptionsPerSecond
		check("gateway / no-work ceiling", x, ceilingShareMin, x >= ceilingShareMin)
	}
	if r := reps["open"]; r != nil {
		p := ms(r.Redemption.P99)
		check("open-loop p99 ms", p, openP99MaxUS/1000.0, r.Redemption.P99 <= openP99MaxUS)
	}
	return nil
}

func ms(us int64) float64 { return float64(us) / 1000 }
