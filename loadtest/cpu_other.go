//go:build !linux

package loadtest

import "time"

type cpuSample struct {
	busy, total time.Duration
	self        time.Duration
}

// sampleCPU knows nothing outside Linux; the report then shows zeros.
func sampleCPU() cpuSample { return cpuSample{} }
