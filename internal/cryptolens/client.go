// Package cryptolens is a client for the Cryptolens Web API 3 methods keysync uses:
// form-encoded POSTs with the access token as a parameter, answered with a
// {result, message, ...} envelope whatever the HTTP status.
package cryptolens

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"
)

// DefaultBaseURL is Cryptolens' API host.
const DefaultBaseURL = "https://api.cryptolens.io"

// PageSize is how many keys GetKeys returns a page.
const PageSize = 99

// Config configures a Client.
type Config struct {
	// BaseURL is the API host (default DefaultBaseURL); the simulator's URL in tests.
	BaseURL string
	// Token is the access token. It is sent as the token parameter and never appears
	// in an error or a log line.
	Token string
	// HTTPClient sends the requests (default: a client with no timeout of its own;
	// Timeout bounds each request).
	HTTPClient *http.Client
	// Timeout bounds one request (default 15s).
	Timeout time.Duration
	// RateLimit is the most requests per second (default 10; Cryptolens documents no
	// limit, so this keeps keysync a polite client). Burst defaults to RateLimit.
	RateLimit float64
	Burst     int
	// ReadRetries is how often GetKey and GetKeys are retried after a retryable
	// failure (default 2; negative: never). Mutating calls are never retried here: a
	// timeout may hide an applied change, so the caller reads the key again first.
	ReadRetries int
	// RetryBackoff is the first retry's delay, doubled each time, with jitter (default 200ms).
	RetryBackoff time.Duration
	// Logger receives one debug line per call and a warning per retryable failure.
	Logger zerolog.Logger
	// Observe, if set, is told each call's method, outcome ("ok" or the error kind) and
	// duration (for metrics).
	Observe func(method, outcome string, took time.Duration)
}

// Client calls the Cryptolens Web API. It is safe for concurrent use.
type Client struct {
	base    string
	token   string
	http    *http.Client
	timeout time.Duration
	limiter *rate.Limiter
	retries int
	backoff time.Duration
	log     zerolog.Logger
	observe func(method, outcome string, took time.Duration)
	// skew is Cryptolens' clock minus this host's (nanoseconds), read off the Date
	// header of its latest answer.
	skew       atomic.Int64
	skewWarned atomic.Bool
}

// MaxClockSkew is how far this host's clock may be from Cryptolens' before Now follows
// Cryptolens'. Below it the difference is network time and the Date header's whole
// seconds.
const MaxClockSkew = time.Minute

// Now is the current time on Cryptolens' clock. Cryptolens counts CreateKey's Period
// and an expired key's ExtendLicense from its own today, so keysync decides with its
// clock: this host's, unless the Date headers of Cryptolens' answers show it off by
// more than MaxClockSkew (a drifting host, or the sandbox's test clock).
func (c *Client) Now() time.Time {
	skew := time.Duration(c.skew.Load())
	if skew > -MaxClockSkew && skew < MaxClockSkew {
		return time.Now()
	}
	return time.Now().Add(skew)
}

// observeClock records the skew from an answer's Date header.
func (c *Client) observeClock(date string) {
	t, err := http.ParseTime(date)
	if err != nil {
		return
	}
	skew := time.Until(t)
	c.skew.Store(int64(skew))
	if (skew >= MaxClockSkew || skew <= -MaxClockSkew) && !c.skewWarned.Swap(true) {
		c.log.Warn().Dur("skew", skew.Round(time.Second)).
			Msg("Cryptolens' clock differs from this host's by more than a minute; keysync counts days with Cryptolens' clock")
	}
}

// New returns a Client. It returns an error when the token is empty or the base URL is
// not an http(s) URL.
func New(cfg Config) (*Client, error) {
	if cfg.Token == "" {
		return nil, errors.New("cryptolens: no access token")
	}
	base := cfg.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("cryptolens: base URL must be an http(s) URL")
	}
	c := &Client{
		base:    strings.TrimRight(base, "/"),
		token:   cfg.Token,
		http:    cfg.HTTPClient,
		timeout: cfg.Timeout,
		retries: cfg.ReadRetries,
		backoff: cfg.RetryBackoff,
		log:     cfg.Logger,
		observe: cfg.Observe,
	}
	if c.http == nil {
		c.http = &http.Client{}
	}
	if c.timeout <= 0 {
		c.timeout = 15 * time.Second
	}
	if c.retries == 0 {
		c.retries = 2
	}
	if c.backoff <= 0 {
		c.backoff = 200 * time.Millisecond
	}
	limit, burst := rate.Limit(cfg.RateLimit), cfg.Burst
	if cfg.RateLimit == 0 {
		limit = 10
	}
	if cfg.RateLimit < 0 {
		limit = rate.Inf
	}
	if burst <= 0 {
		burst = max(1, int(limit))
	}
	c.limiter = rate.NewLimiter(limit, burst)
	return c, nil
}

