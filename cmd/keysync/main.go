// Command keysync keeps Cryptolens license keys in sync with Stripe subscriptions.
//
// Usage: keysync <command> [flags] [arguments]. `keysync help` lists the commands,
// `keysync <command> --help` shows one command's flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/events"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// errUsage marks errors in the command line or configuration: exit status 2.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "keysync: %v\n", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// command is one of keysync's subcommands, as the usage text lists it.
type command struct {
	name     string
	synopsis string // what follows the name on the usage line
	summary  string // what the command does; lines after the first are continuations
	// needsConfig is set for the commands that read the environment's configuration;
	// version and help answer without it.
	needsConfig bool
	// new returns a fresh invocation to parse the command line into.
	new func() subcommand
}

// subcommand is one invocation of a command. run calls its methods in this order, and
// calls run only when flags and args have accepted the command line.
type subcommand interface {
	// flags declares the command's flags on fs.
	flags(fs *flag.FlagSet)
	// args checks the arguments left after the flags, and the flags' values. Its
	// errors are usage errors.
	args(rest []string) error
	// run does the work; e carries the configuration when the command needs it.
	run(ctx context.Context, e cmdEnv) error
}

// cmdEnv is what a subcommand runs with: the configuration and logger (for commands that
// need them) and the process's outside world.
type cmdEnv struct {
	cfg       config
	log       zerolog.Logger
	getenv    func(string) string
	stdout    io.Writer
	onServing func(serveAddrs)
}

// commands lists every subcommand, in the order the usage text shows them. It is a
// function, not a variable, because help prints the list it belongs to.
func commands() []command {
	return []command{
		{name: "serve", summary: "run the daemon: webhooks, jobs, health (migrates first,\nunless KEYSYNC_MIGRATE=false)",
			needsConfig: true, new: func() subcommand { return &serveCmd{} }},
		{name: "migrate", synopsis: "[up|status]", summary: "apply database migrations (keysync's and River's),\nor show applied and pending ones (status)",
			needsConfig: true, new: func() subcommand { return &migrateCmd{} }},
		{name: "audit", synopsis: "[flags]", summary: "print the audit log, newest first; flags filter it",
			needsConfig: true, new: func() subcommand { return &auditCmd{now: time.Now()} }},
		{name: "status", synopsis: "<sub_...|cs_...|in_...>", summary: "Stripe, keysync, Cryptolens and the policy side by side (changes nothing)",
			needsConfig: true, new: func() subcommand { return &statusCmd{} }},
		{name: "sync", synopsis: "<sub_...|cs_...|in_...> [--dry-run]", summary: "sync one subscription or one-time purchase now, as the operator",
			needsConfig: true, new: func() subcommand { return &syncCmd{} }},
		{name: "replay", synopsis: "<evt_...> | --since 24h [--type t]", summary: "process events again (the running keysync works them)",
			needsConfig: true, new: func() subcommand { return &replayCmd{now: time.Now()} }},
		{name: "reconcile", synopsis: "--once", summary: "sweep now: compare every subscription with its key, queue a Sync\nfor each that drifted (the running keysync works them)",
			needsConfig: true, new: func() subcommand { return &reconcileCmd{} }},
		{name: "version", summary: "print the version",
			new: func() subcommand { return versionCmd{} }},
		{name: "help", summary: "print this help",
			new: func() subcommand { return helpCmd{} }},
	}
}

// run executes one command line. onServing, if set, is told the addresses serve listens
// on. Usage and configuration errors wrap errUsage.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, onServing func(serveAddrs)) error {
	// No command: the usage, on stderr and as an error, so a script that forgot the
	// command fails.
	if len(args) == 0 {
		printUsage(stderr)
		return fmt.Errorf("%w: no command given", errUsage)
	}

	// The conventional spellings of help and version are the commands of that name.
	name := args[0]
	switch name {
	case "-h", "--help":
		name = "help"
	case "--version":
		name = "version"
	}
	cmd, ok := findCommand(name)
	if !ok {
		printUsage(stderr)
		return fmt.Errorf("%w: unknown command %q", errUsage, name)
	}

	// The command line is read before the configuration, so that --help and a
	// mistyped flag answer in any environment.
	sub := cmd.new()
	fs := flag.NewFlagSet("keysync "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the error is returned; --help prints below
	sub.flags(fs)
	rest, err := parseFlags(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		cmd.printUsage(stdout, fs)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errUsage, cmd.name, err)
	}
	if err := sub.args(rest); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	e := cmdEnv{getenv: getenv, stdout: stdout, onServing: onServing}

	// The configuration is read whole and every invalid variable reported at once.
	if cmd.needsConfig {
		cfg, err := loadConfig(getenv, os.ReadFile)
		if err != nil {
			return fmt.Errorf("%w: configuration:\n%w", errUsage, err)
		}
		e.cfg, e.log = cfg, newLogger(cfg, stderr)
	}
	return sub.run(ctx, e)
}

