package loadtest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fastjson"

	"azyq/domain"
)

// Set-up limits.
const (
	// issuanceChunkMax is how many families go into one issuance request:
	// well under the contract's 100,000 and its 16 MiB body limit.
	issuanceChunkMax = 5000
	// qrSafety is how long before its expiry a pooled token is dropped, so
	// a redemption never races the token's end.
	qrSafety = 5 * time.Second
)

// Population is what the set-up created: shops, their terminals and
// active vouchers. Indices into these slices are what Op refers to.
type Population struct {
	Stores    []Store
	Terminals []Terminal
	Vouchers  []Voucher
}

// Terminal is a POS terminal and its key.
type Terminal struct {
	ID    string
	Store int // index into Population.Stores
	Key   string
}

// Voucher is an issued and activated voucher.
type Voucher struct {
	ID   string
	Face domain.Tiyn
}

// parallel runs f(0..n-1) on up to workers goroutines and returns the first
// error; after an error the remaining indices are skipped.
func parallel(ctx context.Context, n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range min(workers, max(n, 1)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n))
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// setup creates the population through the API and opens the books.
func (r *run) setup(ctx context.Context) error {
	cfg := r.cfg
	pop := &r.pop
	pop.Stores = Stores(cfg.Seed, r.id, cfg.Stores)

	// Shops and their terminals.
	err := parallel(ctx, len(pop.Stores), cfg.SetupWorkers, func(i int) error {
		s := pop.Stores[i]
		body := fmt.Appendf(nil, `{"name":%q,"bin":%q,"city":%q,"bank_bic":%q,"iban":%q,"discount_bp":%d}`,
			s.Name, s.BIN, s.City, s.BIC, s.IBAN, s.DiscountBP)
		_, err := r.client.Expect("PUT", "/v1/stores/"+s.ID, cfg.AdminToken, body,
			200, "create store "+s.ID)
		return err
	})
	if err != nil {
		return err
	}
	pop.Terminals = make([]Terminal, cfg.Stores*cfg.TerminalsPerStore)
	err = parallel(ctx, len(pop.Terminals), cfg.SetupWorkers, func(i int) error {
		t := Terminal{ID: fmt.Sprintf("%s-pos-%05d", r.id, i), Store: i / cfg.TerminalsPerStore}
		body := fmt.Appendf(nil, `{"terminal_id":%q}`, t.ID)
		path := "/v1/stores/" + pop.Stores[t.Store].ID + "/terminals"
		resp, err := r.client.Expect("POST", path, cfg.AdminToken, body, 201, "create terminal "+t.ID)
		if err != nil {
			return err
		}
		t.Key = string(fastjson.GetBytes(resp.Body, "api_key"))
		if t.Key == "" {
			return fmt.Errorf("cannot create terminal %s: no api_key in %.200s", t.ID, resp.Body)
		}
		pop.Terminals[i] = t
		return nil
	})
	if err != nil {
		return err
	}

	// Vouchers for the current month, issued in chunks.
	fams := Families(cfg.Seed, r.id, cfg.Vouchers)
	month := domain.MonthOf(cfg.Now(), r.loc).String()
	pop.Vouchers = make([]Voucher, len(fams))
	chunks := (len(fams) + issuanceChunkMax - 1) / issuanceChunkMax
	err = parallel(ctx, chunks, 2, func(c int) error {
		lo := c * issuanceChunkMax
		hi := min(lo+issuanceChunkMax, len(fams))
		return r.issue(month, fams[lo:hi], pop.Vouchers[lo:hi])
	})
	if err != nil {
		return err
	}

	// Activation with consent, as the wallet does on the recipient's tap.
	err = parallel(ctx, len(pop.Vouchers), cfg.SetupWorkers, func(i int) error {
		id := pop.Vouchers[i].ID
		_, err := r.client.Expect("POST", "/v1/vouchers/"+id+"/activation",
			cfg.WalletToken, []byte(`{"consent":true}`), 200, "activate voucher "+id)
		return err
	})
	if err != nil {
		return err
	}

	// A first pool of QR tokens; the wallet goroutines refill it.
	r.pool = newQRPool(len(pop.Vouchers))
	return parallel(ctx, len(pop.Vouchers)*cfg.QRPerVoucher, cfg.SetupWorkers, func(i int) error {
		v := i % len(pop.Vouchers)
		tok, err := r.mint(v)
		if err != nil {
			return err
		}
		r.pool.put(v, tok)
		return nil
	})
}

