package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// responseMax bounds what the client reads of one answer. The largest the
// gateway sends is an issuance answer of 100,000 vouchers, about 12 MiB.
const responseMax = 64 << 20

// client calls the gateway's API with a bearer token.
type client struct {
	base  string
	token string
	http  *http.Client
}

// client returns an API client for the global flags.
func (e *env) client() *client {
	return &client{base: e.addr, token: e.token, http: &http.Client{Timeout: e.timeout}}
}

// apiError is an error answer of the gateway: its status and the error
// object of the contract.
type apiError struct {
	Status    int
	Code      string `json:"code"`
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
	// RetryAfter is the Retry-After header of a 429 or 503, zero if absent.
	RetryAfter time.Duration
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
	if e.RequestID != "" {
		s += " (request " + e.RequestID + ")"
	}
	return s
}

// retryable reports whether the same request may succeed later: the
// gateway is starting, recovering, shutting down or overloaded.
func (e *apiError) retryable() bool {
	return e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests
}

// do sends a request with a JSON body (nil for none) and returns the body of
// a 2xx answer. Any other answer is an *apiError; a failure to talk to the
// gateway at all is another error.
func (c *client) do(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("cannot build request %s %q (--addr): %w", method, c.base+path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the gateway at %q (--addr): %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, responseMax+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read the answer to %s %s: %w", method, path, err)
	}
	if len(data) > responseMax {
		return nil, fmt.Errorf("cannot read the answer to %s %s: longer than %d bytes", method, path, responseMax)
	}
	if resp.StatusCode/100 == 2 {
		return data, nil
	}

	ae := &apiError{Status: resp.StatusCode}
	var wrapper struct {
		Error *apiError `json:"error"`
	}
	wrapper.Error = ae
	if json.Unmarshal(data, &wrapper) != nil || ae.Code == "" {
		ae.Code = "unexpected_answer"
		ae.Message = fmt.Sprintf("%s %s answered %q", method, path, truncate(data, 200))
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		ae.RetryAfter = time.Duration(s) * time.Second
	}
	return nil, ae
}

// asAPIError returns err as an *apiError, or nil.
func asAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	return nil
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
