package main

import (
	"errors"
	"fmt"
	htmltemplate "html/template"
	"net"
	netmail "net/mail"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/delivery"
)

// config is keysync's configuration, read from the environment (12-factor).
type config struct {
	DatabaseURL          string
	DBMaxConns           int
	Migrate              bool
	RuntimeRole          string
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
	AdminListen          string // "" when off
	AdminToken           string
	AdminReadToken       string
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

	// The customer's side (package delivery): the license page, the e-mail of keys.
	LicensePageMaxAge time.Duration
	LicenseTemplate   *htmltemplate.Template // nil: delivery's own
	LicenseRateLimit  int
	PortalURL         string
	ClientIPHeader    string
	SMTP              *delivery.SMTPConfig // nil: no e-mail
	EmailFrom         string
	EmailTemplates    *delivery.EmailTemplates // nil: delivery's own
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
		doc: "PostgreSQL connection URL or key/value string (`host=... dbname=...`); only its user, host, port and database are printed.",
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
	{name: "KEYSYNC_MIGRATE", def: "true",
		doc: "`true`: `serve` applies pending migrations at start (one machine, one database role). `false`: `serve` only checks that the schema is current and refuses to start if it is not; `keysync migrate` runs first as the migration role (a Kubernetes Job, the systemd unit's `ExecStartPre=`) and serve runs as the runtime role, which may not migrate (see Database roles).",
		set: func(c *config, v string) error { return boolean(&c.Migrate, v) }},
	{name: "KEYSYNC_RUNTIME_ROLE",
		doc: "Database role that `serve` runs as when it is not the migration role. After migrating, `keysync migrate` (and `serve` with `KEYSYNC_MIGRATE=true`) grants it reading and writing rows and only adding to the audit log, and refuses a role that could rewrite the audit log (see Database roles). Unset: no grants.",
		set: func(c *config, v string) error {
			// Postgres cuts names at 63 bytes: a longer one would grant to another role.
			if len(v) > 63 {
				return errors.New("must be a role name of at most 63 bytes")
			}
			c.RuntimeRole = v
			return nil
		}},
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
		doc: "Most Stripe requests per second per replica. Stripe's limit (25 a second in test mode, 100 in live mode, more where Stripe has raised it) is the account's, shared by all replicas and by the vendor's other integrations: keep replicas × this well below it. A Sync reads 2 to 4 objects, so this bounds each replica's Syncs per second. The license page's reads of Checkout Sessions, which anyone can ask for, take at most a quarter of it (503 past that).",
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
		doc: "Address of the public listener: Stripe's webhooks (`POST /webhooks/stripe`), the health probes (`/healthz`, `/readyz`), and the customer's license page (`GET /license`) and lost-keys form (`POST /license/resend`, with e-mail). Nothing else is served on it.",
		set: func(c *config, v string) error { return hostPort(&c.Listen, v) }},
	{name: "KEYSYNC_ADMIN_LISTEN", def: "127.0.0.1:8081",
		doc: "Address of the admin listener: the admin API (`/api/v1/`), the operator console (`/console/`) and Prometheus' `/metrics`. Loopback by default; open it only to operators and Prometheus (in Kubernetes, `:8081` behind a NetworkPolicy). `off`: no admin listener, so no metrics, no admin API and no console (then no admin token may be set).",
		set: func(c *config, v string) error {
			if v == "off" {
				c.AdminListen = ""
				return nil
			}
			return hostPort(&c.AdminListen, v)
		}},
	{name: "KEYSYNC_ADMIN_TOKEN", secret: true,
		doc: "Token of the admin API (a bearer token) and the operator console (its login), at least 16 characters: everything, including sync, replay and reconcile, which the audit log records as by `api:admin` or `console:admin`. Unset, with no read token either: the admin API and the console are off.",
		set: func(c *config, v string) error { return adminToken(&c.AdminToken, v) }},
	{name: "KEYSYNC_ADMIN_READ_TOKEN", secret: true,
		doc: "Token that may only read the admin API and the console (at least 16 characters): status, the audit log, failed events, the console's pages. Sync, replay and reconcile answer it 403, and the console shows it no buttons.",
		set: func(c *config, v string) error { return adminToken(&c.AdminReadToken, v) }},
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
	{name: "KEYSYNC_LICENSE_PAGE_MAX_AGE", def: "168h", shown: "`168h` (7 days)",
		doc: "How long after a Checkout its license page (`GET /license?session_id=...`, Checkout's `success_url`) shows the keys; later it answers `410`.",
		set: func(c *config, v string) error { return durationAtLeast(&c.LicensePageMaxAge, v, time.Minute) }},
	{name: "KEYSYNC_LICENSE_TEMPLATE",
		doc: "An `html/template` file that replaces the license page's look (the data it gets: docs/license-page.md). Rendered once for every status at start: a mistake stops start-up.",
		set: func(c *config, v string) error {
			t, err := delivery.ParsePageTemplate(v)
			c.LicenseTemplate = t
			return err
		}},
	{name: "KEYSYNC_LICENSE_RATE_LIMIT", def: "30",
		doc: "Requests a minute each client may make to the license page (10 at once; its own refreshes take 12). The lost-keys form allows 5 a minute.",
		set: func(c *config, v string) error { return intIn(&c.LicenseRateLimit, v, 1, 10000) }},
	{name: "KEYSYNC_PORTAL_URL",
		doc: "The customer portal's address (for example a Stripe customer portal login link), linked from the license page and the e-mails. Unset: no link.",
		set: func(c *config, v string) error { return httpURL(&c.PortalURL, v) }},
	{name: "KEYSYNC_CLIENT_IP_HEADER",
		doc: "The header in which a proxy or load balancer in front of keysync passes the client's address (such as `X-Forwarded-For`; its last address counts), for the per-client limits of the license page and of the webhook bodies held at once. Set it only when every request comes through that proxy: keysync trusts the header's last address. Unset: the connection's address.",
		set: func(c *config, v string) error {
			if strings.ContainsAny(v, " :\t") {
				return errors.New("must be a header name")
			}
			c.ClientIPHeader = v
			return nil
		}},
	{name: "KEYSYNC_SMTP_URL", secret: true,
		doc: "SMTP server for e-mailing keys: `smtp://user:password@host:587` (STARTTLS required; `?tls=opportunistic`, or `?tls=none` for a relay on the same host, to which alone a password goes in plain text) or `smtps://user:password@host:465`. With `KEYSYNC_EMAIL_FROM`, each new key is e-mailed to its Stripe customer once and the lost-keys form (`POST /license/resend`) is on. Unset: no e-mail. Its password is masked when printed.",
		set: func(c *config, v string) error {
			sc, err := delivery.ParseSMTPURL(v)
			if err != nil {
				return err
			}
			c.SMTP = &sc
			return nil
		}},
	{name: "KEYSYNC_EMAIL_FROM",
		doc: "Sender of the e-mails: `shop@example.com` or `Example Shop <shop@example.com>`. Needed with `KEYSYNC_SMTP_URL`.",
		set: func(c *config, v string) error {
			if _, err := netmail.ParseAddress(v); err != nil {
				return errors.New("must be an e-mail address (shop@example.com or Example Shop <shop@example.com>)")
			}
			c.EmailFrom = v
			return nil
		}},
	{name: "KEYSYNC_EMAIL_TEMPLATE_DIR",
		doc: "A directory of replacements for the e-mail's `subject.txt`, `body.txt` (`text/template`) and `body.html` (`html/template`); a file it lacks keeps keysync's own. Rendered at start: a mistake stops start-up.",
		set: func(c *config, v string) error {
			t, err := delivery.ParseEmailTemplates(v)
			c.EmailTemplates = t
			return err
		}},
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
		if s.secret && isPlaceholder(v) {
			// The deployment files ship placeholders: starting with one would fail
			// later and less clearly (or, for a token, be guessable).
			errs = append(errs, fmt.Errorf("%s still holds the deployment files' placeholder (CHANGE-ME): set the real value", s.name))
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

	// The listeners and tokens are checked together: a token with nowhere to be
	// served, or one token for both roles, is a mistake.
	errs = append(errs, checkAdmin(c)...)

	// E-mail needs a server and a sender: one without the other is a mistake.
	if (c.SMTP != nil) != (c.EmailFrom != "") {
		errs = append(errs, errors.New("KEYSYNC_SMTP_URL and KEYSYNC_EMAIL_FROM: set both to e-mail keys, or neither"))
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

// checkAdmin returns the mistakes in how the admin listener and tokens go together.
func checkAdmin(c config) []error {
	var errs []error
	if c.AdminListen == "" && (c.AdminToken != "" || c.AdminReadToken != "") {
		errs = append(errs, errors.New("KEYSYNC_ADMIN_LISTEN is off, but an admin token is set: the admin API is served only on the admin listener"))
	}
	if c.AdminListen != "" && c.AdminListen == c.Listen && !strings.HasSuffix(c.Listen, ":0") {
		errs = append(errs, errors.New("KEYSYNC_ADMIN_LISTEN must differ from KEYSYNC_LISTEN: the admin API and metrics are never served with the webhooks"))
	}
	if c.AdminToken != "" && c.AdminToken == c.AdminReadToken {
		errs = append(errs, errors.New("KEYSYNC_ADMIN_READ_TOKEN must differ from KEYSYNC_ADMIN_TOKEN"))
	}
	return errs
}

// placeholders are what the deployment files put where a secret goes.
var placeholders = []string{"CHANGE-ME", "CHANGE_ME", "CHANGEME"}

// isPlaceholder reports whether v still holds a deployment file's placeholder.
func isPlaceholder(v string) bool {
	up := strings.ToUpper(v)
	for _, p := range placeholders {
		if strings.Contains(up, p) {
			return true
		}
	}
	return false
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
			v = describeDB(v)
		case s.name == "KEYSYNC_SMTP_URL" && v != "(from file)":
			v = redactSMTP(v)
		case s.secret && v != "(from file)":
			v = "(set, masked)"
		}
		ev = ev.Str(s.name, v)
	}
	ev.Msg("configuration")
}

