package loadtest

import (
	"fmt"
	"html/template"
	"math"
	"os"
	"strings"
)

// The HTML report is one self-contained page: inline SVG drawn here, no
// script, no font, no CDN, so it opens on a machine without internet and
// can be attached to a ticket as it is.

const (
	svgWidth   = 860
	svgHeight  = 300
	svgMarginL = 60
	svgMarginB = 36
	svgMarginT = 14
	svgMarginR = 70
)

var seriesColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"}

// WriteHTML writes the report as an HTML page to path.
func (rep *Report) WriteHTML(path string) error {
	var b strings.Builder
	data := struct {
		R          *Report
		Over       template.HTML
		Percentile template.HTML
		Table      []OpReport
	}{R: rep, Over: template.HTML(rep.svgOverTime()),
		Percentile: template.HTML(rep.svgPercentiles()),
		Table:      append([]OpReport{rep.Redemption}, rep.Ops...)}
	if err := pageTemplate.Execute(&b, data); err != nil {
		return fmt.Errorf("cannot render HTML report: %w", err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("cannot write HTML report %q: %w", path, err)
	}
	return nil
}

var pageTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"ms":       ms,
	"outcomes": formatOutcomes,
	"f0":       func(f float64) string { return fmt.Sprintf("%.0f", f) },
	"f1":       func(f float64) string { return fmt.Sprintf("%.1f", f) },
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>azyq load test: {{.R.Target}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:960px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#080}
svg{background:#fafafa;border:1px solid #ddd}code{background:#f3f3f3;padding:1px 3px}
</style></head><body>
<h1>azyq load test</h1>
<p>Target <code>{{.R.Target}}</code>{{if .R.Label}} ({{.R.Label}}){{end}}, {{.R.Mode}} loop,
{{.R.Shape}} shape, {{.R.Workers}} workers{{if .R.Rate}}, target {{f0 .R.Rate}} POS operations/s{{end}},
{{f1 .R.Seconds}} s timed after {{f1 .R.Setup}} s of set-up; {{.R.Vouchers}} vouchers,
{{.R.Stores}} shops, {{.R.Terms}} terminals; seed {{.R.Seed}}; started {{.R.Started.Format "2006-01-02 15:04:05 MST"}}.</p>
<p><b>{{f0 .R.RedemptionsPerSecond}} redemptions/s</b> (approved {{f0 .R.ApprovedPerSecond}}/s),
{{f0 .R.POSPerSecond}} POS operations/s, redemption p99 {{ms .R.Redemption.P99}} ms,
failures <span class="{{if .R.Failures}}bad{{else}}ok{{end}}">{{.R.Failures}}</span>.
{{if .R.Books}}Books: {{.R.Books.Checked}} vouchers checked, {{.R.Books.Uncertain}} uncertain,
<span class="{{if .R.Books.Violations}}bad{{else}}ok{{end}}">{{len .R.Books.Violations}} violations</span>.{{end}}</p>
{{range .R.Problems}}<p class="bad">{{.}}</p>{{end}}
{{range .R.Notes}}<p>Note: {{.}}</p>{{end}}
<h2>Latency by operation</h2>
<table><tr><th>operation</th><th>count</th><th>per s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>outcomes</th></tr>
{{range .Table}}<tr><td>{{.Op}}</td><td>{{.Count}}</td><td>{{f0 .PerSecond}}</td><td>{{ms .P50}}</td><td>{{ms .P90}}</td><td>{{ms .P99}}</td><td>{{ms .P999}}</td><td>{{ms .Max}}</td><td style="text-align:left">{{outcomes .Outcomes}}</td></tr>
{{end}}</table>
<h2>Over time</h2>
<p>POS latency per second of the run (p50, p99, max; left axis, ms, log scale) and POS operations per second (grey bars, right axis, linear).
{{if eq .R.Mode "open"}}Open loop: each latency counts from the request's scheduled start.{{end}}</p>
{{.Over}}
<h2>Percentiles</h2>
<p>Latency at each percentile, per operation (ms, log scale).</p>
{{.Percentile}}
{{if .R.Books}}{{if .R.Books.Violations}}<h2>Book violations</h2><ul>
{{range .R.Books.Violations}}<li>{{.String}}</li>{{end}}</ul>{{end}}{{end}}
</body></html>
`))

// logY maps a latency in microseconds to a y coordinate on a log axis from
// lo to hi microseconds.
func logY(us int64, lo, hi float64) float64 {
	v := math.Max(float64(us), lo)
	frac := (math.Log10(v) - math.Log10(lo)) / (math.Log10(hi) - math.Log10(lo))
	return float64(svgHeight-svgMarginB) - frac*float64(svgHeight-svgMarginB-svgMarginT)
}

// latencyAxis returns log-axis bounds in microseconds covering max.
func latencyAxis(maxUS int64) (lo, hi float64) {
	lo, hi = 10, 1000
	for hi < float64(maxUS) {
		hi *= 10
	}
	return lo, hi
}

func svgYAxis(b *strings.Builder, lo, hi float64) {
	for v := lo; v <= hi; v *= 10 {
		y := logY(int64(v), lo, hi)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`,
			svgMarginL, y, svgWidth-svgMarginR, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" font-size="11" text-anchor="end">%g ms</text>`,
			svgMarginL-4, y+4, v/1000)
	}
}

