package main

import (
	"bytes"
	"strconv"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// noopFace is the face value every no-work voucher claims; balances never
// move, so the load test's book check passes with nothing approved.
const noopFace = 1_730_000

// noop answers each route of the load test with a fixed body: no storage,
// no locking, no fsync. Only the issuance and the redemption read their
// body, because the load test checks that the voucher it is answered about
// is the one it asked for.
func noop(ctx *fasthttp.RequestCtx) {
	path := ctx.Path()
	ctx.SetContentType("application/json")
	switch {
	case bytes.Equal(path, []byte("/v1/redemptions")):
		qr := fastjson.GetBytes(ctx.PostBody(), "qr")
		ctx.SetStatusCode(201)
		b := append([]byte(`{"redemption_id":"RD0000000000001","voucher_id":"`), qr...)
		ctx.SetBody(append(b, `","status":"approved","requested":0,"approved":0,"balance":1730000}`...))
	case bytes.HasSuffix(path, []byte("/qr")):
		id := bytes.TrimSuffix(bytes.TrimPrefix(path, []byte("/v1/vouchers/")), []byte("/qr"))
		ctx.SetStatusCode(201)
		b := append([]byte(`{"qr":"`), id...)
		ctx.SetBody(append(b, `","expires_at":"2999-01-01T00:00:00+05:00"}`...))
	case bytes.HasSuffix(path, []byte("/terminals")):
		ctx.SetStatusCode(201)
		ctx.SetBodyString(`{"api_key":"noop"}`)
	case bytes.Equal(path, []byte("/v1/issuances")):
		fams := fastjson.MustParseBytes(ctx.PostBody()).GetArray("families")
		b := []byte(`{"vouchers":[`)
		for i, f := range fams {
			if i > 0 {
				b = append(b, ',')
			}
			id := f.GetStringBytes("family_id")
			b = append(b, `{"family_id":"`...)
			b = append(b, id...)
			b = append(b, `","voucher_id":"N`...)
			b = append(b, id...)
			b = append(b, `","face_value":`...)
			b = strconv.AppendInt(b, noopFace, 10)
			b = append(b, `,"status":"issued","created":true}`...)
		}
		ctx.SetBody(append(b, "]}"...))
	case bytes.HasPrefix(path, []byte("/v1/vouchers/")) && string(ctx.Method()) == "GET":
		ctx.SetBodyString(`{"face_value":1730000,"balance":1730000,"status":"active"}`)
	default:
		ctx.SetBodyString(`{}`)
	}
}
