// Package settlement pays shops for what vouchers bought: it runs cut-offs,
// closes the ledger's movements into one batch per bank, keeps the batches,
// renders them for banks (JSON, lines.csv, ISO 20022 pain.001.001.09) and
// records the banks' acknowledgements. It also answers the accountants'
// reconciliation questions.
//
// # Design
//
// The ledger stamps every approved redemption and refund with the settlement
// period that was open when it committed (ledger invariant 6). A cut-off, in
// order:
//
//  1. Take the cut-off lock; cut-offs run one at a time.
//  2. ledger.Cut opens the next period and waits until every commit stamped
//     with the old one has finished. Redemptions do not wait for the cut:
//     those that start after it join the new period at once.
//  3. Read the movements of the periods (lastSettled, closed] with
//     ledger.Movements and add them up per shop.
//  4. Group the shops by their bank_bic as it is at this instant; a shop's
//     net is carried_in + gross − refunds, its paid amount max(net, 0), and
//     a negative net is kept as the shop's carry for its next batch.
//  5. Commit, in one synced ledger batch (ledger.CommitAux): the batches,
//     the cut-off record, the new carries, lastSettled = closed, and one
//     posting store → bank per shop paid.
//  6. Publish the batches in memory.
//
// # Invariants
//
//  1. Every movement lands in exactly one batch. It has exactly one period
//     (ledger invariant 6); the periods (lastSettled, closed] of successive
//     cut-offs are disjoint and leave no gap, because lastSettled is
//     committed in the same batch as the batches that cover them; and a shop
//     is in exactly one batch of a cut-off (its bank at that instant).
//  2. A crash between steps 2 and 5 loses nothing: the closed periods stay
//     unsettled on disk, and the next cut-off covers them all.
//  3. Closed batches never change. A batch record is written once; its
//     acknowledgement is a separate record, written once per batch.
//  4. A shop is never paid a negative amount. For each shop, its carry is
//     max(0, −net) of its last batch, stored as ≤ 0 and equal to what its
//     payable account holds after that batch once the postings are applied:
//     payable(after) = carried_in + gross − refunds − paid = net − paid.
//     At a quiet instant right after a cut-off, every shop's payable account
//     equals its carry (CheckCarries asserts it).
//  5. A batch's gross and refunds are the sums over its shops, and its net
//     is the sum of the shops' paid amounts (asserted when it is built).
//  6. The same acknowledgement reference returns the same answer; another
//     reference for an acknowledged batch is a conflict.
//
// # Rejected designs
//
// Selecting movements by time (created_at below the cut-off instant) is the
// obvious design, but a redemption that took its timestamp before the
// cut-off and commits after the scan would be missed, and stopping
// redemptions while a cut-off reads would stall every till for the length of
// the scan. The ledger's periods make the boundary a property of each commit
// instead, at the cost of a counter per commit.
//
// Storing each shop's carry as a separate running balance apart from the
// ledger's accounts was kept (rather than deriving carried_in from the
// payable account at period start), because a payable account read during
// a cut-off already holds movements of the new period; the carry record is
// written with the postings and checked against the account at quiet
// instants.
//
// Keeping batches only in Pebble and scanning them for every listing was
// rejected for listings: the heads of all batches (a few thousand a year)
// are kept in memory, and the per-shop detail is read from Pebble on demand.
package settlement
