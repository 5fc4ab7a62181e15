package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"
)

// config is keysync's configuration, read from the environment (12-factor).
type config struct {
	DatabaseURL          string
	DBMaxConns           int
	StripeAPIKey         string
	StripeAPIBase        string
	StripeWebhookSecrets []string
	CryptolensToken      string
	CryptolensAPIBase    string
	CryptolensProductID  int
	TimeLimitedFeature   int
	CryptolensRateLimit  float64
	CryptolensTimeout    time.Duration
	Listen               string
	AdminToken           string
	BufferDays           int
	PlansFile            string
	DryRun               bool
	WriteStripeMetadata  bool
	BlockOnDispute       bool
	BlockOnRefund        bool
	LapseWhenPaused      bool
	StripeRateLimit      float64
	ReconcileInterval    time.Duration
	CatchUpInterval      time.Duration
	EventRetention       time.Duration
	ShutdownTimeout      time.Duration
	JobTimeout           time.Duration
	LogLevel             zerolog.Level
	LogFormat            string
}

// setting is one environment variable: its name, default, whether it is a secret (then
// NAME_FILE is accepted too and the value is never printed), what it means, and how it
// is parsed into the config.
type setting struct {
	name     string
	def      string
	secret   bool
	required bool
	// shown is the README's Default column when def alone would mislead: a default
	// worked out at load, or a variable only some commands require.
	shown string
	// doc is the README's Meaning column (secrets get " Secret." after it); its first
	// sentence explains a missing required variable.
	doc string
	set func(c *config, v string) error
}

