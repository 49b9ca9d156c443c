// Command gatewayd serves the azyq redemption gateway: the v1 HTTP API on
// one address and the operations listener (metrics, health, profiling) on
// another.
//
// Every flag can also be given as an environment variable GATEWAY_<NAME>
// (upper case, dashes as underscores); a flag on the command line wins.
// Prefer the environment for tokens: command lines are visible to every
// user of the machine.
//
// The data directory holds Pebble under DATA/ledger and DATA/secrets.json
// (mode 0600): role tokens the gateway generated, the QR signing keys and
// what --demo seeded.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"azyq/domain"
	"azyq/gateway"
	"azyq/ledger"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "gatewayd:", err)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// options are the parsed flags.
type options struct {
	data, listen, opsListen                  string
	adminToken, walletToken, settlementToken string
	program                                  string
	demo                                     bool
	inflightMax                              int
	shutdownTimeout                          time.Duration
	tlsCert, tlsKey                          string
	limits                                   gateway.Limits
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("gatewayd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.data, "data", "./data", "data `directory`: Pebble under DIR/ledger, secrets in DIR/secrets.json")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "API `address`")
	fs.StringVar(&o.opsListen, "ops-listen", "127.0.0.1:9090", "operations `address`: /metrics, /healthz, /readyz, /debug/pprof/")
	fs.StringVar(&o.adminToken, "admin-token", "", "admin bearer `token` (default: generated at first start, kept in the data directory)")
	fs.StringVar(&o.walletToken, "wallet-token", "", "wallet bearer `token` (default: generated at first start, kept in the data directory)")
	fs.StringVar(&o.settlementToken, "settlement-token", "", "settlement bearer `token` (default: generated at first start, kept in the data directory)")
	fs.StringVar(&o.program, "program", "", "programme configuration `file` (JSON; default: built-in)")
	fs.BoolVar(&o.demo, "demo", false, "seed a demo shop, terminal and vouchers on an empty data directory and print curl commands to try them")
	fs.IntVar(&o.inflightMax, "inflight-max", 4096, "API requests served at once before answering 429 rate_limited")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "serve the API over TLS with this PEM certificate `file` (chain); needs --tls-key")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key `file` of --tls-cert")
	fs.Float64Var(&o.limits.TerminalRate, "terminal-rate", gateway.TerminalRateDefault,
		"requests per second one terminal may make on average before answering 429 rate_limited; 0 disables the limit")
	fs.IntVar(&o.limits.TerminalBurst, "terminal-burst", 0, "requests one terminal may make at once (default twice --terminal-rate)")
	fs.IntVar(&o.limits.ConnectionsMax, "max-conns", 10_000, "API connections open at once; more are refused")
	fs.IntVar(&o.limits.ConnectionsPerIPMax, "max-conns-per-ip", 0, "API connections open at once from one address; 0: no cap (tills may share a NAT address)")
	fs.DurationVar(&o.limits.ReadTimeout, "read-timeout", 30*time.Second, "time allowed to read one request, so slow clients cannot hold connections")
	fs.DurationVar(&o.limits.WriteTimeout, "write-timeout", 30*time.Second, "time allowed to write one answer")
	fs.DurationVar(&o.limits.IdleTimeout, "idle-timeout", 60*time.Second, "time a kept-alive API connection may wait for its next request")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long shutdown waits for in-flight requests")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("cannot parse arguments: unexpected %q", fs.Arg(0))
	}
	if o.limits.TerminalRate == 0 {
		o.limits.TerminalRate = -1 // the flag's 0 means no limit
	}

	// Environment variables fill the flags the command line left unset.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := "GATEWAY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v := getenv(name)
		if set[f.Name] || v == "" || err != nil {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("cannot use %s=%q: %w", name, v, e)
		}
	})
	return o, err
}

// readyHook, when set, learns the bound addresses once the API is ready.
type readyHook func(api, ops net.Addr)

