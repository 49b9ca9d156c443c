// Command gatewayctl is the operator's tool for an azyq gateway: it imports a
// family registry as an issuance through the API, shows a voucher or a
// redemption, and audits a stopped data directory offline.
//
//	gatewayctl [--addr URL] [--token T] [--data DIR] COMMAND [flags] [args]
//
//	gatewayctl import registry.csv --month 2026-12
//	gatewayctl voucher VABCDEFG
//	gatewayctl redemption R0000000000001 --json
//	gatewayctl --data /var/lib/azyq audit
//
// Global flags come before the command; each command has its own flags after
// it ("gatewayctl help COMMAND" lists them).
//
// Exit status: 0 on success; 1 when the command ran and found a problem (a
// rejected row, a failed chunk, an invariant violation, a 4xx answer); 2 when
// it could not run (bad flags, unreadable file, gateway unreachable).
//
// # Adding a command
//
// Each command lives in its own file of this package and registers itself
// from that file's init function:
//
//	func init() {
//		register(&command{
//			name:    "settlement pull",
//			summary: "download the ready settlement batches",
//			usage:   "settlement pull [--status ready] [--out DIR]",
//			run:     runSettlementPull,
//		})
//	}
//
//	func runSettlementPull(env *env, args []string) int { … }
//
// A name may have two words ("settlement pull"): the dispatcher tries the
// two-word name first, then the one-word name. run receives the global
// settings in env (the API client, the data directory, stdout and stderr)
// and the arguments after the command name; it parses its own flags with
// env.flags(name) and parse, calls the API through env.client(), prints its
// own errors and returns the exit status. No other file needs to change.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/term"
)

// command is one gatewayctl subcommand.
type command struct {
	// name is how the operator calls it: one word, or two separated by a
	// single space ("settlement pull").
	name string

	// summary is one line for the command list.
	summary string

	// usage shows the arguments and flags after gatewayctl.
	usage string

	// run executes the command with args (everything after its name) and
	// returns the process exit status.
	run func(env *env, args []string) int
}

// commands holds every registered command by name. It is filled by init
// functions only, before main runs, so it needs no lock.
var commands = map[string]*command{}

// register adds c to commands. A duplicate or malformed name is a bug in
// this package and panics at start-up.
func register(c *command) {
	if c.name == "" || c.run == nil || strings.TrimSpace(c.name) != c.name ||
		len(strings.Fields(c.name)) > 2 {
		panic(fmt.Sprintf("BUG: gatewayctl: malformed command %q", c.name))
	}
	if _, dup := commands[c.name]; dup {
		panic(fmt.Sprintf("BUG: gatewayctl: command %q registered twice", c.name))
	}
	commands[c.name] = c
}

// Exit statuses.
const (
	exitOK      = 0
	exitProblem = 1
	exitUsage   = 2
)

// Defaults of the global flags.
const (
	addrDefault    = "http://127.0.0.1:8080"
	timeoutDefault = 60 * time.Second
)

// env is what every command receives: the global settings and where to
// write.
type env struct {
	// addr is the gateway API base URL, without a trailing slash.
	addr string

	// token is the bearer token sent to the API (admin for most commands).
	token string

	// data is the gateway's data directory, for offline commands.
	data string

	// timeout bounds one HTTP request.
	timeout time.Duration

	stdout io.Writer
	stderr io.Writer

	// sleep waits between retries; tests replace it to run without
	// waiting.
	sleep func(ctx context.Context, d time.Duration) error

	// isTerminal reports whether stdout is an interactive terminal (progress
	// bars are drawn only then).
	isTerminal bool
}

// flags returns a flag set for the named command that writes its usage to
// stderr and returns errors instead of exiting.
func (e *env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	if c := commands[name]; c != nil {
		fs.Usage = func() {
			fmt.Fprintf(e.stderr, "usage: gatewayctl %s\n", c.usage)
			fs.PrintDefaults()
		}
	}
	return fs
}

// parse parses a command's flags. It returns false with the exit status
// when the command should stop: after -h (status 0) or a bad flag (2).
func parse(fs *flag.FlagSet, args []string) (bool, int) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return false, exitOK
		}
		return false, exitUsage
	}
	return true, exitOK
}

// sleepContext waits for d or until ctx is done.
func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errorf prints a message prefixed with the program name to stderr.
func (e *env) errorf(format string, args ...any) {
	fmt.Fprintf(e.stderr, "gatewayctl: "+format+"\n", args...)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, stdoutIsTerminal()))
}

// run parses the global flags, finds the command and runs it. It is main
// without os.Exit, so tests call it directly.
func run(args []string, stdout, stderr io.Writer, isTerminal bool) int {
	return runEnv(&env{stdout: stdout, stderr: stderr, isTerminal: isTerminal, sleep: sleepContext}, args)
}

// runEnv is run with the environment given; tests set its sleep and
// output.
func runEnv(e *env, args []string) int {
	stderr := e.stderr

	fs := flag.NewFlagSet("gatewayctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&e.addr, "addr", addrDefault, "gateway API base URL")
	// The token's default is read after parsing, not passed to StringVar,
	// so that usage never prints it.
	fs.StringVar(&e.token, "token", "", "bearer token for the API (default: env GATEWAY_ADMIN_TOKEN)")
	fs.StringVar(&e.data, "data", "", "gateway data directory, for offline commands such as audit")
	fs.DurationVar(&e.timeout, "timeout", timeoutDefault, "timeout of one HTTP request")
	fs.Usage = func() { usage(stderr, fs) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	e.addr = strings.TrimRight(e.addr, "/")
	if e.token == "" {
		e.token = os.Getenv("GATEWAY_ADMIN_TOKEN")
	}

	// Find the command: two words first, then one.
	rest := fs.Args()
	if len(rest) == 0 {
		usage(stderr, fs)
		return exitUsage
	}
	if rest[0] == "help" {
		return help(e, fs, rest[1:])
	}
	c, cargs := lookup(rest)
	if c == nil {
		e.errorf("unknown command %q (run \"gatewayctl help\")", rest[0])
		return exitUsage
	}
	return c.run(e, cargs)
}

// lookup finds the command named by the first one or two words of args and
// returns it with the remaining arguments.
func lookup(args []string) (*command, []string) {
	if len(args) >= 2 {
		if c := commands[args[0]+" "+args[1]]; c != nil {
			return c, args[2:]
		}
	}
	if c := commands[args[0]]; c != nil {
		return c, args[1:]
	}
	return nil, nil
}

// help prints the command list, or one command's usage and flags.
func help(e *env, fs *flag.FlagSet, args []string) int {
	if len(args) == 0 {
		usage(e.stderr, fs)
		return exitOK
	}
	c, _ := lookup(args)
	if c == nil {
		e.errorf("unknown command %q", strings.Join(args, " "))
		return exitUsage
	}
	return c.run(e, []string{"-h"})
}

// usage prints the global flags and every command.
func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "usage: gatewayctl [global flags] COMMAND [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-20s %s\n", name, commands[name].summary)
	}
	fmt.Fprintln(w, "\nglobal flags:")
	fs.PrintDefaults()
}

// stdoutIsTerminal reports whether stdout is an interactive terminal rather
// than a file, a pipe or /dev/null (a character device, but not a
// terminal).
func stdoutIsTerminal() bool { return term.IsTerminal(int(os.Stdout.Fd())) }
