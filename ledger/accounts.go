package ledger

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"azyq/domain"
)

// Named accounts of the double-entry books. Every voucher is an account too;
// its balance is the voucher's balance. A posting moves an amount from one
// account to another, so everything always sums to zero.
const (
	AccountProgramme = "programme" // pays face values out, takes refunds of expired vouchers
	AccountLapsed    = "lapsed"    // remainders of vouchers whose month ended
)

// AccountStore names the payable account of a shop.
func AccountStore(storeID string) string { return "store/" + storeID }

// AccountBank names the clearing account of a bank.
func AccountBank(bic string) string { return "bank/" + bic }

// Posting moves Amount from the From account to the To account.
type Posting struct {
	From, To string
	Amount   domain.Tiyn
}

// accounts holds the named accounts in memory. Each is an atomic counter
// updated after the batch that posts to it has synced; on disk each is a
// key merged by addition (accountMerger), so concurrent postings to one
// account need no lock.
type accounts struct {
	mu sync.Mutex
	m  atomic.Pointer[map[string]*atomic.Int64]
}

func (a *accounts) init() { a.m.Store(&map[string]*atomic.Int64{}) }

// get returns the account's counter, creating it if needed.
func (a *accounts) get(name string) *atomic.Int64 {
	if c, ok := (*a.m.Load())[name]; ok {
		return c
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	old := *a.m.Load()
	if c, ok := old[name]; ok {
		return c
	}
	grown := make(map[string]*atomic.Int64, len(old)+1)
	for k, v := range old {
		grown[k] = v
	}
	c := new(atomic.Int64)
	grown[name] = c
	a.m.Store(&grown)
	return c
}

// snapshot returns every named account's balance.
func (a *accounts) snapshot() map[string]domain.Tiyn {
	m := *a.m.Load()
	out := make(map[string]domain.Tiyn, len(m))
	for k, v := range m {
		out[k] = domain.Tiyn(v.Load())
	}
	return out
}

// postAccount adds a merge of delta to an account into b.
func postAccount(b *pebble.Batch, name string, delta domain.Tiyn) {
	postAccountKey(b, accountKey(name), delta)
}

// postAccountKey is postAccount with the account's key already built.
func postAccountKey(b *pebble.Batch, key []byte, delta domain.Tiyn) {
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], uint64(delta))
	if err := b.Merge(key, v[:], nil); err != nil {
		panic(fmt.Sprintf("BUG: cannot merge into batch: %v", err))
	}
}

// applyPosting updates memory after the posting's batch has synced.
func (a *accounts) add(name string, delta domain.Tiyn) { a.get(name).Add(int64(delta)) }

// accountMerger adds little-endian int64 operands. Its name is stored by
// Pebble and must never change.
var accountMerger = &pebble.Merger{
	Name: "azyq.account.sum.v1",
	Merge: func(key, value []byte) (pebble.ValueMerger, error) {
		s := &sumMerger{}
		return s, s.add(value)
	},
}

type sumMerger struct{ sum int64 }

func (s *sumMerger) add(v []byte) error {
	n, err := decodeInt64(v)
	if err != nil {
		return err
	}
	s.sum += n
	return nil
}

func (s *sumMerger) MergeNewer(v []byte) error { return s.add(v) }
func (s *sumMerger) MergeOlder(v []byte) error { return s.add(v) }

func (s *sumMerger) Finish(bool) ([]byte, io.Closer, error) {
	return encodeInt64(s.sum), nil, nil
}

// Books is a snapshot of the double-entry books.
type Books struct {
	// Accounts holds every named account by name.
	Accounts map[string]domain.Tiyn
	// Vouchers is the sum of all voucher balances.
	Vouchers domain.Tiyn
	// Issued, Spent and Lapsed sum the vouchers' face values, net spending
	// and lapsed remainders.
	Issued, Spent, Lapsed domain.Tiyn
	// VoucherCount counts vouchers.
	VoucherCount int
}

// Sum returns the sum of all accounts, vouchers included; balanced books sum
// to zero.
func (b *Books) Sum() domain.Tiyn {
	s := b.Vouchers
	for _, v := range b.Accounts {
		s += v
	}
	return s
}

// Books returns a snapshot of the books. Each voucher is read under its
// lock, but the snapshot as a whole is exact only while no money moves
// (in tests, the offline audit, or at a cut-off's quiet instant).
func (l *Ledger) Books() Books {
	b := Books{Accounts: l.accounts.snapshot()}
	n := l.vouchers.len()
	for id := VoucherID(1); int(id) <= n; id++ {
		v := l.vouchers.get(id)
		v.mu.Lock()
		b.Vouchers += v.balance
		b.Issued += v.face
		b.Spent += v.spent
		b.Lapsed += v.lapsed
		v.mu.Unlock()
	}
	b.VoucherCount = n
	return b
}

// CheckBooks verifies the invariants that hold at a quiet instant: every
// voucher's face value = balance + spent + lapsed with no negative part, and
// all accounts sum to zero. It returns every violation it finds.
func (l *Ledger) CheckBooks() error {
	var problems []string
	n := l.vouchers.len()
	for id := VoucherID(1); int(id) <= n; id++ {
		v := l.vouchers.get(id)
		v.mu.Lock()
		if v.balance < 0 || v.spent < 0 || v.face != v.balance+v.spent+v.lapsed {
			problems = append(problems, fmt.Sprintf("voucher %s: face %d, balance %d, spent %d, lapsed %d",
				id, v.face, v.balance, v.spent, v.lapsed))
		}
		v.mu.Unlock()
	}
	b := l.Books()
	if s := b.Sum(); s != 0 {
		names := make([]string, 0, len(b.Accounts))
		for k := range b.Accounts {
			names = append(names, k)
		}
		sort.Strings(names)
		var parts []string
		for _, k := range names {
			parts = append(parts, fmt.Sprintf("%s=%d", k, b.Accounts[k]))
		}
		problems = append(problems, fmt.Sprintf("accounts sum to %d, not zero: vouchers=%d %s",
			s, b.Vouchers, strings.Join(parts, " ")))
	}
	if len(problems) > 0 {
		return fmt.Errorf("books do not balance: %s", strings.Join(problems, "; "))
	}
	return nil
}
