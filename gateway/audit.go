package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"

	"azyq/ledger"
)

// actor names the caller of an admin request for the admin log: its role,
// the id of its credential (never the credential) and its address.
func (c *call) actor() ledger.Actor {
	a := ledger.Actor{Role: c.who.String(), Remote: c.ctx.RemoteIP().String()}
	switch c.who {
	case roleTerminal:
		a.ID = "terminal/" + c.terminal.ID
	default:
		if tok, ok := bearer(c.ctx.Request.Header.Peek("Authorization")); ok {
			h := sha256.Sum256(tok)
			a.ID = "sha256:" + hex.EncodeToString(h[:6]) // as ledger.CredentialID
		}
	}
	return a
}

// adminLogPageDefault is the page size of GET /v1/audit without a limit.
const adminLogPageDefault = 100

// serveAdminLog is GET /v1/audit?after=CURSOR&limit=N (admin): the admin
// log, oldest first, as
//
//	{"actions": [{"seq", "at", "actor": {"role", "id", "remote"}, "action",
//	  "object", "before", "after"}, …], "next": "CURSOR or empty"}
//
// "next" is empty once the reader has caught up; a reader tailing the log
// then polls with the last action's seq as after.
func (c *call) serveAdminLog() {
	args := c.ctx.QueryArgs()
	var after uint64
	if v := args.Peek("after"); len(v) > 0 {
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			c.failf(codeInvalidRequest, "after %q must be a cursor from a previous page's next", v)
			return
		}
		after = n
	}
	limit := adminLogPageDefault
	if v := args.Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > ledger.AdminLogPageMax {
			c.failf(codeInvalidRequest, "limit %q must be 1-%d", v, ledger.AdminLogPageMax)
			return
		}
		limit = n
	}

	recs, err := c.s.led.AdminLog(after, limit)
	if err != nil {
		c.failErr(err)
		return
	}
	b := append(c.buf[:0], `{"actions":[`...)
	for i := range recs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendAdminAction(b, &recs[i], c)
	}
	b = append(b, ']')
	next := ""
	if len(recs) == limit {
		next = strconv.FormatUint(recs[len(recs)-1].Seq, 10)
	}
	b = appendStr(b, "next", next)
	c.buf = append(b, '}')
	c.reply(200, c.buf)
}

func appendAdminAction(b []byte, r *ledger.AdminAction, c *call) []byte {
	b = appendInt(append(b, '{'), "seq", int64(r.Seq))
	b = appendTime(b, "at", r.At, c.s.prog.Location)
	b = appendKey(b, "actor")
	b = appendStr(append(b, '{'), "role", r.Actor.Role)
	b = appendStr(b, "id", r.Actor.ID)
	b = appendStr(b, "remote", r.Actor.Remote)
	b = append(b, '}')
	b = appendStr(b, "action", r.Action)
	b = appendStr(b, "object", r.Object)
	b = appendRaw(b, "before", r.Before)
	b = appendRaw(b, "after", r.After)
	return append(b, '}')
}

// appendRaw appends a stored JSON value, or null.
func appendRaw(b []byte, key string, v []byte) []byte {
	b = appendKey(b, key)
	if v == nil {
		return append(b, "null"...)
	}
	return append(b, v...)
}
