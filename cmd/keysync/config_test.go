package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func noFiles(string) ([]byte, error) { return nil, os.ErrNotExist }

const validDB = "postgres://keysync:dbpassword-xyz@db.internal:5432/keysync"

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(env(map[string]string{"DATABASE_URL": validDB}), noFiles)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":8080" || c.BufferDays != 5 || c.DryRun || c.ReconcileInterval != time.Hour ||
		c.StripeAPIBase != "https://api.stripe.com" || c.CryptolensAPIBase != "https://api.cryptolens.io" ||
		c.LogLevel != zerolog.InfoLevel || c.ShutdownTimeout != 30*time.Second ||
		c.TimeLimitedFeature != 1 || c.LapseWhenPaused || c.AdminListen != "127.0.0.1:8081" {
		t.Fatalf("got %+v, want the documented defaults", c)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		env     map[string]string
		wantVar string
	}{
		"missing database":   {map[string]string{}, "DATABASE_URL is required"},
		"bad database":       {map[string]string{"DATABASE_URL": "mysql://secret-pw@x"}, "DATABASE_URL:"},
		"bad webhook secret": {map[string]string{"STRIPE_WEBHOOK_SECRETS": "whsec_ok,sk_live_secret-pw"}, "STRIPE_WEBHOOK_SECRETS:"},
		"bad stripe key":     {map[string]string{"STRIPE_API_KEY": "pk_live_secret-pw"}, "STRIPE_API_KEY:"},
		"bad buffer":         {map[string]string{"KEYSYNC_BUFFER_DAYS": "-1"}, "KEYSYNC_BUFFER_DAYS:"},
		"bad interval":       {map[string]string{"KEYSYNC_RECONCILE_INTERVAL": "5s"}, "KEYSYNC_RECONCILE_INTERVAL:"},
		"bad listen":         {map[string]string{"KEYSYNC_LISTEN": "8080"}, "KEYSYNC_LISTEN:"},
		"bad dry run":        {map[string]string{"KEYSYNC_DRY_RUN": "maybe"}, "KEYSYNC_DRY_RUN:"},
		"bad log level":      {map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL:"},
		"bad log format":     {map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT:"},
		"bad product":        {map[string]string{"CRYPTOLENS_PRODUCT_ID": "abc"}, "CRYPTOLENS_PRODUCT_ID:"},
		"bad api base":       {map[string]string{"STRIPE_API_BASE": "ftp://x"}, "STRIPE_API_BASE:"},
		"short admin token":  {map[string]string{"KEYSYNC_ADMIN_TOKEN": "secret-pw"}, "KEYSYNC_ADMIN_TOKEN:"},
		"short read token":   {map[string]string{"KEYSYNC_ADMIN_READ_TOKEN": "secret-pw"}, "KEYSYNC_ADMIN_READ_TOKEN:"},
		"bad admin listen":   {map[string]string{"KEYSYNC_ADMIN_LISTEN": "8081"}, "KEYSYNC_ADMIN_LISTEN:"},
		"admin token, no admin listener": {map[string]string{"KEYSYNC_ADMIN_LISTEN": "off", "KEYSYNC_ADMIN_TOKEN": "secret-pw-0123456789"},
			"KEYSYNC_ADMIN_LISTEN is off, but an admin token is set"},
		"read token, no admin listener": {map[string]string{"KEYSYNC_ADMIN_LISTEN": "off", "KEYSYNC_ADMIN_READ_TOKEN": "secret-pw-0123456789"},
			"KEYSYNC_ADMIN_LISTEN is off, but an admin token is set"},
		"admin on the public address": {map[string]string{"KEYSYNC_LISTEN": ":8080", "KEYSYNC_ADMIN_LISTEN": ":8080"},
			"KEYSYNC_ADMIN_LISTEN must differ from KEYSYNC_LISTEN"},
		"one token for both roles": {map[string]string{"KEYSYNC_ADMIN_TOKEN": "secret-pw-0123456789", "KEYSYNC_ADMIN_READ_TOKEN": "secret-pw-0123456789"},
			"KEYSYNC_ADMIN_READ_TOKEN must differ"},
		"missing plans": {map[string]string{"KEYSYNC_PLANS_FILE": "/nonexistent/plans.yaml"}, "KEYSYNC_PLANS_FILE:"},
		"no feature 9":  {map[string]string{"CRYPTOLENS_TIME_LIMITED_FEATURE": "9"}, "CRYPTOLENS_TIME_LIMITED_FEATURE:"},
		"bad paused":    {map[string]string{"KEYSYNC_ON_PAUSED_COLLECTION": "block"}, "KEYSYNC_ON_PAUSED_COLLECTION:"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if _, ok := tc.env["DATABASE_URL"]; !ok && name != "missing database" {
				tc.env["DATABASE_URL"] = validDB
			}
			_, err := loadConfig(env(tc.env), noFiles)
			if err == nil || !strings.Contains(err.Error(), tc.wantVar) {
				t.Fatalf("got %v, want an error naming %q", err, tc.wantVar)
			}
			if strings.Contains(err.Error(), "secret-pw") {
				t.Fatalf("error leaks a secret value: %v", err)
			}
		})
	}
}

