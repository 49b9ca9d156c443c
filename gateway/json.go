package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"azyq/domain"
)

// Request bodies are decoded with fastjson and then walked field by field:
// unknown fields, duplicate fields, wrong types and trailing data are
// rejected, and integers must be written as integers (no fraction, no
// exponent, no sign other than '-', no leading zero). fastjson alone is
// lenient (it reads NaN, 1e3 and raw control characters); checkJSON closes
// that gap: a body of plain ASCII without escapes can only be lenient in
// its numbers, which parseInt checks, so only other bodies pay for the full
// grammar check of encoding/json.

// jsonError is a decoding failure; its message is for the client.
type jsonError struct{ msg string }

func (e *jsonError) Error() string { return e.msg }

func badJSON(format string, args ...any) error {
	return &jsonError{fmt.Sprintf(format, args...)}
}

var errNotObject = &jsonError{"the body must be one JSON object"}

// parseBody parses a request body that must be one JSON object.
func parseBody(p *fastjson.Parser, body []byte) (*fastjson.Object, error) {
	if needsFullCheck(body) && !json.Valid(body) {
		return nil, &jsonError{"the body is not valid JSON"}
	}
	v, err := p.ParseBytes(body)
	if err != nil {
		return nil, &jsonError{"the body is not valid JSON"}
	}
	o, err := v.Object()
	if err != nil {
		return nil, errNotObject
	}
	return o, nil
}

// needsFullCheck reports whether body has bytes that fastjson would accept
// more leniently than the JSON grammar: escapes, control characters or
// non-ASCII text.
func needsFullCheck(body []byte) bool {
	for _, c := range body {
		if c < 0x20 && c != ' ' && c != '\t' && c != '\n' && c != '\r' || c >= 0x80 || c == '\\' {
			return true
		}
	}
	return false
}

// fieldSet tracks the fields seen in one object, to reject duplicates.
type fieldSet uint32

func (s *fieldSet) see(i int, key []byte) error {
	if *s&(1<<i) != 0 {
		return badJSON("field %q appears twice", key)
	}
	*s |= 1 << i
	return nil
}

func (s fieldSet) has(i int) bool { return s&(1<<i) != 0 }

// fieldIndex returns the position of key in names, or -1.
func fieldIndex(names []string, key []byte) int {
	for i, n := range names {
		if string(key) == n {
			return i
		}
	}
	return -1
}

// walk calls fn for every field of o, rejecting unknown and duplicate
// fields; fn gets the field's position in names.
func walk(o *fastjson.Object, names []string, fn func(i int, v *fastjson.Value) error) (fieldSet, error) {
	var seen fieldSet
	var err error
	o.Visit(func(key []byte, v *fastjson.Value) {
		if err != nil {
			return
		}
		i := fieldIndex(names, key)
		if i < 0 {
			err = badJSON("unknown field %q", key)
			return
		}
		if err = seen.see(i, key); err != nil {
			return
		}
		err = fn(i, v)
	})
	return seen, err
}

// parseInt reads a JSON integer strictly.
func parseInt(v *fastjson.Value, field string) (int64, error) {
	if v.Type() != fastjson.TypeNumber {
		return 0, badJSON("%s must be an integer, not %s", field, v.Type())
	}
	var scratch [32]byte
	raw := v.MarshalTo(scratch[:0])
	digits := raw
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || len(digits) > 18 || digits[0] == '0' && len(digits) > 1 {
		return 0, badJSON("%s must be an integer of at most 18 digits", field)
	}
	// At most 18 digits cannot overflow an int64.
	var n int64
	for _, d := range digits {
		if d < '0' || d > '9' {
			return 0, badJSON("%s must be an integer", field)
		}
		n = n*10 + int64(d-'0')
	}
	if len(digits) < len(raw) {
		n = -n
	}
	return n, nil
}

// parseAmount reads an amount in tiyn: an integer in 0..10^15.
func parseAmount(v *fastjson.Value, field string) (domain.Tiyn, error) {
	n, err := parseInt(v, field)
	if err != nil {
		return 0, err
	}
	if !domain.ValidAmount(n) {
		return 0, badJSON("%s %d must be 0-%d tiyn", field, n, int64(domain.AmountMax))
	}
	return domain.Tiyn(n), nil
}

// parseStringBytes reads a JSON string; the bytes are valid until the
// parser is reused.
func parseStringBytes(v *fastjson.Value, field string) ([]byte, error) {
	if v.Type() != fastjson.TypeString {
		return nil, badJSON("%s must be a string, not %s", field, v.Type())
	}
	b, _ := v.StringBytes()
	return b, nil
}

// parseText reads a free-text string of at most max bytes of valid UTF-8
// without control characters.
func parseText(v *fastjson.Value, field string, max int) (string, error) {
	b, err := parseStringBytes(v, field)
	if err != nil {
		return "", err
	}
	if len(b) > max {
		return "", badJSON("%s must be at most %d bytes", field, max)
	}
	if !utf8.Valid(b) || bytes.ContainsFunc(b, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", badJSON("%s must be UTF-8 text without control characters", field)
	}
	return string(b), nil
}

// parseBool reads a JSON boolean.
func parseBool(v *fastjson.Value, field string) (bool, error) {
	switch v.Type() {
	case fastjson.TypeTrue:
		return true, nil
	case fastjson.TypeFalse:
		return false, nil
	}
	return false, badJSON("%s must be true or false, not %s", field, v.Type())
}

// emptyOrEmptyObject reports whether a body documented as empty is empty
// or "{}".
func emptyOrEmptyObject(p *fastjson.Parser, body []byte) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	o, err := parseBody(p, body)
	if err != nil {
		return err
	}
	if o.Len() != 0 {
		var first []byte
		o.Visit(func(k []byte, _ *fastjson.Value) {
			if first == nil {
				first = k
			}
		})
		return badJSON("unknown field %q: this endpoint takes no body or {}", first)
	}
	return nil
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, `\u00`...)
			b = append(b, hexDigits[c>>4], hexDigits[c&15])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendKey appends ,"key": (or "key": at the start of an object).
func appendKey(b []byte, key string) []byte {
	if n := len(b); n > 0 && b[n-1] != '{' && b[n-1] != '[' {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, key...)
	return append(b, '"', ':')
}

func appendInt(b []byte, key string, n int64) []byte {
	return strconv.AppendInt(appendKey(b, key), n, 10)
}

func appendStr(b []byte, key, s string) []byte {
	return appendString(appendKey(b, key), s)
}

func appendBool(b []byte, key string, v bool) []byte {
	return strconv.AppendBool(appendKey(b, key), v)
}

// appendTime appends an RFC 3339 time in loc, or null for the zero time.
func appendTime(b []byte, key string, t time.Time, loc *time.Location) []byte {
	b = appendKey(b, key)
	if t.IsZero() {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = t.In(loc).AppendFormat(b, time.RFC3339)
	return append(b, '"')
}
