//go:build !linux

package loadtest

import "time"

// preciseSleep is time.Sleep where nanosleep is not at hand; see the Linux
// version for why the open loop wants better.
func preciseSleep(d time.Duration) { time.Sleep(d) }
