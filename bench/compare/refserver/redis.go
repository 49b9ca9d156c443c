package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"azyq/domain"
)

// redisBackend keeps everything in one Redis with appendonly yes and
// appendfsync always, so a write is in the fsynced AOF before Redis
// answers. Redis runs one command at a time, so a Lua script is a
// transaction: the redemption script reads the idempotency record, the
// voucher and the used token, decides, and writes the balance, the
// redemption, the used token and the idempotency record, all in one round
// trip. Redis fsyncs once per event-loop iteration for every client served
// in it, which is its group commit; the client pool is sized for that.
//
// The idempotency record keeps the decision (code, redemption id, amounts,
// time), not the rendered body; the body is a pure function of the
// decision and the request, whose hash the record also keeps, so a replay
// is still byte for byte.
type redisBackend struct {
	rdb  *redis.Client
	prog *domain.Programme
}

func newRedis(ctx context.Context, addr string, conns int, prog *domain.Programme) (*redisBackend, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: conns, MinIdleConns: conns / 2})
	if err := rdb.Ping(ctx).Err(); err != nil {
		return nil, fmt.Errorf("cannot reach Redis at %s (--redis): %w", addr, err)
	}
	for _, s := range []*redis.Script{redeemScript, issueScript} {
		if err := s.Load(ctx, rdb).Err(); err != nil {
			return nil, fmt.Errorf("cannot load Lua script: %w", err)
		}
	}
	return &redisBackend{rdb: rdb, prog: prog}, nil
}

func (b *redisBackend) putStore(ctx context.Context, s store) error {
	return b.rdb.HSet(ctx, "store:"+s.ID, "name", s.Name, "bin", s.BIN, "city", s.City,
		"bic", s.BIC, "iban", s.IBAN, "discount_bp", s.DiscountBP).Err()
}

func (b *redisBackend) addTerminal(ctx context.Context, t terminal, keyHash []byte) (bool, error) {
	set, err := b.rdb.HSetNX(ctx, "term:"+t.ID, "store", t.Store).Result()
	if err != nil || !set {
		return !set, err
	}
	return false, b.rdb.HSet(ctx, "term:"+t.ID, "key_hash", keyHash).Err()
}

// issueScript issues one family's voucher for a month unless it has one.
// KEYS: family key, voucher sequence. ARGV: month, family, members, city,
// face value per member, expiry (unix seconds).
var issueScript = redis.NewScript(`
local id = redis.call('GET', KEYS[1])
if id then
  return {id, redis.call('HGET', 'v:' .. id, 'face'), 0}
end
id = string.format('R%09d', redis.call('INCR', KEYS[2]))
local face = tonumber(ARGV[3]) * tonumber(ARGV[5])
redis.call('HSET', 'v:' .. id, 'month', ARGV[1], 'family', ARGV[2], 'members', ARGV[3],
  'city', ARGV[4], 'face', face, 'balance', face, 'status', 'issued', 'expires', ARGV[6])
redis.call('SET', KEYS[1], id)
return {id, tostring(face), 1}
`)

func (b *redisBackend) issue(ctx context.Context, month domain.Month, fams []family) ([]issued, error) {
	face, _ := b.prog.FaceValue(month, 1)
	expires := b.prog.SpendUntil(month).Unix()
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(fams))
	for i, f := range fams {
		cmds[i] = issueScript.EvalSha(ctx, pipe, []string{"fam:" + month.String() + ":" + f.ID, "vseq"},
			month.String(), f.ID, f.Members, f.City, int64(face), expires)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("cannot issue vouchers: %w", err)
	}
	out := make([]issued, len(fams))
	for i, c := range cmds {
		res, err := c.Slice()
		if err != nil || len(res) != 3 {
			return nil, fmt.Errorf("cannot issue voucher for %q: %v", fams[i].ID, err)
		}
		faceV, _ := strconv.ParseInt(fmt.Sprint(res[1]), 10, 64)
		out[i] = issued{FamilyID: fams[i].ID, VoucherID: res[0].(string), Face: faceV,
			Status: "issued", Created: res[2].(int64) == 1}
	}
	return out, nil
}

func (b *redisBackend) voucher(ctx context.Context, id string) (voucher, bool, error) {
	m, err := b.rdb.HGetAll(ctx, "v:"+id).Result()
	if err != nil || len(m) == 0 {
		return voucher{}, false, err
	}
	num := func(k string) int64 { n, _ := strconv.ParseInt(m[k], 10, 64); return n }
	v := voucher{ID: id, FamilyID: m["family"], Month: m["month"], City: m["city"],
		Status: m["status"], Members: int(num("members")), Face: num("face"),
		Balance: num("balance"), ExpiresAt: time.Unix(num("expires"), 0)}
	if a := num("activated"); a > 0 {
		v.ActivatedAt = time.Unix(a, 0)
	}
	return v, true, nil
}