// settings is the single list of variables: loading, the start-up print and the
// README's configuration table all come from it. The table is generated: after a
// change here, run
//
//	go test ./cmd/keysync -run TestREADMEConfigTable -update
//
// (the test fails while the README and this list disagree).
var settings = []setting{
	{name: "DATABASE_URL", required: true, secret: true,
		doc: "PostgreSQL connection URL (its password is masked when printed).",
		set: func(c *config, v string) error {
			if _, err := pgconn.ParseConfig(v); err != nil {
				// pgx's message can quote the value, password and all.
				return errors.New("is not a valid PostgreSQL connection string (postgres://user:pass@host:5432/db)")
			}
			c.DatabaseURL = v
			return nil
		}},
	{name: "KEYSYNC_DB_MAX_CONNS", def: "20",
		doc: "Largest number of database connections per replica (webhook ingest, jobs and the admin API share them).",
		set: func(c *config, v string) error { return intIn(&c.DBMaxConns, v, 2, 1000) }},
	{name: "STRIPE_WEBHOOK_SECRETS", secret: true,
		doc: "Comma-separated endpoint signing secrets (`whsec_...`); an event signed with any one is accepted, so secrets rotate without downtime. Unset: no webhook endpoint (polling mode).",
		set: func(c *config, v string) error {
			for _, s := range splitList(v) {
				if !strings.HasPrefix(s, "whsec_") {
					return errors.New("every secret must start with whsec_")
				}
				c.StripeWebhookSecrets = append(c.StripeWebhookSecrets, s)
			}
			return nil
		}},
	{name: "STRIPE_API_KEY", secret: true, shown: "(required to serve)",
		doc: "Stripe secret or restricted key (`sk_...`/`rk_...`). Needs read access to subscriptions, invoices, charges, disputes, customers, products, prices, Checkout Sessions and events, and write access to subscriptions (metadata).",
		set: func(c *config, v string) error {
			if !strings.HasPrefix(v, "sk_") && !strings.HasPrefix(v, "rk_") {
				return errors.New("must be a Stripe secret (sk_...) or restricted (rk_...) key")
			}
			c.StripeAPIKey = v
			return nil
		}},
	{name: "STRIPE_RATE_LIMIT", def: "20",
		doc: "Most Stripe requests per second per replica. Stripe's limit (25 a second in test mode, 100 in live mode, more where Stripe has raised it) is the account's, shared by all replicas and by the vendor's other integrations: keep replicas × this well below it. A Sync reads 2 to 4 objects, so this bounds each replica's Syncs per second.",
		set: func(c *config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || f > 10000 {
				return fmt.Errorf("must be a number of requests per second above 0 and up to 10000, got %q", v)
			}
			c.StripeRateLimit = f
			return nil
		}},
	{name: "STRIPE_API_BASE", def: "https://api.stripe.com",
		doc: "Stripe API base URL (the sandbox's URL in development).",
		set: func(c *config, v string) error { return httpURL(&c.StripeAPIBase, v) }},
	{name: "CRYPTOLENS_TOKEN", secret: true, shown: "(required to serve)",
		doc: "Cryptolens access token with the key methods keysync calls (listed under Cryptolens below).",
		set: func(c *config, v string) error { c.CryptolensToken = v; return nil }},
	{name: "CRYPTOLENS_API_BASE", def: "https://api.cryptolens.io",
		doc: "Cryptolens Web API base URL (the sandbox's URL in development).",
		set: func(c *config, v string) error { return httpURL(&c.CryptolensAPIBase, v) }},
	{name: "CRYPTOLENS_PRODUCT_ID",
		doc: "Cryptolens product that plans-file entries use when they name none. Maps nothing by itself.",
		set: func(c *config, v string) error { return intIn(&c.CryptolensProductID, v, 1, 1<<31-1) }},
	{name: "CRYPTOLENS_TIME_LIMITED_FEATURE", def: "1",
		doc: "The feature (1 to 8) that marks a key as time-limited in the Cryptolens product's feature definitions (Cryptolens' default is F1); `0`: the product has none. Cryptolens enforces expiry (and \"Block Expired Licenses\") only on time-limited keys, so every subscription key gets it on and no plan may turn it off.",
		set: func(c *config, v string) error { return intIn(&c.TimeLimitedFeature, v, 0, 8) }},
	{name: "CRYPTOLENS_RATE_LIMIT", def: "10",
		doc: "Most Cryptolens requests per second per replica (Cryptolens documents no limit; this keeps keysync polite).",
		set: func(c *config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || f > 1000 {
				return fmt.Errorf("must be a number of requests per second above 0 and up to 1000, got %q", v)
			}
			c.CryptolensRateLimit = f
			return nil
		}},
	{name: "CRYPTOLENS_TIMEOUT", def: "15s",
		doc: "Longest wait for one Cryptolens request.",
		set: func(c *config, v string) error { return durationAtLeast(&c.CryptolensTimeout, v, 100*time.Millisecond) }},
	{name: "KEYSYNC_LISTEN", def: ":8080",
		doc: "Address the HTTP server listens on (webhooks, health, metrics, the admin API).",
		set: func(c *config, v string) error {
			if _, _, err := net.SplitHostPort(v); err != nil {
				return errors.New("must be host:port or :port")
			}
			c.Listen = v
			return nil
		}},
	{name: "KEYSYNC_ADMIN_TOKEN", secret: true,
		doc: "Bearer token for the admin API (at least 16 characters). Unset: the admin API is off.",
		set: func(c *config, v string) error {
			if len(v) < 16 {
				return errors.New("must be at least 16 characters")
			}
			c.AdminToken = v
			return nil
		}},
	{name: "KEYSYNC_BUFFER_DAYS", def: "5",
		doc: "Days of license beyond the entitled-through date: the end of the paid period, or of the current period when Stripe grants it unpaid (trials, invoiced customers, paused collection, metered prices). 35 days for a 30-day month.",
		set: func(c *config, v string) error { return intIn(&c.BufferDays, v, 0, 365) }},
	{name: "KEYSYNC_PLANS_FILE",
		doc: "YAML file mapping Stripe prices/products to Cryptolens products, features and seats. Must be readable if set.",
		set: func(c *config, v string) error {
			if _, err := os.Stat(v); err != nil {
				return errors.New("file cannot be read")
			}
			c.PlansFile = v
			return nil
		}},
	{name: "KEYSYNC_WRITE_STRIPE_METADATA", def: "true",
		doc: "Write `cryptolens_key` into the subscription's Stripe metadata after a key is created or adopted.",
		set: func(c *config, v string) error { return boolean(&c.WriteStripeMetadata, v) }},
	{name: "KEYSYNC_ON_DISPUTE", def: "block",
		doc: "`block`: block the key while a dispute on a charge of the subscription's paid invoices of the last 120 days, or on a one-time purchase's payment, is open or lost (a won dispute lifts it). `ignore`: leave it.",
		set: func(c *config, v string) error { return blockOrIgnore(&c.BlockOnDispute, v) }},
	{name: "KEYSYNC_ON_REFUND", def: "ignore",
		doc: "`block`: block the key when the subscription's latest paid invoice, or the one-time purchase, was refunded in full. `ignore`: leave it.",
		set: func(c *config, v string) error { return blockOrIgnore(&c.BlockOnRefund, v) }},
	{name: "KEYSYNC_ON_PAUSED_COLLECTION", def: "keep",
		doc: "`keep`: while a subscription's payment collection is paused (`pause_collection`), its key runs through the current period, as Stripe says the customer keeps access. `lapse`: the key runs out at paid-through + buffer days.",
		set: func(c *config, v string) error {
			switch v {
			case "keep":
				c.LapseWhenPaused = false
			case "lapse":
				c.LapseWhenPaused = true
			default:
				return fmt.Errorf("must be keep or lapse, got %q", v)
			}
			return nil
		}},
	{name: "KEYSYNC_DRY_RUN", def: "false",
		doc: "`true`: run everything and audit it as `dry_run`; send no change to Cryptolens or Stripe.",
		set: func(c *config, v string) error { return boolean(&c.DryRun, v) }},
	{name: "KEYSYNC_RECONCILE_INTERVAL", def: "1h",
		doc: "How often the full sweep against Stripe and Cryptolens runs (one replica runs it). Kept across restarts: a replica that becomes leader sweeps at once when the last completed sweep is older, and `/readyz` and `keysync_sweep_overdue` say when it is older than twice this.",
		set: func(c *config, v string) error { return durationAtLeast(&c.ReconcileInterval, v, time.Minute) }},
	{name: "KEYSYNC_CATCHUP_INTERVAL", shown: "`5m`, or `1m` in polling mode",
		doc: "How often missed events are read from Stripe's Events API (also once at start).",
		set: func(c *config, v string) error { return durationAtLeast(&c.CatchUpInterval, v, 10*time.Second) }},
	{name: "KEYSYNC_EVENT_RETENTION", def: "2160h", shown: "`2160h` (90 days)",
		doc: "How long processed events are kept; pending and failed ones, and the audit log, are kept for good.",
		set: func(c *config, v string) error { return durationAtLeast(&c.EventRetention, v, time.Hour) }},
	{name: "KEYSYNC_SHUTDOWN_TIMEOUT", def: "30s",
		doc: "How long a shutdown waits for in-flight requests and jobs before cancelling them.",
		set: func(c *config, v string) error { return durationAtLeast(&c.ShutdownTimeout, v, time.Second) }},
	{name: "KEYSYNC_JOB_TIMEOUT", def: "2m",
		doc: "Longest run of one job (a Sync). A job left running by a replica that died is worked again 30s after this. Sweeps and catch-ups have an hour.",
		set: func(c *config, v string) error { return durationAtLeast(&c.JobTimeout, v, 5*time.Second) }},
	{name: "LOG_LEVEL", def: "info",
		doc: "`debug`, `info`, `warn` or `error`.",
		set: func(c *config, v string) error {
			lvl, err := zerolog.ParseLevel(v)
			if err != nil || v == "" || lvl > zerolog.ErrorLevel || lvl < zerolog.DebugLevel {
				return errors.New("must be debug, info, warn or error")
			}
			c.LogLevel = lvl
			return nil
		}},
	{name: "LOG_FORMAT", shown: "console on a terminal, else `json`",
		doc: "`json` or `console`.",
		set: func(c *config, v string) error {
			if v != "json" && v != "console" {
				return errors.New("must be json or console")
			}
			c.LogFormat = v
			return nil
		}},
}