// Features holds F1..F8: Features[0] is F1.
type Features [8]bool

// Key is a license key as GetKey and GetKeys return it.
type Key struct {
	ProductID       int
	ID              int64
	Key             string
	Created         time.Time
	Expires         time.Time
	Period          int
	Features        Features
	Notes           string
	Block           bool
	GlobalID        int64
	Customer        *Customer
	MaxNoOfMachines int
	// ActivatedMachines counts the machines activated on the key.
	ActivatedMachines int
	TrialActivation   bool
}

// Customer is a key's customer.
type Customer struct {
	ID          int    `json:"id"`
	Name        string `json:"name"`
	Email       string `json:"email"`
	CompanyName string `json:"companyName"`
}

// wireKey is the key's JSON (lowerCamelCase, matched case-insensitively by encoding/json).
type wireKey struct {
	ProductID         int             `json:"productId"`
	ID                int64           `json:"id"`
	Key               string          `json:"key"`
	Created           Time            `json:"created"`
	Expires           Time            `json:"expires"`
	Period            int             `json:"period"`
	F1                bool            `json:"f1"`
	F2                bool            `json:"f2"`
	F3                bool            `json:"f3"`
	F4                bool            `json:"f4"`
	F5                bool            `json:"f5"`
	F6                bool            `json:"f6"`
	F7                bool            `json:"f7"`
	F8                bool            `json:"f8"`
	Notes             string          `json:"notes"`
	Block             bool            `json:"block"`
	GlobalID          int64           `json:"globalId"`
	Customer          *Customer       `json:"customer"`
	MaxNoOfMachines   int             `json:"maxNoOfMachines"`
	ActivatedMachines json.RawMessage `json:"activatedMachines"`
	TrialActivation   bool            `json:"trialActivation"`
}

func (w wireKey) key() Key {
	k := Key{
		ProductID: w.ProductID, ID: w.ID, Key: w.Key, Created: w.Created.Time, Expires: w.Expires.Time,
		Period: w.Period, Features: Features{w.F1, w.F2, w.F3, w.F4, w.F5, w.F6, w.F7, w.F8},
		Notes: w.Notes, Block: w.Block, GlobalID: w.GlobalID, Customer: w.Customer,
		MaxNoOfMachines: w.MaxNoOfMachines, TrialActivation: w.TrialActivation,
	}
	var machines []json.RawMessage
	if json.Unmarshal(w.ActivatedMachines, &machines) == nil {
		k.ActivatedMachines = len(machines)
	}
	return k
}

// Time is a Cryptolens date: "2026-01-31T00:00:00", without an offset, read as UTC.
type Time struct{ time.Time }

var timeLayouts = []string{"2006-01-02T15:04:05.999999999", time.RFC3339Nano, "2006-01-02"}

// UnmarshalJSON reads a Cryptolens date, or null.
func (t *Time) UnmarshalJSON(b []byte) error {
	s := string(b)
	if s == "null" || s == `""` {
		t.Time = time.Time{}
		return nil
	}
	s, err := strconv.Unquote(s)
	if err != nil {
		return fmt.Errorf("date %s: not a string", b)
	}
	for _, layout := range timeLayouts {
		if v, err := time.Parse(layout, s); err == nil {
			t.Time = v.UTC()
			return nil
		}
	}
	return fmt.Errorf("date %q: unknown format", s)
}

// CreateKeyParams are CreateKey's parameters.
type CreateKeyParams struct {
	ProductID int
	// Period is the number of days from now to the key's expiry.
	Period          int
	Features        Features
	Notes           string
	MaxNoOfMachines int
	Block           bool
	// CustomerID associates an existing customer (0: none).
	CustomerID int
	// AddOrUseExistingCustomer reuses the customer with Email, or creates one with Name,
	// Email and CompanyName. The token needs the AddCustomer permission too.
	AddOrUseExistingCustomer bool
	Name, Email, CompanyName string
}

// CreatedKey is CreateKey's result.
type CreatedKey struct {
	Key        string
	CustomerID int
}

