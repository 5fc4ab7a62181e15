package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

// allCommands are keysync's subcommands. A command added to or removed from
// commands() must be added to or removed from this list too.
var allCommands = []string{"serve", "migrate", "audit", "status", "sync", "replay", "reconcile", "version", "help"}

// The usage text lists every subcommand there is, and only those.
func TestUsageListsEveryCommand(t *testing.T) {
	t.Parallel()
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	if !slices.Equal(names, allCommands) {
		t.Fatalf("got commands %v, want %v", names, allCommands)
	}
	var out bytes.Buffer
	if err := run(t.Context(), []string{"help"}, env(nil), &out, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range allCommands {
		if !strings.Contains(out.String(), "\n  keysync "+name+" ") {
			t.Errorf("usage lacks keysync %s:\n%s", name, out.String())
		}
	}
	for _, args := range [][]string{nil, {"frobnicate"}} {
		var errOut bytes.Buffer
		err := run(t.Context(), args, env(nil), io.Discard, &errOut, nil)
		if !errors.Is(err, errUsage) || errOut.String() != out.String() {
			t.Fatalf("%v: got %v and %q on stderr, want a usage error and the usage", args, err, errOut.String())
		}
	}
}

// --help and -h answer in an empty environment: no configuration is read.
func TestCommandHelpNeedsNoConfiguration(t *testing.T) {
	t.Parallel()
	for _, name := range allCommands {
		for _, help := range []string{"--help", "-h"} {
			t.Run(name+help, func(t *testing.T) {
				t.Parallel()
				var out, errOut bytes.Buffer
				if err := run(t.Context(), []string{name, help}, env(nil), &out, &errOut, nil); err != nil {
					t.Fatalf("got %v, want the usage", err)
				}
				if !strings.HasPrefix(out.String(), "Usage: keysync "+name) || errOut.Len() != 0 {
					t.Fatalf("got %q on stdout and %q on stderr, want the command's usage on stdout", out.String(), errOut.String())
				}
			})
		}
	}
	var out bytes.Buffer
	if err := run(t.Context(), []string{"audit", "--help"}, env(nil), &out, io.Discard, nil); err != nil ||
		!strings.Contains(out.String(), "-subscription") || !strings.Contains(out.String(), "-before-id") {
		t.Fatalf("audit --help: got %v and %q, want the flags listed", err, out.String())
	}
}

// An unknown flag is a usage error (exit status 2), reported before the configuration.
func TestUnknownFlagIsUsageError(t *testing.T) {
	t.Parallel()
	for _, name := range allCommands {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := run(t.Context(), []string{name, "--no-such-flag"}, env(nil), io.Discard, io.Discard, nil)
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "flag provided but not defined: -no-such-flag") {
				t.Fatalf("got %v, want a usage error naming the flag", err)
			}
		})
	}
}

// Arguments a command does not take are usage errors, before the configuration too.
func TestArgumentErrorsComeBeforeConfiguration(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		args []string
		want string
	}{
		"serve with an argument":  {[]string{"serve", "now"}, "serve takes no arguments"},
		"migrate sideways":        {[]string{"migrate", "sideways"}, "migrate takes up or status"},
		"sync without an id":      {[]string{"sync", "--dry-run"}, "sync takes one subscription id"},
		"status with a bad id":    {[]string{"status", "cus_1"}, "status takes one subscription id"},
		"replay with both":        {[]string{"replay", "evt_1", "--since", "1h"}, "replay takes one event id"},
		"replay with a bad since": {[]string{"replay", "--since", "yesterday"}, "replay --since"},
		"reconcile without once":  {[]string{"reconcile"}, "reconcile takes --once"},
		"audit with a bare word":  {[]string{"audit", "sub_1"}, "audit takes flags only"},
		"audit with a bad format": {[]string{"audit", "--format", "xml"}, "audit --format"},
		"version with an arg":     {[]string{"version", "now"}, "version takes no arguments"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := run(t.Context(), tc.args, env(nil), io.Discard, io.Discard, nil)
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a usage error with %q", err, tc.want)
			}
		})
	}
}

func TestParseFlagsTakesFlagsAfterArguments(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		args     []string
		wantRest []string
		wantDry  bool
	}{
		"flag first":     {[]string{"--dry-run", "sub_1"}, []string{"sub_1"}, true},
		"flag after":     {[]string{"sub_1", "--dry-run"}, []string{"sub_1"}, true},
		"no flag":        {[]string{"sub_1", "sub_2"}, []string{"sub_1", "sub_2"}, false},
		"after --":       {[]string{"sub_1", "--", "--dry-run"}, []string{"sub_1", "--dry-run"}, false},
		"nothing at all": {nil, nil, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			dry := fs.Bool("dry-run", false, "")
			rest, err := parseFlags(fs, tc.args)
			if err != nil || !slices.Equal(rest, tc.wantRest) || *dry != tc.wantDry {
				t.Fatalf("got %v, %v, dry-run %v; want %v, dry-run %v", rest, err, *dry, tc.wantRest, tc.wantDry)
			}
		})
	}
}
