//go:build !invariants

package ledger

// invariantsEnabled is off in production builds; see invariants_on.go.
const invariantsEnabled = false