// run starts the gateway and serves until ctx ends, then shuts down
// cleanly: no new connections, in-flight requests finished, the ledger
// closed (which flushes it).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, hook readyHook) error {
	o, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{
		Level:       slog.LevelInfo,
		ReplaceAttr: readableDurations,
	}))
	start := time.Now()

	prog, err := domain.LoadProgramme(o.program)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.data, 0o700); err != nil {
		return fmt.Errorf("cannot create data directory %q (--data): %w", o.data, err)
	}
	secrets, err := gateway.LoadSecrets(o.data)
	if err != nil {
		return err
	}
	tokens, err := settleTokens(o, secrets, stdout)
	if err != nil {
		return err
	}

	// The operations listener comes first, so /readyz says 503 (and
	// /healthz 200) while the ledger recovers.
	reg := prometheus.NewRegistry()
	var srv atomic.Pointer[gateway.Server]
	ready := func() bool { s := srv.Load(); return s != nil && s.Ready() }
	opsLn, err := net.Listen("tcp", o.opsListen)
	if err != nil {
		return fmt.Errorf("cannot listen on %q (--ops-listen): %w", o.opsListen, err)
	}
	ops := &http.Server{Handler: gateway.OpsHandler(reg, ready, log), ReadHeaderTimeout: 10 * time.Second}
	go ops.Serve(opsLn)
	defer ops.Close()

	led, err := ledger.Open(ledger.Config{Dir: filepath.Join(o.data, "ledger"), Programme: prog, Logger: log})
	if err != nil {
		return err
	}
	recovery := time.Since(start)
	defer func() {
		if err := led.Close(); err != nil {
			log.Error("cannot close the ledger", "err", err)
		}
	}()

	qr, err := gateway.NewQRKeys(secrets.QRKeys, prog.QRLifetime, led.Now)
	if err != nil {
		return fmt.Errorf("cannot use the QR keys of %s: %w", filepath.Join(o.data, gateway.SecretsFile), err)
	}
	s, err := gateway.New(gateway.Config{
		Ledger: led, QR: qr, Logger: log, Registry: reg, InflightMax: o.inflightMax,
		Limits: o.limits, QRKeyStore: &secretsKeyStore{secrets: secrets, dir: o.data},
		AdminToken: tokens.admin, WalletToken: tokens.wallet, SettlementToken: tokens.settlement,
	})
	if err != nil {
		return err
	}
	srv.Store(s)

	var demo *gateway.Demo
	if o.demo {
		if demo, err = seedDemo(led, secrets, o.data, log); err != nil {
			return err
		}
	}

	var tlsCfg *tls.Config
	if o.tlsCert != "" || o.tlsKey != "" {
		if o.tlsCert == "" || o.tlsKey == "" {
			return errors.New("cannot serve TLS: give both --tls-cert and --tls-key")
		}
		if tlsCfg, err = gateway.LoadTLS(o.tlsCert, o.tlsKey); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %q (--listen): %w", o.listen, err)
	}
	served := make(chan error, 1)
	go func() {
		if tlsCfg != nil {
			served <- s.ServeTLS(ln, tlsCfg)
			return
		}
		served <- s.Serve(ln)
	}()
	s.SetReady(true)

	hkCtx, hkStop := context.WithCancel(context.Background())
	hkDone := make(chan struct{})
	go func() {
		defer close(hkDone)
		// Scheduled cut-offs beside the housekeeping; the first runs at
		// once if one was missed while the gateway was down.
		cutDone := make(chan struct{})
		go func() {
			defer close(cutDone)
			s.Settlement().Run(hkCtx)
		}()
		gateway.Housekeep(hkCtx, led, gateway.SystemClock{}, log)
		<-cutDone
	}()

	log.Info("gateway ready", "listen", ln.Addr().String(), "tls", tlsCfg != nil, "ops_listen", opsLn.Addr().String(),
		"data", o.data, "recovery", recovery, "programme_zone", prog.TimeZone)
	if o.demo {
		printDemo(stdout, led, demo, tokens, ln.Addr().String())
	}
	if hook != nil {
		hook(ln.Addr(), opsLn.Addr())
	}

	select {
	case <-ctx.Done():
	case err := <-served:
		hkStop()
		<-hkDone
		return fmt.Errorf("cannot serve the API: %w", err)
	}

	// Shut down: /readyz goes 503 at once, the listener closes, in-flight
	// requests finish, then the ledger closes (deferred above).
	stopping := time.Now()
	log.Info("gateway stopping", "reason", "signal")
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	shutErr := s.Shutdown(sctx)
	hkStop()
	<-hkDone
	if shutErr != nil {
		log.Error("in-flight requests did not finish in time", "err", shutErr, "timeout", o.shutdownTimeout)
	}
	// A Serve that had not reached its accept loop when Shutdown ran would
	// wait forever; closing the listener ends it either way.
	ln.Close()
	<-served
	log.Info("gateway stopped", "duration", time.Since(stopping))
	return nil
}

// roleTokens are the tokens in force.
type roleTokens struct{ admin, wallet, settlement string }

// settleTokens picks each role's token (flag or environment, else the
// secrets file, else a new one) and the QR keys, saves what it generated
// and prints generated tokens once.
func settleTokens(o *options, secrets *gateway.Secrets, stdout io.Writer) (roleTokens, error) {
	var generated []string
	pick := func(role, given string, kept *string) (string, error) {
		if given != "" {
			return given, nil
		}
		if *kept == "" {
			tok, err := gateway.NewToken(role)
			if err != nil {
				return "", err
			}
			*kept = tok
			generated = append(generated, fmt.Sprintf("  %-11s %s", role+":", tok))
		}
		return *kept, nil
	}
	var t roleTokens
	var err error
	if t.admin, err = pick("admin", o.adminToken, &secrets.AdminToken); err != nil {
		return t, err
	}
	if t.wallet, err = pick("wallet", o.walletToken, &secrets.WalletToken); err != nil {
		return t, err
	}
	if t.settlement, err = pick("settlement", o.settlementToken, &secrets.SettlementToken); err != nil {
		return t, err
	}
	changed := len(generated) > 0
	if len(secrets.QRKeys) == 0 {
		k, err := gateway.NewQRKey(1, time.Now())
		if err != nil {
			return t, err
		}
		secrets.QRKeys = append(secrets.QRKeys, k)
		changed = true
	}
	if changed {
		if err := secrets.Save(o.data); err != nil {
			return t, err
		}
	}
	if len(generated) > 0 {
		fmt.Fprintf(stdout, "Generated role tokens, kept in %s and shown only this once:\n%s\n\n",
			filepath.Join(o.data, gateway.SecretsFile), strings.Join(generated, "\n"))
	}
	return t, nil
}

// readableDurations writes durations as "840ms" rather than as integer
// nanoseconds, so a lifecycle line reads as it would be said.
func readableDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().Round(time.Microsecond).String())
	}
	return a
}