// describeDB says what a DATABASE_URL connects to (scheme, user, hosts and ports,
// database) from its parsed configuration, never from the value itself: a password can
// sit anywhere in it (the userinfo, ?password= or ?sslpassword=, or password= in a
// key/value string, which is no URL at all). An unparseable value is masked whole.
func describeDB(raw string) string {
	cfg, err := pgconn.ParseConfig(raw)
	if err != nil {
		return "(set, masked)"
	}
	scheme := "postgres"
	if strings.HasPrefix(raw, "postgresql://") {
		scheme = "postgresql"
	}
	// The fallbacks are the other hosts, and each host again with another TLS mode.
	hosts := []string{net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))}
	for _, fb := range cfg.Fallbacks {
		if h := net.JoinHostPort(fb.Host, strconv.Itoa(int(fb.Port))); !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	u := url.URL{Scheme: scheme, User: url.User(cfg.User), Host: strings.Join(hosts, ","), Path: "/" + cfg.Database}
	return u.String()
}

// redactSMTP shows an SMTP URL's scheme, user, host, port and options with the
// password masked; a URL that does not parse is only said to be set.
func redactSMTP(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(set, masked)"
	}
	q := u.Query()
	for _, k := range []string{"password", "pass"} {
		if q.Has(k) {
			q.Set(k, "xxxxx")
		}
	}
	u.RawQuery = q.Encode()
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

func hostPort(dst *string, v string) error {
	if _, _, err := net.SplitHostPort(v); err != nil {
		return errors.New("must be host:port or :port")
	}
	*dst = v
	return nil
}

func adminToken(dst *string, v string) error {
	if len(v) < 16 {
		return errors.New("must be at least 16 characters")
	}
	*dst = v
	return nil
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
