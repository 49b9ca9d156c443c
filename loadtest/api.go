package loadtest

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// Client speaks version 1 of the gateway's HTTP API over fasthttp. It is
// safe for concurrent use: the underlying HostClient pools connections, up
// to ConnsMax.
type Client struct {
	hc      *fasthttp.HostClient
	timeout time.Duration
}

// Response is what a request returned. Body is the caller's own copy.
type Response struct {
	Status   int
	Body     []byte
	Replayed bool // the Idempotent-Replayed header was "true"
}

// ErrorCode returns the contract's error code of an error body, or "".
func (r *Response) ErrorCode() string {
	if r.Status < 400 {
		return ""
	}
	return string(fastjson.GetBytes(r.Body, "error", "code"))
}

// CheckLoopback returns an error unless addr ("host:port") names a loopback
// address. A load test can fill a disk and lock out tills; it must not be
// aimed at anything but the machine it runs on.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("cannot parse gateway address %q (--addr): %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("cannot use gateway address %q (--addr): only loopback addresses "+
			"such as 127.0.0.1 are allowed", addr)
	}
	return nil
}

// NewClient returns a client of the gateway at addr with at most connsMax
// connections and the given per-request timeout.
func NewClient(addr string, connsMax int, timeout time.Duration) (*Client, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	hc := &fasthttp.HostClient{
		Addr:                addr,
		MaxConns:            connsMax,
		ReadTimeout:         timeout,
		WriteTimeout:        timeout,
		MaxIdleConnDuration: time.Minute,
		MaxConnWaitTimeout:  timeout,
		// Money-moving POSTs are retried by the load test itself, with
		// the same idempotency key; the transport must never resend.
		RetryIfErr: func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
	return &Client{hc: hc, timeout: timeout}, nil
}

// Do sends one request. body may be nil; idemKey, when not empty, goes into
// Idempotency-Key.
func (c *Client) Do(method, path, token, idemKey string, body []byte) (Response, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	req.Header.SetMethod(method)
	req.SetRequestURI(path)
	req.Header.SetHost(c.hc.Addr)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	if body != nil {
		req.Header.SetContentType("application/json")
		req.SetBodyRaw(body)
	}

	if err := c.hc.DoTimeout(req, resp, c.timeout); err != nil {
		return Response{}, fmt.Errorf("cannot %s %s: %w", method, path, err)
	}
	return Response{
		Status:   resp.StatusCode(),
		Body:     bytes.Clone(resp.Body()),
		Replayed: string(resp.Header.Peek("Idempotent-Replayed")) == "true",
	}, nil
}

// Expect sends a request without idempotency key and returns an error
// naming what unless the answer has the wanted status.
func (c *Client) Expect(method, path, token string, body []byte, status int, what string) (Response, error) {
	r, err := c.Do(method, path, token, "", body)
	return expect(r, err, status, what)
}

// expect returns an error unless the response has the wanted status.
func expect(r Response, err error, status int, what string) (Response, error) {
	if err != nil {
		return r, fmt.Errorf("cannot %s: %w", what, err)
	}
	if r.Status != status {
		return r, fmt.Errorf("cannot %s: status %d, want %d: %.300s", what, r.Status, status, r.Body)
	}
	return r, nil
}

// appendJSONString appends s as a JSON string. Identifiers of the load test
// are ASCII without quotes, but escape anyway so a surprise stays valid JSON.
func appendJSONString(b []byte, s string) []byte {
	return strconv.AppendQuote(b, s)
}

// RedemptionBody returns the request body of a redemption.
func RedemptionBody(qr string, op *Op) []byte {
	b := make([]byte, 0, 128+len(op.Lines)*80)
	b = append(b, `{"qr":`...)
	b = appendJSONString(b, qr)
	if op.Kind == KindRedeemAmount {
		b = append(b, `,"amount":`...)
		b = strconv.AppendInt(b, int64(op.Amount), 10)
		return append(b, '}')
	}
	if op.Partial {
		b = append(b, `,"partial":true`...)
	}
	b = append(b, `,"lines":[`...)
	for i, l := range op.Lines {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"sku":`...)
		b = appendJSONString(b, l.SKU)
		b = append(b, `,"category":`...)
		b = appendJSONString(b, l.Category)
		b = append(b, `,"amount":`...)
		b = strconv.AppendInt(b, int64(l.Amount), 10)
		b = append(b, '}')
	}
	return append(b, "]}"...)
}