func (b *redisBackend) activate(ctx context.Context, id string, now time.Time) (voucher, string, error) {
	v, found, err := b.voucher(ctx, id)
	if err != nil || !found {
		return v, "not_found", err
	}
	m, _ := domain.ParseMonth(v.Month)
	switch {
	case now.Before(m.Start(b.prog.Location)):
		return v, "activation_window_not_open", nil
	case !now.Before(m.End(b.prog.Location)):
		return v, "activation_window_closed", nil
	case v.Status == "active":
		return v, "", nil
	}
	if err := b.rdb.HSet(ctx, "v:"+id, "status", "active", "activated", now.Unix()).Err(); err != nil {
		return v, "", err
	}
	v.Status, v.ActivatedAt = "active", time.Unix(now.Unix(), 0)
	return v, "", nil
}

// redeemScript is the whole redemption. KEYS: voucher, used token,
// idempotency record, redemption sequence. ARGV: request hash, requested
// amount, partial (1/0), now (unix seconds), store, terminal, created_at,
// token TTL and idempotency TTL in seconds, voucher id.
// It returns {fresh or replay, code, redemption id, approved, balance,
// created_at}.
var redeemScript = redis.NewScript(`
local rec = redis.call('HMGET', KEYS[3], 'h', 'code', 'rid', 'approved', 'balance', 'created')
if rec[1] then
  if rec[1] ~= ARGV[1] then return {'fresh', 'idempotency_key_reused', '', '0', '0', ''} end
  return {'replay', rec[2], rec[3], rec[4], rec[5], rec[6]}
end
local v = redis.call('HMGET', KEYS[1], 'status', 'balance', 'expires')
local code, rid, approved, balance = '', '', 0, 0
local req = tonumber(ARGV[2])
if not v[1] then
  code = 'not_found'
else
  balance = tonumber(v[2])
  if redis.call('EXISTS', KEYS[2]) == 1 then code = 'qr_used'
  elseif v[1] ~= 'active' then code = 'voucher_not_active'
  elseif tonumber(ARGV[4]) >= tonumber(v[3]) then code = 'voucher_expired'
  elseif balance >= req then approved = req
  elseif ARGV[3] == '1' and balance > 0 then approved = balance
  else code = 'insufficient_funds' end
end
if code == '' then
  balance = balance - approved
  redis.call('HSET', KEYS[1], 'balance', balance)
  rid = string.format('RD%013d', redis.call('INCR', KEYS[4]))
  redis.call('HSET', 'rd:' .. rid, 'voucher', ARGV[10], 'store', ARGV[5], 'terminal', ARGV[6],
    'requested', req, 'approved', approved, 'balance', balance, 'created', ARGV[7])
  redis.call('SET', KEYS[2], rid, 'EX', ARGV[8])
end
local a, bal = string.format('%d', approved), string.format('%d', balance)
redis.call('HSET', KEYS[3], 'h', ARGV[1], 'code', code, 'rid', rid, 'approved', a,
  'balance', bal, 'created', ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[9])
return {'fresh', code, rid, a, bal, ARGV[7]}
`)

func (b *redisBackend) redeem(ctx context.Context, r *redemption) (answer, error) {
	keys := []string{"v:" + r.VoucherID, "tok:" + r.TokenID,
		"idem:" + r.Terminal.ID + ":" + r.Key, "rseq"}
	partial := "0"
	if r.Partial {
		partial = "1"
	}
	res, err := redeemScript.EvalSha(ctx, b.rdb, keys, r.ReqHash, r.Requested, partial,
		r.Now.Unix(), r.Terminal.Store, r.Terminal.ID, r.Created,
		int64(usedTokenTTL/time.Second), int64(idempotencyKeep/time.Second), r.VoucherID).StringSlice()
	if err != nil {
		return answer{}, fmt.Errorf("cannot run the redemption script: %w", err)
	}
	if len(res) != 6 {
		return answer{}, errors.New("BUG: redemption script returned " + strconv.Itoa(len(res)) + " values")
	}
	approved, _ := strconv.ParseInt(res[3], 10, 64)
	balance, _ := strconv.ParseInt(res[4], 10, 64)
	if res[5] != "" {
		r.Created = res[5]
	}
	a := answerBody(r, res[1], res[2], approved, balance)
	a.Replayed = res[0] == "replay"
	return a, nil
}
