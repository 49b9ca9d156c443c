package gateway

// serveSettlement answers every /v1/settlement/... route. The router calls
// it after authentication and the role check of the route table (admin may
// call every settlement route; the settlement role may list, read, export
// and acknowledge batches; POST /v1/settlement/cutoffs is admin only), and
// after the readiness and in-flight checks. Until settlement is built it
// answers 404 not_found.
//
// What it has to work with, all on c (a *call, one per request, pooled:
// keep nothing of it after returning):
//
//   - c.id: which settlement route matched: routeCutoffs, routeBatches,
//     routeBatch, routePayments, routeLines or routeAcknowledgement.
//   - c.params[0]: the {batch_id} segment of the path, when the route has
//     one (a slice of the request's path, valid during the call).
//   - c.who: the caller's role (roleAdmin or roleSettlement here).
//   - c.ctx: the fasthttp request: c.ctx.PostBody(), c.ctx.QueryArgs().
//     The body is already limited to 64 KiB.
//   - c.rid: the request id, already set as the X-Request-Id header.
//   - c.fail(code, msg) / c.failf / c.failErr(err): answer an error of the
//     contract; failErr maps a *ledger.Refusal through codeTable, and
//     ledger.ErrUnavailable to 503.
//   - c.reply(status, body): answer JSON; c.buf is a scratch buffer for
//     building the body (the append helpers of json.go write JSON fields).
//     For CSV or XML set c.status and write c.ctx directly.
//   - parseBody(&c.parser, body) and walk(...): strict JSON decoding.
//   - s.led (*ledger.Ledger) and s.prog (*domain.Programme).
//   - s.log: the server's logger.
func (s *Server) serveSettlement(c *call) {
	c.failf(codeNotFound, "no endpoint %s %s", c.ctx.Method(), c.ctx.Path())
}