// issue sends one issuance request and fills vouchers from its answer.
func (r *run) issue(month string, fams []Family, out []Voucher) error {
	body := make([]byte, 0, 64*len(fams))
	body = fmt.Appendf(body, `{"month":%q,"families":[`, month)
	for i, f := range fams {
		if i > 0 {
			body = append(body, ',')
		}
		body = fmt.Appendf(body, `{"family_id":%q,"members":%d,"city":%q}`, f.ID, f.Members, f.City)
	}
	body = append(body, "]}"...)

	resp, err := r.client.Expect("POST", "/v1/issuances", r.cfg.AdminToken, body,
		200, "issue vouchers for "+month)
	if err != nil {
		return err
	}
	v, err := fastjson.ParseBytes(resp.Body)
	if err != nil {
		return fmt.Errorf("cannot parse issuance answer: %w", err)
	}
	vs := v.GetArray("vouchers")
	if len(vs) != len(fams) {
		return fmt.Errorf("cannot issue vouchers: asked for %d families, got %d vouchers", len(fams), len(vs))
	}
	for i, jv := range vs {
		id := string(jv.GetStringBytes("voucher_id"))
		face := domain.Tiyn(jv.GetInt64("face_value"))
		if fam := string(jv.GetStringBytes("family_id")); fam != fams[i].ID {
			return fmt.Errorf("cannot issue vouchers: answer %d is for family %q, want %q", i, fam, fams[i].ID)
		}
		if !jv.GetBool("created") {
			return fmt.Errorf("cannot issue vouchers: family %q already had voucher %s", fams[i].ID, id)
		}
		out[i] = Voucher{ID: id, Face: face}
		r.books.Open(id, face)
	}
	return nil
}

// mint asks for a QR token of voucher v as the wallet does, timing it.
func (r *run) mint(v int) (qrToken, error) {
	start := r.cfg.Now()
	resp, err := r.client.Do("POST", "/v1/vouchers/"+r.pop.Vouchers[v].ID+"/qr", r.cfg.WalletToken, "", nil)
	end := r.cfg.Now()
	if r.rec != nil {
		r.rec.Record(KindQRMint, end, end.Sub(start), outcomeOf(resp, err, 201))
	}
	if _, err := expect(resp, err, 201, "mint a QR token for "+r.pop.Vouchers[v].ID); err != nil {
		return qrToken{}, err
	}
	qr := string(fastjson.GetBytes(resp.Body, "qr"))
	exp, perr := time.Parse(time.RFC3339Nano, string(fastjson.GetBytes(resp.Body, "expires_at")))
	if qr == "" || perr != nil {
		return qrToken{}, fmt.Errorf("cannot mint a QR token: answer %.200s", resp.Body)
	}
	return qrToken{qr: qr, usableUntil: exp.Add(-qrSafety)}, nil
}

// outcomeOf names a response's outcome for the recorder.
func outcomeOf(resp Response, err error, okStatus int) string {
	switch {
	case err != nil:
		return outcomeTransport
	case resp.Status == okStatus:
		return outcomeOK
	case resp.Status >= 500 && resp.Status != 503:
		return "http_5xx"
	}
	if code := resp.ErrorCode(); code != "" {
		return code
	}
	return "unexpected"
}

// qrToken is a minted token and the last moment the run will use it.
type qrToken struct {
	qr          string
	usableUntil time.Time
}

// qrPool keeps unused tokens per voucher. A declined redemption or a
// balance inquiry does not consume its token, so it goes back.
type qrPool struct {
	mu     sync.Mutex
	tokens [][]qrToken
}

func newQRPool(vouchers int) *qrPool {
	return &qrPool{tokens: make([][]qrToken, vouchers)}
}

func (p *qrPool) put(v int, t qrToken) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tokens[v] = append(p.tokens[v], t)
}

// take returns a usable token of voucher v and how many remain, dropping
// tokens too close to expiry.
func (p *qrPool) take(v int, now time.Time) (qrToken, int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ts := p.tokens[v]
	for len(ts) > 0 {
		t := ts[len(ts)-1]
		ts = ts[:len(ts)-1]
		if now.Before(t.usableUntil) {
			p.tokens[v] = ts
			return t, len(ts), true
		}
	}
	p.tokens[v] = ts
	return qrToken{}, 0, false
}

// readBalances reads every voucher back with the admin token.
func (r *run) readBalances(ctx context.Context) (map[string][2]domain.Tiyn, error) {
	var mu sync.Mutex
	out := make(map[string][2]domain.Tiyn, len(r.pop.Vouchers))
	err := parallel(ctx, len(r.pop.Vouchers), r.cfg.SetupWorkers, func(i int) error {
		id := r.pop.Vouchers[i].ID
		resp, err := r.client.Expect("GET", "/v1/vouchers/"+id, r.cfg.AdminToken, nil,
			200, "read voucher "+id)
		if err != nil {
			return err
		}
		v, err := fastjson.ParseBytes(resp.Body)
		if err != nil {
			return fmt.Errorf("cannot parse voucher %s: %w", id, err)
		}
		mu.Lock()
		out[id] = [2]domain.Tiyn{domain.Tiyn(v.GetInt64("face_value")), domain.Tiyn(v.GetInt64("balance"))}
		mu.Unlock()
		return nil
	})
	return out, err
}
