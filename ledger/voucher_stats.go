package ledger

import (
	"time"

	"azyq/domain"
)

// VoucherStats is a census of the vouchers in memory at one instant.
type VoucherStats struct {
	// Count and Balance are by the status a client would see at At.
	Count   [StatusExpired + 1]int
	Balance [StatusExpired + 1]domain.Tiyn
	At      time.Time
}

// VoucherStats counts vouchers by status and sums their balances, for the
// metrics. It locks each voucher in turn, never two at once and never a
// global lock, so it costs about 30 ns per voucher and never holds up a
// redemption for longer than one voucher's copy; callers cache the result
// rather than take it on every scrape of a large ledger. Like Books, the
// whole is exact only while no money moves.
func (l *Ledger) VoucherStats() VoucherStats {
	st := VoucherStats{At: l.now()}

	// A month's two deadlines are the same for all its vouchers.
	type deadlines struct{ end, spendUntil time.Time }
	months := make(map[domain.Month]deadlines, 4)

	n := l.vouchers.len()
	for id := VoucherID(1); int(id) <= n; id++ {
		v := l.vouchers.get(id)
		v.mu.Lock()
		state, month, balance := v.state, v.month, v.balance
		v.mu.Unlock()

		d, ok := months[month]
		if !ok {
			d = deadlines{month.End(l.prog.Location), l.prog.SpendUntil(month)}
			months[month] = d
		}
		status := StatusExpired
		switch {
		case state == stateIssued && st.At.Before(d.end):
			status = StatusIssued
		case state == stateActive && st.At.Before(d.spendUntil):
			status = StatusActive
		}
		st.Count[status]++
		st.Balance[status] += balance
	}
	return st
}
