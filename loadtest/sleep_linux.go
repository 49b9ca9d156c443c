package loadtest

import (
	"syscall"
	"time"
)

// preciseSleep waits d with the kernel's resolution rather than the Go
// runtime's. time.Sleep wakes through the network poller, whose timeout is
// in whole milliseconds here: an open loop at thousands of requests a second
// would release them in bursts up to a millisecond late, and that lateness
// would land in every latency. nanosleep overshoots by tens of
// microseconds instead. It blocks the scheduler's thread, which the runtime
// hands off like any other system call, so no other goroutine waits.
func preciseSleep(d time.Duration) {
	if d >= 2*time.Millisecond {
		time.Sleep(d)
		return
	}
	ts := syscall.NsecToTimespec(int64(d))
	syscall.Nanosleep(&ts, nil)
}
