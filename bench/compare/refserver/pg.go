package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"azyq/domain"
)

// pgBackend keeps everything in PostgreSQL. The redemption is the design a
// payments team would write first and defend in review:
//
//  1. Look up the idempotency record; a hit is replayed without a
//     transaction.
//  2. BEGIN; SELECT the voucher FOR UPDATE, together with whether the
//     token was used and the next redemption number, in one round trip.
//  3. Decide in Go; then one pipelined batch: UPDATE the balance, INSERT
//     the redemption, the used token and the idempotency record (a decline
//     writes only the idempotency record).
//  4. COMMIT with synchronous_commit on: the answer leaves only after the
//     WAL is flushed. Concurrent commits share a flush (group commit), so
//     the pool is sized in tens of sessions, not in cores.
//
// A concurrent request with the same key loses the race on the
// idempotency primary key, rolls back and replays the winner's answer.
type pgBackend struct {
	pool *pgxpool.Pool
	prog *domain.Programme
}

const pgSchema = `
CREATE TABLE IF NOT EXISTS stores (id text PRIMARY KEY, name text, bin text, city text,
  bic text, iban text, discount_bp int);
CREATE TABLE IF NOT EXISTS terminals (id text PRIMARY KEY, store_id text REFERENCES stores,
  key_hash bytea NOT NULL);
CREATE SEQUENCE IF NOT EXISTS voucher_seq;
CREATE SEQUENCE IF NOT EXISTS redemption_seq;
CREATE TABLE IF NOT EXISTS vouchers (id text PRIMARY KEY, month text, family_id text, members int,
  city text, face_value bigint, balance bigint CHECK (balance >= 0), status text,
  activated_at timestamptz, expires_at timestamptz, UNIQUE (month, family_id));
CREATE TABLE IF NOT EXISTS redemptions (id text PRIMARY KEY, voucher_id text REFERENCES vouchers,
  store_id text, terminal_id text, requested bigint, approved bigint, balance bigint,
  created_at timestamptz);
CREATE TABLE IF NOT EXISTS used_tokens (token_id text PRIMARY KEY, redemption_id text,
  used_at timestamptz);
CREATE TABLE IF NOT EXISTS idempotency (terminal_id text, key text, req_hash text, status int,
  body bytea, created_at timestamptz, PRIMARY KEY (terminal_id, key));
`

func newPG(ctx context.Context, url string, conns int, prog *domain.Programme) (*pgBackend, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("cannot parse PostgreSQL URL (--pg): %w", err)
	}
	cfg.MaxConns = int32(conns)
	cfg.MinConns = int32(conns)
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to PostgreSQL: %w", err)
	}
	if _, err := pool.Exec(ctx, pgSchema); err != nil {
		return nil, fmt.Errorf("cannot create schema: %w", err)
	}
	return &pgBackend{pool: pool, prog: prog}, nil
}

func (b *pgBackend) putStore(ctx context.Context, s store) error {
	_, err := b.pool.Exec(ctx, `INSERT INTO stores VALUES ($1,$2,$3,$4,$5,$6,$7)
		ON CONFLICT (id) DO UPDATE SET name=$2, bin=$3, city=$4, bic=$5, iban=$6, discount_bp=$7`,
		s.ID, s.Name, s.BIN, s.City, s.BIC, s.IBAN, s.DiscountBP)
	return err
}

func (b *pgBackend) addTerminal(ctx context.Context, t terminal, keyHash []byte) (bool, error) {
	tag, err := b.pool.Exec(ctx, `INSERT INTO terminals VALUES ($1,$2,$3) ON CONFLICT DO NOTHING`,
		t.ID, t.Store, keyHash)
	return err == nil && tag.RowsAffected() == 0, err
}

func (b *pgBackend) issue(ctx context.Context, month domain.Month, fams []family) ([]issued, error) {
	face, _ := b.prog.FaceValue(month, 1)
	ids := make([]string, len(fams))
	members := make([]int32, len(fams))
	cities := make([]string, len(fams))
	for i, f := range fams {
		ids[i], members[i], cities[i] = f.ID, int32(f.Members), f.City
	}
	expires := b.prog.SpendUntil(month)

	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, `INSERT INTO vouchers
		SELECT 'P' || lpad(nextval('voucher_seq')::text, 9, '0'), $1, f, m, c, m * $2::bigint,
		  m * $2::bigint, 'issued', NULL, $3
		FROM unnest($4::text[], $5::int[], $6::text[]) AS t(f, m, c)
		ON CONFLICT (month, family_id) DO NOTHING RETURNING family_id`,
		month.String(), int64(face), expires, ids, members, cities)
	if err != nil {
		return nil, err
	}
	created := map[string]bool{}
	for rows.Next() {
		var f string
		if err := rows.Scan(&f); err != nil {
			return nil, err
		}
		created[f] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}

	rows, err = tx.Query(ctx, `SELECT family_id, id, face_value, status FROM vouchers
		WHERE month = $1 AND family_id = ANY($2)`, month.String(), ids)
	if err != nil {
		return nil, err
	}
	byFamily := map[string]issued{}
	for rows.Next() {
		var o issued
		if err := rows.Scan(&o.FamilyID, &o.VoucherID, &o.Face, &o.Status); err != nil {
			return nil, err
		}
		o.Created = created[o.FamilyID]
		byFamily[o.FamilyID] = o
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]issued, len(fams))
	for i, f := range fams {
		out[i] = byFamily[f.ID]
	}
	return out, tx.Commit(ctx)
}