// CreateKey creates a key. It is not idempotent: a retry after an ErrUnreachable may
// create a second key, so callers look for their marker in Notes (GetKeys) first.
func (c *Client) CreateKey(ctx context.Context, p CreateKeyParams) (CreatedKey, error) {
	if p.ProductID <= 0 || p.Period < 0 || p.MaxNoOfMachines < 0 {
		return CreatedKey{}, invalid("CreateKey", "ProductId must be positive, Period and MaxNoOfMachines not negative")
	}
	v := url.Values{}
	v.Set("ProductId", strconv.Itoa(p.ProductID))
	v.Set("Period", strconv.Itoa(p.Period))
	for i, on := range p.Features {
		v.Set("F"+strconv.Itoa(i+1), strconv.FormatBool(on))
	}
	if p.Notes != "" {
		v.Set("Notes", p.Notes)
	}
	v.Set("MaxNoOfMachines", strconv.Itoa(p.MaxNoOfMachines))
	v.Set("Block", strconv.FormatBool(p.Block))
	if p.CustomerID > 0 {
		v.Set("CustomerId", strconv.Itoa(p.CustomerID))
	}
	if p.AddOrUseExistingCustomer {
		v.Set("AddOrUseExistingCustomer", "true")
		v.Set("Name", p.Name)
		v.Set("Email", p.Email)
		if p.CompanyName != "" {
			v.Set("CompanyName", p.CompanyName)
		}
	}
	var out struct {
		Key        string `json:"key"`
		CustomerID int    `json:"customerId"`
	}
	if _, err := c.call(ctx, "key", "CreateKey", v, &out, false); err != nil {
		return CreatedKey{}, err
	}
	if out.Key == "" {
		return CreatedKey{}, &Error{Method: "CreateKey", Kind: ErrServer, Message: "success without a key"}
	}
	return CreatedKey(out), nil
}

// GetKey returns a key. It returns an error matching ErrKeyNotFound when there is none.
func (c *Client) GetKey(ctx context.Context, productID int, key string) (Key, error) {
	if productID <= 0 || key == "" {
		return Key{}, invalid("GetKey", "ProductId and Key are required")
	}
	v := url.Values{}
	v.Set("ProductId", strconv.Itoa(productID))
	v.Set("Key", key)
	var out struct {
		LicenseKey *wireKey `json:"licenseKey"`
	}
	if _, err := c.call(ctx, "key", "GetKey", v, &out, true); err != nil {
		return Key{}, err
	}
	if out.LicenseKey == nil {
		return Key{}, &Error{Method: "GetKey", Kind: ErrServer, Message: "success without a licenseKey"}
	}
	return out.LicenseKey.key(), nil
}

// KeysPage is one page of GetKeys.
type KeysPage struct {
	Keys      []Key
	Returned  int
	Total     int
	PageCount int
}

// GetKeys returns page (1-based) of the product's keys that match search (a Cryptolens
// query such as `notes.contains("stripe:sub_1")`; empty: all), PageSize a page.
func (c *Client) GetKeys(ctx context.Context, productID, page int, search string) (KeysPage, error) {
	if productID <= 0 || page < 1 {
		return KeysPage{}, invalid("GetKeys", "ProductId must be positive and Page at least 1")
	}
	v := url.Values{}
	v.Set("ProductId", strconv.Itoa(productID))
	v.Set("Page", strconv.Itoa(page))
	if search != "" {
		v.Set("SearchQuery", search)
	}
	var out struct {
		LicenseKeys []wireKey `json:"licenseKeys"`
		Returned    int       `json:"returned"`
		Total       int       `json:"total"`
		PageCount   int       `json:"pageCount"`
	}
	if _, err := c.call(ctx, "product", "GetKeys", v, &out, true); err != nil {
		return KeysPage{}, err
	}
	p := KeysPage{Returned: out.Returned, Total: out.Total, PageCount: out.PageCount, Keys: make([]Key, len(out.LicenseKeys))}
	for i, w := range out.LicenseKeys {
		p.Keys[i] = w.key()
	}
	return p, nil
}

// AllKeys yields every key of the product that matches search, page by page, so memory
// does not grow with the product. It stops at the first error, which it yields.
func (c *Client) AllKeys(ctx context.Context, productID int, search string) iter.Seq2[Key, error] {
	return func(yield func(Key, error) bool) {
		for page := 1; ; page++ {
			p, err := c.GetKeys(ctx, productID, page, search)
			if err != nil {
				yield(Key{}, err)
				return
			}
			for _, k := range p.Keys {
				if !yield(k, nil) {
					return
				}
			}
			if page >= p.PageCount || len(p.Keys) == 0 {
				return
			}
		}
	}
}

