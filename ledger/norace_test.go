//go:build !race

package ledger

// raceEnabled shortens the long tests under the race detector.
const raceEnabled = false
