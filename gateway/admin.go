package gateway

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"strconv"

	"github.com/valyala/fastjson"

	"azyq/domain"
	"azyq/ledger"
)

// appendVoucher renders a voucher as the contract shows it.
func (s *Server) appendVoucher(b []byte, v *ledger.Voucher) []byte {
	b = append(b, `{"voucher_id":"`...)
	b = v.ID.AppendText(b)
	b = append(b, '"')
	b = appendStr(b, "family_id", v.FamilyID)
	b = appendStr(b, "month", v.Month.String())
	b = appendInt(b, "members", int64(v.Members))
	b = appendStr(b, "city", v.City)
	b = appendInt(b, "face_value", int64(v.FaceValue))
	b = appendInt(b, "balance", int64(v.Balance))
	b = appendStr(b, "status", v.Status.String())
	b = appendTime(b, "activated_at", v.ActivatedAt, s.prog.Location)
	b = appendTime(b, "expires_at", v.ExpiresAt, s.prog.Location)
	return append(b, '}')
}

// voucherParam parses the {voucher_id} of the path; an id that cannot
// exist is 404.
func (c *call) voucherParam() (ledger.VoucherID, bool) {
	id, err := ledger.ParseVoucherID(string(c.params[0]))
	if err != nil {
		c.failf(codeNotFound, "voucher %q does not exist", c.params[0])
		return 0, false
	}
	return id, true
}

// serveVoucher is GET /v1/vouchers/{voucher_id}.
func (c *call) serveVoucher() {
	id, ok := c.voucherParam()
	if !ok {
		return
	}
	v, err := c.s.led.Voucher(id)
	if err != nil {
		c.failErr(err)
		return
	}
	c.buf = c.s.appendVoucher(c.buf[:0], &v)
	c.reply(200, c.buf)
}

var activationFields = []string{"consent"}

// serveActivation is POST /v1/vouchers/{voucher_id}/activation.
func (c *call) serveActivation() {
	id, ok := c.voucherParam()
	if !ok {
		return
	}
	consent := false
	o, err := parseBody(&c.parser, c.ctx.PostBody())
	if err == nil {
		_, err = walk(o, activationFields, func(_ int, v *fastjson.Value) error {
			var err error
			consent, err = parseBool(v, "consent")
			return err
		})
	}
	if err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	if !consent {
		c.fail(codeConsentRequired, `activation needs the recipient's consent: {"consent": true}`)
		return
	}
	v, err := c.s.led.Activate(id)
	if err != nil {
		c.failErr(err)
		return
	}
	c.buf = c.s.appendVoucher(c.buf[:0], &v)
	c.reply(200, c.buf)
}

// serveQR is POST /v1/vouchers/{voucher_id}/qr.
func (c *call) serveQR() {
	id, ok := c.voucherParam()
	if !ok {
		return
	}
	if err := emptyOrEmptyObject(&c.parser, c.ctx.PostBody()); err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	v, err := c.s.led.Voucher(id)
	if err != nil {
		c.failErr(err)
		return
	}
	switch v.Status {
	case ledger.StatusIssued:
		c.failf(codeVoucherNotActive, "voucher %s is not activated; activate it with the recipient's consent first", id)
		return
	case ledger.StatusExpired:
		c.failf(codeVoucherExpired, "voucher %s of %s has expired", id, v.Month)
		return
	}
	tok, exp, err := c.s.qr.Mint(id)
	if err != nil {
		c.failErr(err)
		return
	}
	c.s.met.qrMinted.Inc()
	b := appendStr(append(c.buf[:0], '{'), "qr", tok)
	b = appendTime(b, "expires_at", exp, c.s.prog.Location)
	c.buf = append(b, '}')
	c.reply(201, c.buf)
}

var (
	issuanceFields = []string{"month", "families"}
	familyFields   = []string{"family_id", "members", "city"}
)

// serveIssuance is POST /v1/issuances.
func (c *call) serveIssuance() {
	month, families, err := c.decodeIssuance(c.ctx.PostBody())
	if err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	out, err := c.s.led.IssueBy(c.actor(), month, families)
	if err != nil {
		c.failErr(err)
		return
	}
	created := 0
	for i := range out {
		if out[i].Created {
			created++
		}
	}
	b := appendStr(append(c.buf[:0], '{'), "month", month.String())
	b = appendInt(b, "created", int64(created))
	b = appendInt(b, "existing", int64(len(out)-created))
	b = append(b, `,"vouchers":[`...)
	for i := range out {
		v := &out[i].Voucher
		if i > 0 {
			b = append(b, ',')
		}
		b = appendStr(append(b, '{'), "family_id", v.FamilyID)
		b = append(b, `,"voucher_id":"`...)
		b = v.ID.AppendText(b)
		b = append(b, '"')
		b = appendInt(b, "face_value", int64(v.FaceValue))
		b = appendStr(b, "status", v.Status.String())
		b = appendBool(b, "created", out[i].Created)
		b = append(b, '}')
	}
	c.buf = append(b, "]}"...)
	c.reply(200, c.buf)
}

