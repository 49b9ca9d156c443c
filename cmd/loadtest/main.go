// Command loadtest drives a running azyq gateway through its public HTTP API
// as many POS terminals and the wallet would, then checks every voucher's
// balance against what it saw and reports latency and throughput.
//
//	loadtest --addr 127.0.0.1:8080 --admin-token … --wallet-token … \
//	    --mode open --rate 2000 --duration 30s --json out.json --html out.html
//
// Exit status: 0 when the books balance and nothing failed, 1 when the run
// found a violation or failures, 2 when it could not run.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"azyq/loadtest"
)

func main() {
	os.Exit(run())
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run() int {
	var cfg loadtest.Config
	var mix, jsonPath, htmlPath, dataDir string
	var quiet bool
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:8080", "gateway API address (loopback only)")
	flag.StringVar(&cfg.AdminToken, "admin-token", env("GATEWAY_ADMIN_TOKEN", ""),
		"admin token, as gatewayd printed it (env GATEWAY_ADMIN_TOKEN)")
	flag.StringVar(&cfg.WalletToken, "wallet-token", env("GATEWAY_WALLET_TOKEN", ""),
		"wallet token, as gatewayd printed it (env GATEWAY_WALLET_TOKEN)")
	flag.StringVar(&dataDir, "data", "", "gateway data directory to read the tokens from "+
		"(its secrets.json), when --admin-token and --wallet-token are not given")
	flag.StringVar(&cfg.Label, "label", "", "free text carried into the report")
	flag.StringVar(&cfg.Mode, "mode", "closed", "closed: each terminal waits for its answer; "+
		"open: requests start on schedule at --rate and latency counts from the scheduled start")
	flag.Float64Var(&cfg.Rate, "rate", 0, "open loop: peak POS operations per second")
	flag.StringVar(&cfg.Shape, "shape", "flat", "flat, or surge: a month-start peak early in the run")
	flag.IntVar(&cfg.Workers, "workers", 64, "concurrent terminals sending requests")
	flag.DurationVar(&cfg.Duration, "duration", 30*time.Second, "length of the timed phase (at most 1h)")
	flag.Int64Var(&cfg.Count, "count", 0, "closed loop: stop after this many POS operations (0: no limit)")
	flag.IntVar(&cfg.Stores, "stores", 20, "shops to create")
	flag.IntVar(&cfg.TerminalsPerStore, "terminals-per-store", 8, "terminals per shop")
	flag.IntVar(&cfg.Vouchers, "vouchers", 20000, "vouchers to issue and activate")
	flag.IntVar(&cfg.HotVouchers, "hot-vouchers", 4, "vouchers that receive --hot-share of the traffic")
	flag.Float64Var(&cfg.HotShare, "hot-share", 0.02, "share of voucher operations aimed at the hot vouchers")
	flag.StringVar(&mix, "mix", "", "operation weights, e.g. redeem_amount=30,redeem_basket=50,"+
		"balance_inquiry=10,refund=5,idempotent_retry=5 (default that); \"redemptions\" for the compare subset")
	flag.Uint64Var(&cfg.Seed, "seed", 1, "seed of the workload; the same seed asks for the same operations")
	flag.IntVar(&cfg.QRPerVoucher, "qr-per-voucher", 2, "QR tokens minted per voucher during set-up")
	flag.IntVar(&cfg.Wallets, "wallets", 2, "goroutines minting QR tokens as the wallet during the run")
	flag.IntVar(&cfg.SetupWorkers, "setup-workers", 32, "concurrency of set-up and the book check")
	flag.DurationVar(&cfg.Timeout, "timeout", 10*time.Second, "per-request timeout")
	flag.BoolVar(&cfg.Check, "check", true, "read every balance back and check the books")
	flag.StringVar(&jsonPath, "json", "", "write the report as JSON to this file")
	flag.StringVar(&htmlPath, "html", "", "write the report as an HTML page to this file")
	flag.BoolVar(&quiet, "quiet", false, "no progress bar")
	flag.Parse()

	if dataDir != "" {
		if err := readTokens(dataDir, &cfg); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
			return 2
		}
	}
	switch mix {
	case "":
	case "redemptions":
		cfg.Mix = loadtest.RedemptionMix
	default:
		m, err := loadtest.ParseMix(mix)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
			return 2
		}
		cfg.Mix = m
	}
	if !quiet {
		cfg.Progress = os.Stderr
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := loadtest.Run(ctx, cfg)
	if err != nil && rep == nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		return 2
	}
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}

	if err := rep.WriteTable(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
	}
	if jsonPath != "" {
		if err := rep.WriteJSON(jsonPath); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
			return 2
		}
	}
	if htmlPath != "" {
		if err := rep.WriteHTML(htmlPath); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
			return 2
		}
	}
	if !rep.OK() {
		return 1
	}
	return 0
}

// readTokens fills the tokens left empty from the gateway's secrets file.
func readTokens(dir string, cfg *loadtest.Config) error {
	path := filepath.Join(dir, "secrets.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("cannot read the gateway's tokens (--data): %w", err)
	}
	var s struct {
		Admin  string `json:"admin_token"`
		Wallet string `json:"wallet_token"`
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("cannot parse the gateway's tokens in %q: %w", path, err)
	}
	if cfg.AdminToken == "" {
		cfg.AdminToken = s.Admin
	}
	if cfg.WalletToken == "" {
		cfg.WalletToken = s.Wallet
	}
	return nil
}
