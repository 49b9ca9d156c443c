//go:build invariants

package ledger

// invariantsEnabled turns on the expensive paired assertions: after every
// commit that changes a voucher, the record is read back from Pebble and
// compared with memory. `make test` runs the race pass with this tag.
const invariantsEnabled = true
