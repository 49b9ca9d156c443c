package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Report is the outcome of a run: what was asked for, what was measured and
// whether the books balanced. It is written as a table, as JSON and as an
// HTML page; the JSON form is what bench/compare reads.
type Report struct {
	Target   string    `json:"target"`
	Label    string    `json:"label,omitempty"`
	Mode     string    `json:"mode"`
	Shape    string    `json:"shape"`
	Seed     uint64    `json:"seed"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Workers  int       `json:"workers"`
	Rate     float64   `json:"rate,omitempty"` // open loop: target POS operations per second
	Vouchers int       `json:"vouchers"`
	Stores   int       `json:"stores"`
	Terms    int       `json:"terminals"`
	Setup    float64   `json:"setup_seconds"`
	// Load is the machine's one-minute load average at the start and at
	// the end of the timed phase, and CPUs its core count: a load above
	// the core count means something else competed for the CPU.
	Load [2]float64 `json:"load_average"`
	CPUs int        `json:"cpus"`
	// MachineBusy is the share of all cores' time that was busy during
	// the timed phase, and LoadTestCPU the share the load test itself
	// used: the rest of the busy time is the server's and other work's.
	MachineBusy float64 `json:"machine_busy"`
	LoadTestCPU float64 `json:"loadtest_cpu"`

	// Redemptions counts redemption requests answered (approved or
	// declined); RedemptionsPerSecond is the figure runs are compared by.
	Redemptions          int64   `json:"redemptions"`
	RedemptionsPerSecond float64 `json:"redemptions_per_second"`
	ApprovedPerSecond    float64 `json:"approved_per_second"`
	POSPerSecond         float64 `json:"pos_ops_per_second"`
	Failures             int64   `json:"failures"`
	ReplayMismatches     int64   `json:"replay_mismatches"`
	// Redemption merges both kinds of redemption: the headline latency.
	Redemption OpReport `json:"redemption"`
	// StartLag is, in the open loop, how late requests left the load
	// generator after their scheduled start (included in every latency).
	StartLag *OpReport  `json:"start_lag,omitempty"`
	Ops      []OpReport `json:"ops"`
	Series   []Point    `json:"series"`
	Books    *BookCheck `json:"books,omitempty"`
	Notes    []string   `json:"notes,omitempty"`
	Problems []string   `json:"problems,omitempty"`
}

// OpReport is one operation's figures. Latencies are in microseconds.
type OpReport struct {
	Op        string           `json:"op"`
	Count     int64            `json:"count"`
	PerSecond float64          `json:"per_second"`
	P50       int64            `json:"p50_us"`
	P90       int64            `json:"p90_us"`
	P99       int64            `json:"p99_us"`
	P999      int64            `json:"p999_us"`
	Max       int64            `json:"max_us"`
	Outcomes  map[string]int64 `json:"outcomes"`
	// Curve is the latency at each percentile of plotPercentiles.
	Curve []CurvePoint `json:"curve,omitempty"`
}

// CurvePoint is one point of a percentile plot.
type CurvePoint struct {
	Percentile float64 `json:"percentile"`
	Micros     int64   `json:"us"`
}

// Point is one second of the run.
type Point struct {
	Second int   `json:"second"`
	Ops    int64 `json:"pos_ops"`
	Errors int64 `json:"failures"`
	P50    int64 `json:"p50_us"`
	P99    int64 `json:"p99_us"`
	Max    int64 `json:"max_us"`
}

var plotPercentiles = []float64{0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95,
	96, 97, 98, 99, 99.3, 99.5, 99.7, 99.8, 99.9, 99.93, 99.95, 99.97, 99.99, 99.999, 100}

// Summarize fills the report's measured figures from a recorder after a
// timed phase of the given length.
func (rep *Report) Summarize(rec *Recorder, elapsed time.Duration) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	secs := elapsed.Seconds()
	rep.Seconds = secs

	redeem := newLatencyHistogram(latencyDigits)
	redeemOutcomes := map[string]int64{}
	for k := range kindCount {
		h := rec.mu.latency[k]
		if h.TotalCount() == 0 {
			continue
		}
		op := opReport(k.String(), h, rec.mu.outcomes[k], secs)
		rep.Ops = append(rep.Ops, op)
		for o, n := range rec.mu.outcomes[k] {
			if isFailure(o) {
				rep.Failures += n
			}
			if o == outcomeReplayWrong {
				rep.ReplayMismatches += n
			}
			if k == KindRedeemAmount || k == KindRedeemBasket {
				redeemOutcomes[o] += n
			}
		}
		if k == KindRedeemAmount || k == KindRedeemBasket {
			redeem.Merge(h)
		}
		if k != KindQRMint {
			rep.POSPerSecond += op.PerSecond
		}
	}
	rep.Redemption = opReport("redemption", redeem, redeemOutcomes, secs)
	if lag := rec.mu.startLag; lag.TotalCount() > 0 {
		op := opReport("start_lag", lag, nil, secs)
		op.Curve = nil
		rep.StartLag = &op
	}
	rep.Redemptions = redeem.TotalCount()
	rep.RedemptionsPerSecond = rep.Redemption.PerSecond
	rep.ApprovedPerSecond = float64(redeemOutcomes[outcomeApproved]) / secs

	for i, s := range rec.mu.series {
		var ops int64
		for k := range kindCount {
			if k != KindQRMint {
				ops += s.count[k]
			}
		}
		rep.Series = append(rep.Series, Point{Second: i, Ops: ops, Errors: s.errors,
			P50: s.latency.ValueAtQuantile(50), P99: s.latency.ValueAtQuantile(99),
			Max: s.latency.Max()})
	}
}

func opReport(name string, h *hdr.Histogram, outcomes map[string]int64, secs float64) OpReport {
	op := OpReport{Op: name, Count: h.TotalCount(), Outcomes: map[string]int64{},
		P50: h.ValueAtQuantile(50), P90: h.ValueAtQuantile(90), P99: h.ValueAtQuantile(99),
		P999: h.ValueAtQuantile(99.9), Max: h.Max()}
	if secs > 0 {
		op.PerSecond = float64(op.Count) / secs
	}
	for o, n := range outcomes {
		op.Outcomes[o] = n
	}
	for _, p := range plotPercentiles {
		op.Curve = append(op.Curve, CurvePoint{p, h.ValueAtQuantile(p)})
	}
	return op
}

// OK reports whether the run found nothing wrong.
func (rep *Report) OK() bool {
	return len(rep.Problems) == 0 && (rep.Books == nil || rep.Books.OK())
}

func ms(us int64) string { return fmt.Sprintf("%.2f", float64(us)/1000) }

// WriteTable writes the report for a terminal.
func (rep *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "\n%s  %s loop, %s shape, %d workers", rep.Target, rep.Mode, rep.Shape, rep.Workers)
	if rep.Rate > 0 {
		fmt.Fprintf(w, ", target %.0f POS ops/s", rep.Rate)
	}
	fmt.Fprintf(w, ", %.1f s timed, seed %d\n", rep.Seconds, rep.Seed)
	fmt.Fprintf(w, "redemptions %.0f/s (approved %.0f/s), POS operations %.0f/s, failures %d\n",
		rep.RedemptionsPerSecond, rep.ApprovedPerSecond, rep.POSPerSecond, rep.Failures)
	fmt.Fprintf(w, "CPU: machine %.0f%% busy on %d cores, the load test itself %.0f%%; load average %.1f → %.1f\n\n",
		100*rep.MachineBusy, rep.CPUs, 100*rep.LoadTestCPU, rep.Load[0], rep.Load[1])

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "operation\tcount\tper s\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\t")
	ops := append([]OpReport{rep.Redemption}, rep.Ops...)
	for _, o := range ops {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t\n", o.Op, o.Count, o.PerSecond,
			ms(o.P50), ms(o.P90), ms(o.P99), ms(o.P999), ms(o.Max))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("cannot write report table: %w", err)
	}

	fmt.Fprintln(w, "\noutcomes:")
	for _, o := range rep.Ops {
		fmt.Fprintf(w, "  %-17s %s\n", o.Op, formatOutcomes(o.Outcomes))
	}
	if l := rep.StartLag; l != nil {
		fmt.Fprintf(w, "\nopen-loop start lag (in every latency above): p50 %s ms, p99 %s ms, max %s ms\n",
			ms(l.P50), ms(l.P99), ms(l.Max))
	}
	if rep.Books != nil {
		fmt.Fprintf(w, "\nbooks: %d vouchers checked, %d uncertain, %d violations\n",
			rep.Books.Checked, rep.Books.Uncertain, len(rep.Books.Violations))
		for i, v := range rep.Books.Violations {
			if i == 20 {
				fmt.Fprintf(w, "  … %d more\n", len(rep.Books.Violations)-i)
				break
			}
			fmt.Fprintf(w, "  %s\n", v)
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "PROBLEM: %s\n", p)
	}
	return nil
}

func formatOutcomes(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// WriteJSON writes the report to path.
func (rep *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("cannot encode report: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("cannot write report %q: %w", path, err)
	}
	return nil
}

// ReadReport reads a report written by WriteJSON.
func ReadReport(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read report: %w", err)
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, fmt.Errorf("cannot parse report %q: %w", path, err)
	}
	return &rep, nil
}

// logTicks returns the x position of a percentile on the usual HDR plot
// axis, log10(1/(1−p)): 90 % is 1, 99 % is 2, 99.9 % is 3.
func logTicks(p float64) float64 {
	if p >= 100 {
		return 5.3
	}
	return math.Min(-math.Log10(1-p/100), 5.3)
}