// findCommand returns the command named name, if there is one.
func findCommand(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// parseFlags parses args with fs and returns the arguments that are not flags. Flags
// may follow the arguments (keysync sync sub_1 --dry-run); after "--" everything is an
// argument.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		left := fs.Args()
		if len(left) == 0 {
			return rest, nil
		}
		// The flag package stops at the first argument, and consumes a "--" it stops at.
		if n := len(args) - len(left); n > 0 && args[n-1] == "--" {
			return append(rest, left...), nil
		}
		rest = append(rest, left[0])
		args = left[1:]
	}
}

// printUsage prints keysync's usage: every command, one line each.
func printUsage(w io.Writer) {
	const column = 27
	fmt.Fprint(w, "keysync keeps Cryptolens license keys in sync with Stripe subscriptions.\n\nUsage:\n")
	for _, c := range commands() {
		line := strings.TrimSpace("keysync " + c.name + " " + c.synopsis)
		summary := strings.ReplaceAll(c.summary, "\n", "\n  "+strings.Repeat(" ", column)+" ")
		if len(line) > column {
			fmt.Fprintf(w, "  %s\n  %-*s %s\n", line, column, "", summary)
		} else {
			fmt.Fprintf(w, "  %-*s %s\n", column, line, summary)
		}
	}
	fmt.Fprint(w, "\n`keysync <command> --help` shows a command's flags.\n"+
		"Configuration comes from environment variables; see the README.\n")
}

// printUsage prints the command's usage line, what it does, and its flags.
func (c command) printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s.\n", strings.TrimSpace("keysync "+c.name+" "+c.synopsis),
		strings.ToUpper(c.summary[:1])+strings.ReplaceAll(c.summary[1:], "\n", " "))
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprint(w, "\nFlags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
	if c.needsConfig {
		fmt.Fprint(w, "\nConfiguration comes from environment variables; see the README.\n")
	}
}

// noFlags is embedded by the commands that take no flags.
type noFlags struct{}

func (noFlags) flags(*flag.FlagSet) {}

// noArgs is the args check of the commands that take no arguments.
func noArgs(name string, rest []string) error {
	if len(rest) > 0 {
		return fmt.Errorf("%s takes no arguments", name)
	}
	return nil
}

// versionCmd prints the version, the Stripe API version keysync speaks, and Go's.
type versionCmd struct{ noFlags }

func (versionCmd) args(rest []string) error { return noArgs("version", rest) }

func (versionCmd) run(_ context.Context, e cmdEnv) error {
	fmt.Fprintf(e.stdout, "keysync %s (Stripe API %s, %s)\n", version, events.StripeAPIVersion, runtime.Version())
	return nil
}

// helpCmd prints keysync's usage.
type helpCmd struct{ noFlags }

func (helpCmd) args(rest []string) error { return noArgs("help", rest) }

func (helpCmd) run(_ context.Context, e cmdEnv) error {
	printUsage(e.stdout)
	return nil
}

// newLogger logs JSON lines, or console lines for a person at a terminal
// (LOG_FORMAT).
func newLogger(cfg config, w io.Writer) zerolog.Logger {
	if cfg.LogFormat == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(cfg.LogLevel).With().Timestamp().Logger()
}

// slogFor bridges a zerolog logger for the libraries that log through slog (River,
// goose).
func slogFor(log zerolog.Logger, component string) *slog.Logger {
	return slog.New(zerolog.NewSlogHandler(log.With().Str("component", component).Logger()))
}
