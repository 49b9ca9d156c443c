package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fastjson"

	"azyq/ledger"
	"azyq/settlement"
)

// initSettlement takes the settlement the server serves, opening one over
// the ledger when the configuration brings none, and registers its
// metrics. The scheduled cut-offs are not started here: the process runs
// Settlement().Run beside the server, so that tests drive cut-offs by hand.
func (s *Server) initSettlement(st *settlement.Settlement, reg prometheus.Registerer) error {
	if st == nil {
		var err error
		if st, err = settlement.Open(settlement.Config{Ledger: s.led, Logger: s.log}); err != nil {
			return err
		}
	}
	for _, c := range st.Collectors() {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("cannot register settlement metrics: %w", err)
		}
	}
	s.settle = st
	return nil
}

// Settlement returns the settlement the server serves.
func (s *Server) Settlement() *settlement.Settlement { return s.settle }

// serveSettlement answers every /v1/settlement/... route; the route table
// has checked the role (admin: cut-offs, reconciliation and every read;
// settlement: batches read, export, acknowledge). These are operators' and
// banks' calls, a few a day, so they use encoding/json rather than the
// money path's hand-written encoders.
func (s *Server) serveSettlement(c *call) {
	switch c.id {
	case routeCutoffs:
		s.serveCutoff(c)
	case routeBatches:
		s.serveBatches(c)
	case routeBatch, routePayments, routeLines:
		s.serveBatch(c)
	case routeAcknowledgement:
		s.serveAcknowledgement(c)
	case routeReconciliation:
		s.serveReconciliation(c)
	default:
		panic(fmt.Sprintf("BUG: route %d is not a settlement route", c.id))
	}
}

// replyJSON answers v encoded with encoding/json.
func (c *call) replyJSON(status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode %T: %v", v, err))
	}
	c.reply(status, body)
}

func (s *Server) serveCutoff(c *call) {
	if err := emptyOrEmptyObject(&c.parser, c.ctx.PostBody()); err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	cut, err := s.settle.Cutoff()
	if err != nil {
		c.failErr(err)
		return
	}

	// The cut-off is durable; the admin log says who asked for it. A crash
	// between the two commits leaves the cut-off without its log line,
	// never a log line without its cut-off.
	_, err = c.s.led.RecordAdminAction(ledger.AdminAction{
		Actor: c.actor(), Action: "settlement.cutoff", Object: "cutoff/" + cut.ID,
		After: mustMarshal(cut),
	})
	if err != nil {
		c.failErr(err)
		return
	}
	c.replyJSON(201, cut)
}

// batchPage is the body of GET /v1/settlement/batches.
type batchPage struct {
	Batches []settlement.Batch `json:"batches"`
	Next    string             `json:"next"`
}

func (s *Server) serveBatches(c *call) {
	args := c.ctx.QueryArgs()
	limit := 0
	if v := args.Peek("limit"); v != nil {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 {
			c.failf(codeInvalidRequest, "limit %q must be a whole number from 1", v)
			return
		}
		limit = n
	}
	list, next, err := s.settle.List(string(args.Peek("status")), string(args.Peek("after")), limit)
	if err != nil {
		c.failErr(err)
		return
	}
	if list == nil {
		list = []settlement.Batch{}
	}
	c.replyJSON(200, batchPage{Batches: list, Next: next})
}

// serveBatch answers a batch with its shops, as JSON, pain.001 XML or the
// streamed lines.csv.
func (s *Server) serveBatch(c *call) {
	b, err := s.settle.Batch(string(c.params[0]))
	if err != nil {
		c.failErr(err)
		return
	}
	switch c.id {
	case routeBatch:
		c.replyJSON(200, b)
	case routePayments:
		if b.Net == 0 {
			// pain.001 needs at least one transfer; a batch whose shops
			// all carry a zero or negative net moves no money.
			c.failf(codeConflict, "batch %s pays no shop (every net is zero or carried): it has no payment file", b.ID)
			return
		}
		var buf bytes.Buffer
		if err := settlement.WritePayments(&buf, s.prog, b); err != nil {
			c.failErr(err)
			return
		}
		c.status = 200
		c.ctx.SetStatusCode(200)
		c.ctx.SetContentType("application/xml; charset=utf-8")
		c.ctx.Response.Header.Set("Content-Disposition", `attachment; filename="`+b.ID+`-payments.xml"`)
		c.ctx.SetBody(buf.Bytes())
	case routeLines:
		// The writer runs after this call has returned to the pool: it
		// keeps only the settlement, the batch and its own logger. A
		// failure mid-stream cannot change the status any more; it cuts
		// the body short, which a consumer detects by counting rows
		// against the batch's redemption_count + refund_count.
		c.status = 200
		c.ctx.SetStatusCode(200)
		c.ctx.SetContentType("text/csv; charset=utf-8")
		c.ctx.Response.Header.Set("Content-Disposition", `attachment; filename="`+b.ID+`-lines.csv"`)
		st, log := s.settle, s.log
		c.ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			start := time.Now()
			if err := st.WriteLines(w, b); err != nil {
				log.Error("lines.csv cut short", "batch", b.ID, "err", err, "duration", time.Since(start))
			}
		})
	}
}

var acknowledgementFields = []string{"reference"}

func (s *Server) serveAcknowledgement(c *call) {
	var ref string
	o, err := parseBody(&c.parser, c.ctx.PostBody())
	if err == nil {
		var seen fieldSet
		seen, err = walk(o, acknowledgementFields, func(_ int, v *fastjson.Value) error {
			var err error
			ref, err = parseText(v, "reference", 140)
			return err
		})
		if err == nil && !seen.has(0) {
			err = badJSON("reference is required")
		}
	}
	if err == nil && !settlement.ValidReference(ref) {
		err = badJSON("reference must be 1-140 printable ASCII characters")
	}
	if err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	b, err := s.settle.Acknowledge(string(c.params[0]), ref)
	if err != nil {
		c.failErr(err)
		return
	}
	b.Stores = nil
	c.replyJSON(200, b)
}

// serveReconciliation answers GET /v1/settlement/reconciliation?from=&to=
// (admin): the accountants' totals for [from, to), each bound RFC 3339 or
// a date YYYY-MM-DD taken at midnight in the programme's zone.
func (s *Server) serveReconciliation(c *call) {
	args := c.ctx.QueryArgs()
	from, err := s.parseBound(args.Peek("from"), "from")
	var to time.Time
	if err == nil {
		to, err = s.parseBound(args.Peek("to"), "to")
	}
	if err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	r, err := s.settle.Reconcile(from, to)
	if err != nil {
		c.failErr(err)
		return
	}
	c.replyJSON(200, r)
}

func (s *Server) parseBound(v []byte, name string) (time.Time, error) {
	if len(v) == 0 {
		return time.Time{}, fmt.Errorf("%s is required: RFC 3339 or YYYY-MM-DD", name)
	}
	if t, err := time.ParseInLocation(time.DateOnly, string(v), s.prog.Location); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339, string(v))
	if err != nil {
		return time.Time{}, fmt.Errorf("%s %q must be RFC 3339 or YYYY-MM-DD", name, v)
	}
	return t, nil
}