// ExtendLicense adds days to the key's expiry, or to now when it has expired; negative
// days shorten it. It is not idempotent: callers compute days from a fresh GetKey.
// newKey is the key's new string when the product uses the legacy SKGL algorithm and
// the change gave the key a new one (Cryptolens answers it in message), "" otherwise:
// from then on only the new string names the key.
func (c *Client) ExtendLicense(ctx context.Context, productID int, key string, days int) (newKey string, err error) {
	v, err := keyParams("ExtendLicense", productID, key)
	if err != nil {
		return "", err
	}
	v.Set("NoOfDays", strconv.Itoa(days))
	msg, err := c.call(ctx, "key", "ExtendLicense", v, nil, false)
	if err != nil {
		return "", err
	}
	return changedKey(msg, key), nil
}

// changedKey reads the new key string a change to an SKGL key answers in message.
// ExtendLicense documents message as "either null or the new key (if using SKGL)"; for
// AddFeature and RemoveFeature it is undocumented. Only a message shaped like a key
// string (letters, digits and dashes) that differs from the old one counts, so that a
// message of some other kind can never replace a key. It returns "" for no change.
func changedKey(msg, old string) string {
	msg = strings.TrimSpace(msg)
	if msg == "" || msg == old {
		return ""
	}
	for _, r := range msg {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return ""
		}
	}
	return msg
}

// BlockKey blocks the key. changed is false when it was blocked already ("Not changed").
func (c *Client) BlockKey(ctx context.Context, productID int, key string) (changed bool, err error) {
	return c.toggle(ctx, "BlockKey", productID, key)
}

// UnblockKey unblocks the key. changed is false when it was not blocked.
func (c *Client) UnblockKey(ctx context.Context, productID int, key string) (changed bool, err error) {
	return c.toggle(ctx, "UnblockKey", productID, key)
}

func (c *Client) toggle(ctx context.Context, method string, productID int, key string) (bool, error) {
	v, err := keyParams(method, productID, key)
	if err != nil {
		return false, err
	}
	msg, err := c.call(ctx, "key", method, v, nil, false)
	if err != nil {
		return false, err
	}
	return !strings.EqualFold(strings.TrimSpace(msg), "not changed"), nil
}

// AddFeature sets feature (1..8) on the key. newKey is the key's new string when an
// SKGL key changed strings (see ExtendLicense), "" otherwise.
func (c *Client) AddFeature(ctx context.Context, productID int, key string, feature int) (newKey string, err error) {
	return c.feature(ctx, "AddFeature", productID, key, feature)
}

// RemoveFeature clears feature (1..8) on the key. newKey is the key's new string when an
// SKGL key changed strings (see ExtendLicense), "" otherwise.
func (c *Client) RemoveFeature(ctx context.Context, productID int, key string, feature int) (newKey string, err error) {
	return c.feature(ctx, "RemoveFeature", productID, key, feature)
}

func (c *Client) feature(ctx context.Context, method string, productID int, key string, feature int) (string, error) {
	if feature < 1 || feature > 8 {
		return "", invalid(method, "Feature must be 1..8")
	}
	v, err := keyParams(method, productID, key)
	if err != nil {
		return "", err
	}
	v.Set("Feature", strconv.Itoa(feature))
	msg, err := c.call(ctx, "key", method, v, nil, false)
	if err != nil {
		return "", err
	}
	return changedKey(msg, key), nil
}

// MachineLockLimit sets how many machines may activate the key (0: unlimited).
// Lowering it does not deactivate machines already activated.
func (c *Client) MachineLockLimit(ctx context.Context, productID int, key string, machines int) error {
	if machines < 0 {
		return invalid("MachineLockLimit", "NumberOfMachines must not be negative")
	}
	v, err := keyParams("MachineLockLimit", productID, key)
	if err != nil {
		return err
	}
	v.Set("NumberOfMachines", strconv.Itoa(machines))
	_, err = c.call(ctx, "key", "MachineLockLimit", v, nil, false)
	return err
}

func keyParams(method string, productID int, key string) (url.Values, error) {
	if productID <= 0 || key == "" {
		return nil, invalid(method, "ProductId and Key are required")
	}
	v := url.Values{}
	v.Set("ProductId", strconv.Itoa(productID))
	v.Set("Key", key)
	return v, nil
}

func invalid(method, why string) error {
	return &Error{Method: method, Kind: ErrInvalidInput, Message: why}
}