func (c *call) decodeIssuance(body []byte) (domain.Month, []ledger.Family, error) {
	o, err := parseBody(&c.parser, body)
	if err != nil {
		return 0, nil, err
	}
	var month domain.Month
	var families []ledger.Family
	seen, err := walk(o, issuanceFields, func(i int, v *fastjson.Value) error {
		if i == 0 {
			s, err := parseStringBytes(v, "month")
			if err != nil {
				return err
			}
			if month, err = domain.ParseMonth(string(s)); err != nil {
				return badJSON("month %q must be YYYY-MM", s)
			}
			return nil
		}
		arr, err := v.Array()
		if err != nil {
			return badJSON("families must be an array, not %s", v.Type())
		}
		if len(arr) == 0 || len(arr) > ledger.IssuanceMax {
			return badJSON("families must hold 1-%d families, got %d", ledger.IssuanceMax, len(arr))
		}
		families = make([]ledger.Family, len(arr))
		for j, fv := range arr {
			if err := decodeFamily(fv, &families[j]); err != nil {
				return badJSON("families[%d]: %v", j, err)
			}
		}
		return nil
	})
	switch {
	case err != nil:
		return 0, nil, err
	case !seen.has(0) || !seen.has(1):
		return 0, nil, badJSON("month and families are required")
	}
	return month, families, nil
}

func decodeFamily(v *fastjson.Value, f *ledger.Family) error {
	o, err := v.Object()
	if err != nil {
		return errNotObjectField
	}
	seen, err := walk(o, familyFields, func(i int, v *fastjson.Value) error {
		var err error
		switch i {
		case 0:
			f.FamilyID, err = parseText(v, "family_id", ledger.IDMax)
			if err == nil && !ledger.ValidID(f.FamilyID) {
				err = badJSON("family_id %q must be 1-64 characters of A-Z a-z 0-9 _ -", f.FamilyID)
			}
		case 1:
			var n int64
			n, err = parseInt(v, "members")
			if err == nil && (n < 1 || n > ledger.MembersMax) {
				err = badJSON("members %d must be 1-%d", n, ledger.MembersMax)
			}
			f.Members = int(n)
		case 2:
			f.City, err = parseText(v, "city", ledger.CityMax)
		}
		return err
	})
	if err != nil {
		return err
	}
	if !seen.has(0) || !seen.has(1) {
		return badJSON("family_id and members are required")
	}
	return nil
}

var errNotObjectField = &jsonError{"must be an object"}

var storeFields = []string{"name", "bin", "city", "bank_bic", "iban", "discount_bp", "store_id"}

// serveStorePut is PUT /v1/stores/{store_id}.
func (c *call) serveStorePut() {
	st := ledger.Store{ID: string(c.params[0])}
	o, err := parseBody(&c.parser, c.ctx.PostBody())
	if err == nil {
		var seen fieldSet
		seen, err = walk(o, storeFields, func(i int, v *fastjson.Value) error {
			var err error
			switch i {
			case 0:
				st.Name, err = parseText(v, "name", ledger.NameMax)
			case 1:
				st.BIN, err = parseText(v, "bin", 12)
			case 2:
				st.City, err = parseText(v, "city", ledger.CityMax)
			case 3:
				st.BankBIC, err = parseText(v, "bank_bic", 11)
			case 4:
				st.IBAN, err = parseText(v, "iban", 20)
			case 5:
				st.DiscountBP, err = parseInt(v, "discount_bp")
			case 6:
				var id []byte
				if id, err = parseStringBytes(v, "store_id"); err == nil && string(id) != st.ID {
					err = badJSON("store_id %q differs from the path's %q", id, st.ID)
				}
			}
			return err
		})
		if err == nil {
			for i, f := range storeFields[:6] {
				if i != 2 && !seen.has(i) {
					err = badJSON("%s is required (name, bin, bank_bic, iban, discount_bp)", f)
					break
				}
			}
		}
	}
	if err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	st, err = c.s.led.PutStoreBy(c.actor(), st)
	if err != nil {
		c.failErr(err)
		return
	}
	c.buf = appendStore(c.buf[:0], &st)
	c.reply(200, c.buf)
}