// loadConfig reads the configuration through getenv and readFile. It reports every
// invalid variable at once, each error naming its variable; no error contains a
// secret's value.
func loadConfig(getenv func(string) string, readFile func(string) ([]byte, error)) (config, error) {
	// Every variable is read even after one fails, so that one run reports all the
	// mistakes; defaults fill in what is unset.
	var c config
	var errs []error
	for _, s := range settings {
		v, err := lookup(s, getenv, readFile)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if v == "" {
			v = s.def
		}
		if v == "" {
			if s.required {
				errs = append(errs, fmt.Errorf("%s is required: %s", s.name, firstSentence(s.doc)))
			}
			continue
		}
		if err := s.set(&c, v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
		}
	}

	// Two defaults depend on more than one variable or on the process: they are
	// worked out after the loop.
	if c.CatchUpInterval == 0 {
		c.CatchUpInterval = 5 * time.Minute
		if len(c.StripeWebhookSecrets) == 0 {
			c.CatchUpInterval = time.Minute // polling mode: catch-up is the only source
		}
	}
	if c.LogFormat == "" {
		c.LogFormat = "json"
		if isTerminal(os.Stderr) {
			c.LogFormat = "console"
		}
	}
	return c, errors.Join(errs...)
}

// lookup returns a variable's value, reading NAME_FILE for secrets.
func lookup(s setting, getenv func(string) string, readFile func(string) ([]byte, error)) (string, error) {
	v := getenv(s.name)
	if !s.secret {
		return strings.TrimSpace(v), nil
	}
	path := getenv(s.name + "_FILE")
	if path == "" {
		return strings.TrimSpace(v), nil
	}
	if v != "" {
		return "", fmt.Errorf("%s and %s_FILE are both set: use one", s.name, s.name)
	}
	b, err := readFile(path)
	if err != nil {
		// The path is not secret; the file's content is.
		return "", fmt.Errorf("%s_FILE: cannot read %s", s.name, path)
	}
	return strings.TrimSpace(string(b)), nil
}