// KEYSYNC_ADMIN_LISTEN=off turns the admin listener off; port 0 on both listeners
// (each takes a free port) is not the same address twice.
func TestConfigAdminListener(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(env(map[string]string{"DATABASE_URL": validDB, "KEYSYNC_ADMIN_LISTEN": "off"}), noFiles)
	if err != nil || c.AdminListen != "" {
		t.Fatalf("off: got %q, %v, want no admin listener", c.AdminListen, err)
	}
	c, err = loadConfig(env(map[string]string{"DATABASE_URL": validDB, "KEYSYNC_LISTEN": "127.0.0.1:0", "KEYSYNC_ADMIN_LISTEN": "127.0.0.1:0",
		"KEYSYNC_ADMIN_READ_TOKEN": "read-token-0123456789"}), noFiles)
	if err != nil || c.AdminListen != "127.0.0.1:0" || c.AdminReadToken != "read-token-0123456789" {
		t.Fatalf("port 0 twice: got %+v, %v", c, err)
	}
}

// A secret that still holds the deployment files' placeholder stops start-up as a
// configuration error (exit status 2), naming the variable and never the value: for
// every secret, set directly or through its _FILE.
func TestConfigRefusesPlaceholderSecrets(t *testing.T) {
	t.Parallel()
	values := map[string]string{ // each valid but for the placeholder
		"DATABASE_URL":             "postgres://keysync:CHANGE-ME@postgres:5432/keysync?sslmode=require",
		"STRIPE_WEBHOOK_SECRETS":   "whsec_real0123,whsec_CHANGE-ME",
		"STRIPE_API_KEY":           "rk_live_CHANGE-ME",
		"CRYPTOLENS_TOKEN":         "WyI-change-me-token",
		"KEYSYNC_ADMIN_TOKEN":      "CHANGE-ME-at-least-16-characters",
		"KEYSYNC_ADMIN_READ_TOKEN": "CHANGE_ME_at_least_16_characters",
		"KEYSYNC_SMTP_URL":         "smtp://keysync:CHANGE-ME@mail.example.com:587",
	}
	for _, s := range settings {
		if !s.secret {
			continue
		}
		v, ok := values[s.name]
		if !ok {
			t.Fatalf("%s is a secret without a placeholder case here", s.name)
		}
		withDB := func(vars map[string]string) func(string) string {
			if _, ok := vars["DATABASE_URL"]; !ok && s.name != "DATABASE_URL" {
				vars["DATABASE_URL"] = validDB
			}
			return env(vars)
		}

		// Set directly, through the whole command: exit status 2.
		err := run(t.Context(), []string{"serve"}, withDB(map[string]string{s.name: v}), io.Discard, io.Discard, nil)
		if !errors.Is(err, errUsage) {
			t.Errorf("%s: got %v, want a usage error", s.name, err)
		}
		// And through its _FILE.
		_, ferr := loadConfig(withDB(map[string]string{s.name + "_FILE": "/run/secrets/x"}), func(string) ([]byte, error) { return []byte(v + "\n"), nil })
		for how, err := range map[string]error{"set": err, "from file": ferr} {
			if err == nil || !strings.Contains(err.Error(), s.name+" still holds the deployment files' placeholder") {
				t.Errorf("%s %s: got %v, want an error naming it", s.name, how, err)
			} else if strings.Contains(strings.ToUpper(err.Error()), strings.ToUpper(v)) {
				t.Errorf("%s %s: the error quotes the value: %v", s.name, how, err)
			}
		}
	}
}

func TestConfigReportsEveryError(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(env(map[string]string{"KEYSYNC_BUFFER_DAYS": "x", "LOG_LEVEL": "x"}), noFiles)
	for _, v := range []string{"DATABASE_URL", "KEYSYNC_BUFFER_DAYS", "LOG_LEVEL"} {
		if err == nil || !strings.Contains(err.Error(), v) {
			t.Fatalf("got %v, want it to name %s", err, v)
		}
	}
}

