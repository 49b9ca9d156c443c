// Package bench holds the Go benchmarks of the redemption path's pieces,
// measured from outside the packages that own them (QR verification,
// basket pricing, and a whole redemption through the gateway's HTTP API
// over loopback), and, under compare/, the side-by-side comparison with
// PostgreSQL and Redis designs. Results and the commands that produced
// them are in RESULTS.md.
package bench