const pgVoucherCols = `id, family_id, month, members, city, face_value, balance, status,
	coalesce(activated_at, 'epoch'), expires_at`

func scanVoucher(row pgx.Row) (voucher, bool, error) {
	var v voucher
	err := row.Scan(&v.ID, &v.FamilyID, &v.Month, &v.Members, &v.City, &v.Face, &v.Balance,
		&v.Status, &v.ActivatedAt, &v.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return v, false, nil
	}
	if v.ActivatedAt.Unix() == 0 {
		v.ActivatedAt = time.Time{}
	}
	return v, err == nil, err
}

func (b *pgBackend) activate(ctx context.Context, id string, now time.Time) (voucher, string, error) {
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
	}
	v, found, err = scanVoucher(b.pool.QueryRow(ctx, `UPDATE vouchers SET status = 'active',
		activated_at = coalesce(activated_at, $2) WHERE id = $1 RETURNING `+pgVoucherCols, id, now))
	if !found && err == nil {
		return v, "not_found", nil
	}
	return v, "", err
}

func (b *pgBackend) voucher(ctx context.Context, id string) (voucher, bool, error) {
	return scanVoucher(b.pool.QueryRow(ctx, `SELECT `+pgVoucherCols+` FROM vouchers WHERE id = $1`, id))
}

func (b *pgBackend) redeem(ctx context.Context, r *redemption) (answer, error) {
	// 1. A replay needs no transaction.
	if a, found, err := b.replay(ctx, r); found || err != nil {
		return a, err
	}

	// 2. Lock the voucher.
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return answer{}, err
	}
	defer tx.Rollback(ctx)
	var status string
	var balance, seq int64
	var expires time.Time
	var used bool
	err = tx.QueryRow(ctx, `SELECT status, balance, expires_at,
		  EXISTS (SELECT 1 FROM used_tokens WHERE token_id = $2), nextval('redemption_seq')
		FROM vouchers WHERE id = $1 FOR UPDATE`, r.VoucherID, r.TokenID).
		Scan(&status, &balance, &expires, &used, &seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return answerBody(r, "not_found", "", 0, 0), nil
	}
	if err != nil {
		return answer{}, err
	}

	// 3. Decide and write in one pipelined batch.
	approved, code := decide(r, status, balance, expires, used)
	id := fmt.Sprintf("RD%013d", seq)
	if code == "" {
		balance -= approved
	}
	a := answerBody(r, code, id, approved, balance)
	batch := &pgx.Batch{}
	if code == "" {
		batch.Queue(`UPDATE vouchers SET balance = $2 WHERE id = $1`, r.VoucherID, balance)
		batch.Queue(`INSERT INTO redemptions VALUES ($1,$2,$3,$4,$5,$6,$7,$8)`, id, r.VoucherID,
			r.Terminal.Store, r.Terminal.ID, r.Requested, approved, balance, r.Now)
		batch.Queue(`INSERT INTO used_tokens VALUES ($1,$2,$3)`, r.TokenID, id, r.Now)
	}
	batch.Queue(`INSERT INTO idempotency VALUES ($1,$2,$3,$4,$5,$6)`,
		r.Terminal.ID, r.Key, r.ReqHash, a.Status, a.Body, r.Now)
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "idempotency_pkey" {
			// Another request with this key won; answer as it did.
			tx.Rollback(ctx)
			a, _, err := b.replay(ctx, r)
			return a, err
		}
		return answer{}, err
	}

	// 4. Durable before the answer.
	return a, tx.Commit(ctx)
}

func (b *pgBackend) replay(ctx context.Context, r *redemption) (answer, bool, error) {
	var hash string
	var a answer
	err := b.pool.QueryRow(ctx, `SELECT req_hash, status, body FROM idempotency
		WHERE terminal_id = $1 AND key = $2`, r.Terminal.ID, r.Key).Scan(&hash, &a.Status, &a.Body)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, false, nil
	}
	if err != nil {
		return a, false, err
	}
	if hash != r.ReqHash {
		return answerBody(r, "idempotency_key_reused", "", 0, 0), true, nil
	}
	a.Replayed = true
	return a, true, nil
}