func (rep *Report) svgOverTime() string {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d">`, svgWidth, svgHeight)
	if len(rep.Series) == 0 {
		b.WriteString(`<text x="20" y="40">no data</text>`)
		return b.String() + `</svg>`
	}

	var maxUS, maxOps int64 = 1, 1
	for _, p := range rep.Series {
		maxUS, maxOps = max(maxUS, p.Max), max(maxOps, p.Ops)
	}
	lo, hi := latencyAxis(maxUS)
	plotW := float64(svgWidth - svgMarginL - svgMarginR)
	x := func(i int) float64 { return svgMarginL + plotW*float64(i)/float64(max(len(rep.Series)-1, 1)) }
	bottom := float64(svgHeight - svgMarginB)
	top := float64(svgMarginT)

	// Throughput as grey bars behind the latency lines.
	barW := math.Max(plotW/float64(len(rep.Series))-1, 1)
	for i, p := range rep.Series {
		h := (bottom - top) * float64(p.Ops) / float64(maxOps)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#e4e4e4"/>`,
			x(i)-barW/2, bottom-h, barW, h)
	}
	// The right axis is linear, unlike the latency axis on the left.
	for _, f := range []float64{1, 0.5, 0} {
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" font-size="11" fill="#888">%.0f/s</text>`,
			svgWidth-svgMarginR+4, bottom-(bottom-top)*f+4, f*float64(maxOps))
	}
	svgYAxis(&b, lo, hi)

	lines := []struct {
		name string
		get  func(Point) int64
	}{{"p50", func(p Point) int64 { return p.P50 }}, {"p99", func(p Point) int64 { return p.P99 }},
		{"max", func(p Point) int64 { return p.Max }}}
	for li, l := range lines {
		var pts []string
		for i, p := range rep.Series {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(i), logY(l.get(p), lo, hi)))
		}
		c := seriesColors[li]
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`,
			c, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" fill="%s">%s</text>`,
			svgMarginL+10+li*50, svgMarginT+12, c, l.name)
	}
	for i := 0; i < len(rep.Series); i += max(len(rep.Series)/10, 1) {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%ds</text>`,
			x(i), svgHeight-svgMarginB+16, i)
	}
	return b.String() + `</svg>`
}

func (rep *Report) svgPercentiles() string {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d">`, svgWidth, svgHeight)

	var maxUS int64 = 1
	for _, o := range rep.Ops {
		maxUS = max(maxUS, o.Max)
	}
	lo, hi := latencyAxis(maxUS)
	plotW := float64(svgWidth - svgMarginL - svgMarginR)
	x := func(p float64) float64 { return svgMarginL + plotW*logTicks(p)/5.3 }
	svgYAxis(&b, lo, hi)
	for _, p := range []float64{0, 90, 99, 99.9, 99.99, 99.999} {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`,
			x(p), svgMarginT, x(p), svgHeight-svgMarginB)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%g%%</text>`,
			x(p), svgHeight-svgMarginB+16, p)
	}
	for i, o := range rep.Ops {
		var pts []string
		for _, c := range o.Curve {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(c.Percentile), logY(c.Micros, lo, hi)))
		}
		c := seriesColors[i%len(seriesColors)]
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`,
			c, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" fill="%s">%s</text>`,
			svgMarginL+10, svgMarginT+14+i*15, c, o.Op)
	}
	return b.String() + `</svg>`
}