// logConfig prints the configuration once, secrets masked.
func logConfig(log zerolog.Logger, getenv func(string) string) {
	ev := log.Info()
	for _, s := range settings {
		v := getenv(s.name)
		if s.secret && getenv(s.name+"_FILE") != "" {
			v = "(from file)"
		}
		switch {
		case v == "" && s.def != "":
			v = s.def
		case v == "":
			v = "(unset)"
		case s.name == "DATABASE_URL" && v != "(from file)":
			v = redactURL(v)
		case s.secret && v != "(from file)":
			v = "(set, masked)"
		}
		ev = ev.Str(s.name, v)
	}
	ev.Msg("configuration")
}

// redactURL masks a URL's password; an unparseable value is masked whole.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(set, masked)"
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

func firstSentence(s string) string {
	if i := strings.Index(s, ". "); i >= 0 {
		return s[:i+1]
	}
	return s
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func intIn(dst *int, v string, lo, hi int) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return fmt.Errorf("must be a whole number from %d to %d, got %q", lo, hi, v)
	}
	*dst = n
	return nil
}

func blockOrIgnore(dst *bool, v string) error {
	switch v {
	case "block":
		*dst = true
	case "ignore":
		*dst = false
	default:
		return fmt.Errorf("must be block or ignore, got %q", v)
	}
	return nil
}

func boolean(dst *bool, v string) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("must be true or false, got %q", v)
	}
	*dst = b
	return nil
}

func durationAtLeast(dst *time.Duration, v string, min time.Duration) error {
	d, err := time.ParseDuration(v)
	if err != nil || d < min {
		return fmt.Errorf("must be a duration of at least %s (like 90s, 5m, 1h), got %q", min, v)
	}
	*dst = d
	return nil
}

func httpURL(dst *string, v string) error {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("must be an http(s) URL, got %q", v)
	}
	*dst = strings.TrimRight(v, "/")
	return nil
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
