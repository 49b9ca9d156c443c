package loadtest

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is the machine's busy and total CPU time and this process's own
// CPU time at one instant.
type cpuSample struct {
	busy, total time.Duration
	self        time.Duration
}

// sampleCPU reads /proc/stat and getrusage. The tick is taken as 10 ms,
// the USER_HZ of every Linux this runs on.
func sampleCPU() cpuSample {
	var s cpuSample
	if data, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		for i, f := range strings.Fields(line)[1:] {
			v, _ := strconv.ParseInt(f, 10, 64)
			d := time.Duration(v) * 10 * time.Millisecond
			s.total += d
			if i != 3 && i != 4 { // idle, iowait
				s.busy += d
			}
		}
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return s
}
