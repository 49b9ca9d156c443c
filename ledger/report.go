package ledger

import "azyq/domain"

// Accounts returns the balance of every named account (programme, lapsed,
// shop payables, bank clearing), without the voucher balances that Books
// adds up. It reads only atomic counters, so it is cheap enough for a
// metrics scrape; like Books, the whole is exact only while no money moves.
func (l *Ledger) Accounts() map[string]domain.Tiyn { return l.accounts.snapshot() }