func TestConfigSecretFiles(t *testing.T) {
	t.Parallel()
	files := map[string]string{"/run/secrets/whsec": "whsec_a, whsec_b\n", "/run/secrets/db": validDB + "\n"}
	read := func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, os.ErrNotExist
	}
	c, err := loadConfig(env(map[string]string{
		"DATABASE_URL_FILE":           "/run/secrets/db",
		"STRIPE_WEBHOOK_SECRETS_FILE": "/run/secrets/whsec",
	}), read)
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != validDB || len(c.StripeWebhookSecrets) != 2 || c.StripeWebhookSecrets[1] != "whsec_b" {
		t.Fatalf("got %q and %q, want values from the files", c.DatabaseURL, c.StripeWebhookSecrets)
	}

	_, err = loadConfig(env(map[string]string{"DATABASE_URL": validDB, "DATABASE_URL_FILE": "/run/secrets/db"}), read)
	if err == nil || !strings.Contains(err.Error(), "both set") {
		t.Fatalf("got %v, want a both-set error", err)
	}
	_, err = loadConfig(env(map[string]string{"DATABASE_URL": validDB, "CRYPTOLENS_TOKEN_FILE": "/missing"}), read)
	if err == nil || !strings.Contains(err.Error(), "CRYPTOLENS_TOKEN_FILE: cannot read /missing") {
		t.Fatalf("got %v, want a read error naming the variable and path", err)
	}
	_, err = loadConfig(env(map[string]string{"LOG_LEVEL_FILE": "/run/secrets/db", "DATABASE_URL": validDB}), read)
	if err != nil {
		t.Fatalf("got %v: a _FILE variant of a non-secret is simply not read", err)
	}
}

