// Package loadtest drives a running azyq gateway the way a country's tills
// and the social-wallet backend would, through the public HTTP API of
// version 1 only, and reports what it saw.
//
// A run has three phases:
//
//  1. Set-up, not timed: shops with valid BINs, IBANs and BICs, terminals
//     for each shop, vouchers issued for the current month and activated
//     with consent, and a first pool of QR tokens minted as the wallet
//     would.
//  2. The timed phase: many terminals send a mix of redemptions (by amount
//     and by basket), balance inquiries, refunds of earlier approvals and
//     idempotent retries of earlier requests, either in a closed loop (each
//     terminal waits for its answer) or in an open loop (requests start on a
//     schedule and latency is measured from the scheduled start, so a
//     server that falls behind cannot hide its queue — the coordinated
//     omission that closed-loop tools suffer from).
//  3. The book check: each voucher's balance, read back through the API,
//     must equal its face value minus what the run saw approved plus what
//     it saw refunded to the voucher. Any difference, any replay that is not
//     byte for byte the first answer, fails the run.
//
// The workload is a pure function of a seed (see Generator), so two runs
// with the same seed ask for the same operations in the same order; only
// the server's answers and the timing differ.
//
// Latencies go into HDR histograms (github.com/HdrHistogram/hdrhistogram-go)
// with microsecond resolution, one per operation, plus one per second of the
// run for the latency-over-time plot.
//
// Every run is bounded: by a duration and optionally a count of operations.
// Traffic goes only to loopback addresses (see CheckLoopback): a load test
// that can be pointed at production by a typo is a hazard.
package loadtest