func appendStore(b []byte, st *ledger.Store) []byte {
	b = appendStr(append(b, '{'), "store_id", st.ID)
	b = appendStr(b, "name", st.Name)
	b = appendStr(b, "bin", st.BIN)
	b = appendStr(b, "city", st.City)
	b = appendStr(b, "bank_bic", st.BankBIC)
	b = appendStr(b, "iban", st.IBAN)
	b = appendInt(b, "discount_bp", st.DiscountBP)
	return append(b, '}')
}

var terminalFields = []string{"terminal_id"}

// serveTerminalPost is POST /v1/stores/{store_id}/terminals. The API key
// is shown once; the ledger keeps only its SHA-256.
func (c *call) serveTerminalPost() {
	var id string
	o, err := parseBody(&c.parser, c.ctx.PostBody())
	if err == nil {
		var seen fieldSet
		seen, err = walk(o, terminalFields, func(_ int, v *fastjson.Value) error {
			var err error
			id, err = parseText(v, "terminal_id", ledger.IDMax)
			return err
		})
		if err == nil && !seen.has(0) {
			err = badJSON("terminal_id is required")
		}
	}
	if err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}
	key, err := NewTerminalKey()
	if err != nil {
		c.failErr(err)
		return
	}
	t, err := c.s.led.AddTerminalBy(c.actor(), string(c.params[0]), id, sha256.Sum256([]byte(key)))
	if err != nil {
		c.failErr(err)
		return
	}
	b := appendStr(append(c.buf[:0], '{'), "terminal_id", t.ID)
	b = appendStr(b, "store_id", t.StoreID)
	b = appendStr(b, "api_key", key)
	c.buf = append(b, '}')
	c.reply(201, c.buf)
}

// NewTerminalKey returns a new terminal API key: 240 random bits in
// Crockford base32, prefixed so that a leaked key is recognisable.
func NewTerminalKey() (string, error) {
	var raw [30]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	b := append(make([]byte, 0, 4+48), "azk_"...)
	for i := 0; i < len(raw); i += 5 {
		var v uint64
		for _, x := range raw[i : i+5] {
			v = v<<8 | uint64(x)
		}
		b = appendBase32(b, v, 8)
	}
	return string(b), nil
}

// serveCatalogue is GET /v1/catalogue. Its ETag covers the catalogue's
// version and the shop's discount, the two things the body depends on.
func (c *call) serveCatalogue() {
	bp := int64(-1)
	if c.who == roleTerminal {
		st, ok := c.s.led.Store(c.terminal.StoreID)
		if !ok {
			c.failf(codeForbidden, "the terminal's shop %q does not exist", c.terminal.StoreID)
			return
		}
		bp = st.DiscountBP
	}
	etag := append(c.buf[:0], '"')
	etag = append(etag, c.s.prog.CatalogueVersion()...)
	if bp >= 0 {
		etag = strconv.AppendInt(append(etag, '-'), bp, 10)
	}
	etag = append(etag, '"')
	c.ctx.Response.Header.SetBytesV("ETag", etag)
	c.ctx.Response.Header.Set("Cache-Control", "no-cache")
	if etagMatches(c.ctx.Request.Header.Peek("If-None-Match"), etag) {
		c.status = 304
		c.ctx.SetStatusCode(304)
		return
	}

	b := appendStr(append(c.buf[:0], '{'), "version", c.s.prog.CatalogueVersion())
	b = append(b, `,"categories":[`...)
	for i, cat := range c.s.prog.Catalogue {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendStr(append(b, '{'), "code", cat.Code)
		b = appendStr(b, "name", cat.Name)
		b = append(b, '}')
	}
	b = append(b, ']')
	if bp >= 0 {
		b = appendInt(b, "discount_bp", bp)
	}
	c.buf = append(b, '}')
	c.reply(200, c.buf)
}

// etagMatches implements If-None-Match: a list of entity tags, weak ones
// compared by their opaque part, or "*".
func etagMatches(h, etag []byte) bool {
	for len(h) > 0 {
		var tag []byte
		if i := bytes.IndexByte(h, ','); i >= 0 {
			tag, h = h[:i], h[i+1:]
		} else {
			tag, h = h, nil
		}
		tag = bytes.TrimSpace(tag)
		tag = bytes.TrimPrefix(tag, []byte("W/"))
		if string(tag) == "*" || bytes.Equal(tag, etag) {
			return true
		}
	}
	return false
}