// call sends one method call, retrying reads, and decodes a successful answer into out.
// It returns Cryptolens' message.
func (c *Client) call(ctx context.Context, group, method string, params url.Values, out any, read bool) (string, error) {
	attempts := 1
	if read && c.retries > 0 {
		attempts += c.retries
	}
	var lastErr error
	for attempt := range attempts {
		if attempt > 0 {
			if err := c.sleep(ctx, attempt); err != nil {
				return "", lastErr
			}
		}
		msg, err := c.once(ctx, group, method, params, out)
		if err == nil || !IsRetryable(err) || ctx.Err() != nil {
			return msg, err
		}
		lastErr = err
	}
	return "", lastErr
}

func (c *Client) sleep(ctx context.Context, attempt int) error {
	d := min(c.backoff<<(attempt-1), 5*time.Second)
	d = d/2 + rand.N(d/2+1) // jitter: 50-100% of the step
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// envelope is the part of every answer the client reads first.
type envelope struct {
	Result  *int    `json:"result"`
	Message *string `json:"message"`
}

func (c *Client) once(ctx context.Context, group, method string, params url.Values, out any) (string, error) {
	start := time.Now()
	ev := c.log.Debug().Str("method", method).Str("product_id", params.Get("ProductId"))
	if k := params.Get("Key"); k != "" {
		ev = ev.Str("license_key", KeyFingerprint(k))
	}
	msg, status, err := c.send(ctx, group, method, params, out)
	if c.observe != nil {
		outcome := "ok"
		var e *Error
		if errors.As(err, &e) {
			outcome = strings.TrimPrefix(e.Kind.Error(), "cryptolens: ")
		}
		c.observe(method, outcome, time.Since(start))
	}
	if err != nil {
		if IsRetryable(err) {
			c.log.Warn().Str("method", method).Int("status", status).Err(err).Dur("took", time.Since(start)).
				Msg("cryptolens call failed; retryable")
		}
		ev.Int("status", status).Err(err).Dur("took", time.Since(start)).Msg("cryptolens call failed")
		return "", err
	}
	ev.Int("status", status).Dur("took", time.Since(start)).Msg("cryptolens call")
	return msg, nil
}

func (c *Client) send(ctx context.Context, group, method string, params url.Values, out any) (string, int, error) {
	fail := func(status int, kind error, message string, cause error) (string, int, error) {
		return "", status, &Error{Method: method, Status: status, Kind: kind, Message: c.scrubText(message), cause: c.scrub(cause)}
	}
	if err := c.limiter.Wait(ctx); err != nil {
		return fail(0, ErrUnreachable, "", err)
	}
	form := make(url.Values, len(params)+1)
	for k, v := range params {
		form[k] = v
	}
	form.Set("token", c.token)
	reqCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, c.base+"/api/"+group+"/"+method, strings.NewReader(form.Encode()))
	if err != nil {
		return fail(0, ErrInvalidInput, "", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fail(0, ErrUnreachable, "", err)
	}
	defer resp.Body.Close()
	c.observeClock(resp.Header.Get("Date"))
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fail(resp.StatusCode, ErrUnreachable, "", err)
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		return fail(resp.StatusCode, ErrRateLimited, "", nil)
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil || env.Result == nil {
		// In rare cases Cryptolens answers with only a message: a server error.
		msg := ""
		if env.Message != nil {
			msg = *env.Message
		}
		return fail(resp.StatusCode, ErrServer, msg, errors.New("answer is not a Cryptolens result"))
	}
	msg := ""
	if env.Message != nil {
		msg = *env.Message
	}
	if *env.Result != 0 {
		return fail(resp.StatusCode, classify(msg, resp.StatusCode), msg, nil)
	}
	if resp.StatusCode >= 500 {
		return fail(resp.StatusCode, ErrServer, msg, nil)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fail(resp.StatusCode, ErrServer, "", fmt.Errorf("decode answer: %w", err))
		}
	}
	return c.scrubText(msg), resp.StatusCode, nil
}

// scrub hides the token should any underlying error ever quote it.
func (c *Client) scrub(err error) error {
	if err == nil {
		return nil
	}
	s := err.Error()
	if clean := c.scrubText(s); clean != s {
		return &scrubbed{msg: clean, err: err}
	}
	return err
}

// scrubText hides the token in a message Cryptolens sent, should it ever quote it.
func (c *Client) scrubText(s string) string {
	if !strings.Contains(s, c.token) && !strings.Contains(s, url.QueryEscape(c.token)) {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, c.token, "[token]"), url.QueryEscape(c.token), "[token]")
}

type scrubbed struct {
	msg string
	err error
}

func (s *scrubbed) Error() string { return s.msg }

// Is keeps errors.Is working for the scrubbed error (context.DeadlineExceeded, ...)
// without exposing its text through Unwrap.
func (s *scrubbed) Is(target error) bool { return errors.Is(s.err, target) }