func TestLogConfigMasksSecrets(t *testing.T) {
	t.Parallel()
	vars := map[string]string{
		"DATABASE_URL":           validDB,
		"STRIPE_API_KEY":         "sk_test_secret-stripe-key",
		"STRIPE_WEBHOOK_SECRETS": "whsec_secret-one,whsec_secret-two",
		"CRYPTOLENS_TOKEN":       "WyIsecret-cryptolens-token",
		"KEYSYNC_ADMIN_TOKEN":    "secret-admin-token-0123456789",
		"KEYSYNC_BUFFER_DAYS":    "7",
	}
	var buf bytes.Buffer
	logConfig(zerolog.New(&buf), env(vars))
	out := buf.String()
	for _, leak := range []string{"dbpassword-xyz", "secret-stripe-key", "secret-one", "secret-two", "secret-cryptolens-token", "secret-admin-token"} {
		if strings.Contains(out, leak) {
			t.Fatalf("config line leaks %q: %s", leak, out)
		}
	}
	for _, want := range []string{`"KEYSYNC_BUFFER_DAYS":"7"`, `"KEYSYNC_LISTEN":":8080"`, `db.internal:5432`, `"STRIPE_API_KEY":"(set, masked)"`, `"KEYSYNC_PLANS_FILE":"(unset)"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("config line lacks %s: %s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 1 {
		t.Fatalf("got %d lines, want the configuration printed once", n)
	}
}

// The start-up line shows what DATABASE_URL connects to, never the value: a password
// can be anywhere in it, and a key/value string is no URL that could be redacted.
func TestLogConfigNeverPrintsTheDatabasePassword(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		url, want string
	}{
		"url":                {validDB, "postgres://keysync@db.internal:5432/keysync"},
		"key/value":          {"host=db.internal port=5433 user=keysync password=dbpassword-xyz dbname=keysync sslmode=disable", "postgres://keysync@db.internal:5433/keysync"},
		"key/value, quoted":  {"host=db.internal user=keysync password='dbpassword-xyz and more' dbname=keysync", "postgres://keysync@db.internal:5432/keysync"},
		"url, ?password=":    {"postgresql://keysync@db.internal/keysync?password=dbpassword-xyz", "postgresql://keysync@db.internal:5432/keysync"},
		"url, ?sslpassword=": {"postgres://keysync@db.internal:5432/keysync?sslmode=require&sslpassword=dbpassword-xyz", "postgres://keysync@db.internal:5432/keysync"},
		"two hosts":          {"postgres://keysync:dbpassword-xyz@db1:5432,db2:5433/keysync", "postgres://keysync@db1:5432,db2:5433/keysync"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			logConfig(zerolog.New(&buf), env(map[string]string{"DATABASE_URL": tc.url}))
			if out := buf.String(); strings.Contains(out, "dbpassword-xyz") || !strings.Contains(out, `"DATABASE_URL":"`+tc.want+`"`) {
				t.Fatalf("got %s, want DATABASE_URL shown as %s and no password", out, tc.want)
			}
		})
	}
}

// Nor does an error say it: neither a value that does not parse nor a server that
// cannot be reached.
func TestDatabaseErrorsNeverPrintThePassword(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"host=db.internal port=notaport user=keysync password=dbpassword-xyz",
		"host=127.0.0.1 port=1 user=keysync password=dbpassword-xyz dbname=keysync connect_timeout=1 sslmode=disable",
		"postgres://keysync@127.0.0.1:1/keysync?password=dbpassword-xyz&sslpassword=dbpassword-xyz&connect_timeout=1",
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), []string{"migrate"}, env(map[string]string{"DATABASE_URL": url, "LOG_FORMAT": "json"}), &stdout, &stderr, nil)
		if err == nil {
			t.Fatalf("%s: got no error, want one", url)
		}
		if all := err.Error() + stdout.String() + stderr.String(); strings.Contains(all, "dbpassword-xyz") {
			t.Fatalf("the password leaks: %s", all)
		}
	}
}

var update = flag.Bool("update", false, "rewrite README.md's configuration table from settings")

// The README's configuration table is settings, rendered: every variable, its default
// and its meaning, word for word, in the same order. -update rewrites the table.
func TestREADMEConfigTable(t *testing.T) {
	const path = "../../README.md"
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, configTableHeader)
	if start < 0 {
		t.Fatalf("README.md has no table starting %q", configTableHeader)
	}
	end := start + strings.Index(text[start:], "\n\n") + 1
	got, want := text[start:end], configTable()

	if *update {
		if err := os.WriteFile(path, []byte(text[:start]+want+text[end:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}

	// Row by row first, so a failure names the variable and the column.
	rows := map[string][2]string{}
	for _, line := range strings.Split(strings.TrimSpace(got), "\n")[2:] {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 3 {
			t.Errorf("README row %q: got %d cells, want 3", line, len(cells))
			continue
		}
		rows[strings.Trim(cells[0], "`")] = [2]string{cells[1], cells[2]}
	}
	for _, s := range settings {
		row, ok := rows[s.name]
		delete(rows, s.name)
		switch {
		case !ok:
			t.Errorf("README's configuration table lacks %s", s.name)
		case row[0] != readmeDefault(s):
			t.Errorf("README's default for %s: got %q, want %q", s.name, row[0], readmeDefault(s))
		case row[1] != readmeMeaning(s):
			t.Errorf("README's meaning of %s:\ngot  %q\nwant %q", s.name, row[1], readmeMeaning(s))
		}
	}
	for name := range rows {
		t.Errorf("README documents %s, which the code does not read", name)
	}
	if !t.Failed() && got != want {
		t.Errorf("README's configuration table differs from settings in order or layout")
	}
	if t.Failed() {
		t.Log("after changing settings, run: go test ./cmd/keysync -run TestREADMEConfigTable -update")
	}
}

const configTableHeader = "| Variable | Default | Meaning |\n"

// configTable renders settings as the README's Markdown table.
func configTable() string {
	var b strings.Builder
	b.WriteString(configTableHeader + "|---|---|---|\n")
	for _, s := range settings {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", s.name, readmeDefault(s), readmeMeaning(s))
	}
	return b.String()
}

func readmeDefault(s setting) string {
	switch {
	case s.shown != "":
		return s.shown
	case s.def != "":
		return "`" + s.def + "`"
	case s.required:
		return "(required)"
	}
	return "(unset)"
}

func readmeMeaning(s setting) string {
	if s.secret {
		return s.doc + " Secret."
	}
	return s.doc
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	for _, args := range [][]string{nil, {"frobnicate"}, {"serve"}} {
		err := run(t.Context(), args, env(nil), &out, &errOut, nil)
		if !errors.Is(err, errUsage) {
			t.Fatalf("%v: got %v, want a usage error", args, err)
		}
	}
	if err := run(t.Context(), []string{"version"}, env(nil), &out, &errOut, nil); err != nil || !strings.Contains(out.String(), "2023-10-16") {
		t.Fatalf("version: got %v, %q", err, out.String())
	}
}
