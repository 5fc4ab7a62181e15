package cryptolens_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
)

const (
	productID = 3001
	token     = "WyIzNjY2IiwiS0VZU1lOQ19URVNUX1RPS0VOIl0=" // shaped like a real Cryptolens token
)

var t0 = time.Date(2026, 5, 10, 8, 30, 0, 0, time.UTC)

type bundle struct {
	sim    *cryptolenssim.Sim
	srv    *httptest.Server
	client *cryptolens.Client
	logs   *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func setup(t *testing.T, mutate ...func(*cryptolens.Config)) *bundle {
	t.Helper()
	sim := cryptolenssim.New(cryptolenssim.WithClock(func() time.Time { return t0 }))
	sim.AddProduct(productID, cryptolenssim.ProductOptions{})
	sim.AddToken(token, cryptolenssim.Token{})
	sim.AddToken("read-only-token", cryptolenssim.Token{Methods: []string{cryptolenssim.GetKey}})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	logs := &lockedBuffer{}
	cfg := cryptolens.Config{
		BaseURL: srv.URL, Token: token, RateLimit: -1, RetryBackoff: time.Millisecond,
		Logger: zerolog.New(logs).Level(zerolog.DebugLevel),
	}
	for _, m := range mutate {
		m(&cfg)
	}
	c, err := cryptolens.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{sim: sim, srv: srv, client: c, logs: logs}
}

func TestMethods(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	created, err := b.client.CreateKey(ctx, cryptolens.CreateKeyParams{
		ProductID: productID, Period: 35, Features: cryptolens.Features{true, false, true}, MaxNoOfMachines: 2,
		Notes: "stripe:sub_abc", AddOrUseExistingCustomer: true, Name: "Ada Lovelace", Email: "ada@example.com",
	})
	if err != nil {
		t.Fatal(err)
	}
	if created.Key == "" || created.CustomerID != 1 {
		t.Fatalf("CreateKey: got %+v", created)
	}
	k, err := b.client.GetKey(ctx, productID, created.Key)
	if err != nil {
		t.Fatal(err)
	}
	if k.Key != created.Key || !k.Expires.Equal(t0.AddDate(0, 0, 35)) || k.Expires.Location() != time.UTC ||
		k.Features != (cryptolens.Features{true, false, true}) || k.MaxNoOfMachines != 2 || k.Notes != "stripe:sub_abc" ||
		k.Customer == nil || k.Customer.Email != "ada@example.com" || k.ID != 1 || k.GlobalID == 0 || k.Block {
		t.Fatalf("GetKey: got %+v", k)
	}

	if _, err := b.client.ExtendLicense(ctx, productID, created.Key, 30); err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.AddFeature(ctx, productID, created.Key, 8); err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.RemoveFeature(ctx, productID, created.Key, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.client.MachineLockLimit(ctx, productID, created.Key, 10); err != nil {
		t.Fatal(err)
	}
	changed, err := b.client.BlockKey(ctx, productID, created.Key)
	if err != nil || !changed {
		t.Fatalf("BlockKey: got %v, %v, want changed", changed, err)
	}
	changed, err = b.client.BlockKey(ctx, productID, created.Key)
	if err != nil || changed {
		t.Fatalf("BlockKey again: got %v, %v, want not changed", changed, err)
	}
	k, _ = b.client.GetKey(ctx, productID, created.Key)
	if !k.Expires.Equal(t0.AddDate(0, 0, 65)) || k.Features != (cryptolens.Features{false, false, true, false, false, false, false, true}) ||
		k.MaxNoOfMachines != 10 || !k.Block {
		t.Fatalf("after changes: got %+v", k)
	}
	changed, err = b.client.UnblockKey(ctx, productID, created.Key)
	if err != nil || !changed {
		t.Fatalf("UnblockKey: got %v, %v", changed, err)
	}
	page, err := b.client.GetKeys(ctx, productID, 1, `notes.contains("stripe:sub_abc")`)
	if err != nil || page.Total != 1 || len(page.Keys) != 1 || page.Keys[0].Key != created.Key {
		t.Fatalf("GetKeys: got %+v, %v", page, err)
	}
}

func TestAllKeysPages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i := range 250 {
		b.sim.PutKey(cryptolenssim.Key{ProductID: productID, Notes: fmt.Sprintf("n%d", i)})
	}
	b.sim.ResetCalls()
	n := 0
	for k, err := range b.client.AllKeys(context.Background(), productID, "") {
		if err != nil {
			t.Fatal(err)
		}
		if k.Notes != fmt.Sprintf("n%d", n) {
			t.Fatalf("key %d: got notes %q, want id order", n, k.Notes)
		}
		n++
	}
	if n != 250 || b.sim.CallCount(cryptolenssim.GetKeys) != 3 {
		t.Fatalf("got %d keys in %d calls, want 250 in 3 (99 a page)", n, b.sim.CallCount(cryptolenssim.GetKeys))
	}
}

func TestErrorClasses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := map[string]struct {
		setup     func(b *bundle) error
		kind      error
		retryable bool
	}{
		"wrong token": {func(b *bundle) error {
			c, _ := cryptolens.New(cryptolens.Config{BaseURL: b.srv.URL, Token: "not-a-token", RateLimit: -1})
			_, err := c.GetKey(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA")
			return err
		}, cryptolens.ErrAuth, false},
		"lapsed subscription": {func(b *bundle) error {
			b.sim.SetFaults(cryptolenssim.Faults{NoSubscription: true})
			return errOf(b.client.ExtendLicense(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA", 1))
		}, cryptolens.ErrAuth, false},
		"missing permission": {func(b *bundle) error {
			c, _ := cryptolens.New(cryptolens.Config{BaseURL: b.srv.URL, Token: "read-only-token", RateLimit: -1})
			return errOf(c.ExtendLicense(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA", 1))
		}, cryptolens.ErrAccessDenied, false},
		"unknown key": {func(b *bundle) error {
			_, err := b.client.GetKey(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA")
			return err
		}, cryptolens.ErrKeyNotFound, false},
		"unknown product": {func(b *bundle) error {
			_, err := b.client.BlockKey(ctx, 42, "AAAAA-AAAAA-AAAAA-AAAAA")
			return err
		}, cryptolens.ErrProductNotFound, false},
		"invalid input from the server": {func(b *bundle) error {
			_, err := b.client.CreateKey(ctx, cryptolens.CreateKeyParams{ProductID: productID, Notes: strings.Repeat("x", 501)})
			return err
		}, cryptolens.ErrInvalidInput, false},
		"invalid input caught before sending": {func(b *bundle) error {
			return errOf(b.client.AddFeature(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA", 9))
		}, cryptolens.ErrInvalidInput, false},
		"5xx": {func(b *bundle) error {
			b.sim.SetFaults(cryptolenssim.Faults{Down: true})
			return errOf(b.client.ExtendLicense(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA", 1))
		}, cryptolens.ErrServer, true},
		"429": {func(b *bundle) error {
			b.sim.SetFaults(cryptolenssim.Faults{RateLimitRate: 1})
			return errOf(b.client.ExtendLicense(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA", 1))
		}, cryptolens.ErrRateLimited, true},
		"not JSON": {func(b *bundle) error {
			b.sim.SetFaults(cryptolenssim.Faults{GarbageRate: 1})
			return errOf(b.client.ExtendLicense(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA", 1))
		}, cryptolens.ErrServer, true},
		"lost answer": {func(b *bundle) error {
			k, _ := b.sim.PutKey(cryptolenssim.Key{ProductID: productID})
			b.sim.SetFaults(cryptolenssim.Faults{LostAnswerRate: 1})
			return errOf(b.client.ExtendLicense(ctx, productID, k.Key, 1))
		}, cryptolens.ErrServer, true},
		"timeout": {func(b *bundle) error {
			b.sim.SetFaults(cryptolenssim.Faults{Latency: 2 * time.Second})
			c, _ := cryptolens.New(cryptolens.Config{BaseURL: b.srv.URL, Token: token, RateLimit: -1, Timeout: 50 * time.Millisecond})
			return errOf(c.ExtendLicense(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA", 1))
		}, cryptolens.ErrUnreachable, true},
		"connection refused": {func(b *bundle) error {
			c, _ := cryptolens.New(cryptolens.Config{BaseURL: "http://127.0.0.1:1", Token: token, RateLimit: -1})
			return errOf(c.ExtendLicense(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA", 1))
		}, cryptolens.ErrUnreachable, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			err := tc.setup(b)
			if !errors.Is(err, tc.kind) {
				t.Fatalf("got %v, want %v", err, tc.kind)
			}
			if cryptolens.IsRetryable(err) != tc.retryable || errors.Is(err, cryptolens.ErrPermanent) == tc.retryable {
				t.Fatalf("got retryable=%v permanent=%v for %v, want retryable=%v",
					cryptolens.IsRetryable(err), errors.Is(err, cryptolens.ErrPermanent), err, tc.retryable)
			}
		})
	}
}

func TestSomethingWentWrongIsRetryable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sim.SetFaults(cryptolenssim.Faults{ErrorRate: 1})
	seen := map[int]bool{}
	for range 20 { // the simulator answers half 500s, half "Something went wrong" (HTTP 200)
		_, err := b.client.ExtendLicense(context.Background(), productID, "AAAAA-AAAAA-AAAAA-AAAAA", 1)
		var e *cryptolens.Error
		if !errors.As(err, &e) || !cryptolens.IsRetryable(err) || !errors.Is(err, cryptolens.ErrServer) {
			t.Fatalf("got %v, want a retryable server error", err)
		}
		seen[e.Status] = true
	}
	if !seen[200] || !seen[500] {
		t.Fatalf("saw statuses %v, want both the 200 'Something went wrong' and the 500 forms", seen)
	}
}

func TestReadsRetryMutationsDoNot(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *cryptolens.Config) { c.ReadRetries = 3 })
	k, _ := b.sim.PutKey(cryptolenssim.Key{ProductID: productID, Expires: t0})
	b.sim.SetFaults(cryptolenssim.Faults{Down: true})
	ctx := context.Background()
	if _, err := b.client.GetKey(ctx, productID, k.Key); !cryptolens.IsRetryable(err) {
		t.Fatalf("got %v, want retryable", err)
	}
	if got := b.sim.CallCount(cryptolenssim.GetKey); got != 4 {
		t.Fatalf("got %d GetKey calls, want 4 (1 + 3 retries)", got)
	}
	if _, err := b.client.ExtendLicense(ctx, productID, k.Key, 5); !cryptolens.IsRetryable(err) {
		t.Fatalf("got %v, want retryable", err)
	}
	if got := b.sim.CallCount(cryptolenssim.ExtendLicense); got != 1 {
		t.Fatalf("got %d ExtendLicense calls, want 1: a mutation is never retried blindly", got)
	}
	// A read that fails once and then works returns the key.
	b.sim.SetFaults(cryptolenssim.Faults{})
	if _, err := b.client.GetKey(ctx, productID, k.Key); err != nil {
		t.Fatal(err)
	}
	// Permanent errors are not retried.
	b.sim.ResetCalls()
	if _, err := b.client.GetKey(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA"); !errors.Is(err, cryptolens.ErrKeyNotFound) {
		t.Fatal(err)
	}
	if got := b.sim.CallCount(cryptolenssim.GetKey); got != 1 {
		t.Fatalf("got %d calls for a missing key, want 1", got)
	}
}

func TestCancelledContext(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *cryptolens.Config) { c.RateLimit, c.Burst = 0.001, 1 })
	ctx, cancel := context.WithCancel(context.Background())
	// The first call takes the only token; the second waits for the limiter until cancelled.
	_, _ = b.client.GetKey(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA")
	cancel()
	_, err := b.client.GetKey(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

// The token must not appear in any error or log line, whatever happens.
func TestTokenNeverLeaks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var texts []string
	faults := []cryptolenssim.Faults{{}, {Down: true}, {RateLimitRate: 1}, {ErrorRate: 1}, {GarbageRate: 1}, {LostAnswerRate: 1},
		{NoSubscription: true}, {Latency: 200 * time.Millisecond}}
	var allLogs strings.Builder
	for _, f := range faults {
		b := setup(t, func(c *cryptolens.Config) { c.Timeout = 100 * time.Millisecond; c.ReadRetries = 1 })
		k, _ := b.sim.PutKey(cryptolenssim.Key{ProductID: productID})
		b.sim.SetFaults(f)
		collect := func(err error) {
			if err != nil {
				texts = append(texts, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
			}
		}
		_, err := b.client.CreateKey(ctx, cryptolens.CreateKeyParams{ProductID: productID, Period: 1})
		collect(err)
		_, err = b.client.GetKey(ctx, productID, k.Key)
		collect(err)
		_, err = b.client.GetKeys(ctx, productID, 1, "")
		collect(err)
		collect(errOf(b.client.ExtendLicense(ctx, productID, k.Key, 1)))
		_, err = b.client.BlockKey(ctx, productID, k.Key)
		collect(err)
		_, err = b.client.UnblockKey(ctx, productID, k.Key)
		collect(err)
		collect(errOf(b.client.AddFeature(ctx, productID, k.Key, 1)))
		collect(errOf(b.client.RemoveFeature(ctx, productID, k.Key, 1)))
		collect(b.client.MachineLockLimit(ctx, productID, k.Key, 1))
		allLogs.WriteString(b.logs.String())
	}
	// A base URL that itself carries the token (a misconfiguration) is scrubbed too.
	c, _ := cryptolens.New(cryptolens.Config{BaseURL: "http://127.0.0.1:1/" + token, Token: token, RateLimit: -1})
	_, err := c.GetKey(ctx, productID, "AAAAA-AAAAA-AAAAA-AAAAA")
	texts = append(texts, err.Error())

	if len(texts) < 40 || !strings.Contains(allLogs.String(), "cryptolens call") {
		t.Fatalf("got %d error texts and %d bytes of logs, want the failures exercised", len(texts), allLogs.Len())
	}
	for _, s := range append(texts, allLogs.String()) {
		if strings.Contains(s, token) || strings.Contains(s, strings.TrimRight(token, "=")) {
			t.Fatalf("token leaked: %s", s)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	if _, err := cryptolens.New(cryptolens.Config{}); err == nil {
		t.Fatal("got nil error without a token")
	}
	if _, err := cryptolens.New(cryptolens.Config{Token: "x", BaseURL: "ftp://x"}); err == nil {
		t.Fatal("got nil error for an ftp base URL")
	}
}

// Now follows Cryptolens' clock, read off its answers' Date headers, once it is more
// than a minute from this host's; before any answer, and when the two agree, it is
// this host's clock.
func TestNowFollowsCryptolensClock(t *testing.T) {
	t.Parallel()
	b := setup(t) // the simulator's clock stands at t0, months from this host's
	near := func(a, want time.Time) bool { d := a.Sub(want); return d > -3*time.Second && d < 3*time.Second }
	if now := b.client.Now(); !near(now, time.Now()) {
		t.Fatalf("before any answer: Now %s, want this host's clock", now)
	}
	created, err := b.client.CreateKey(context.Background(), cryptolens.CreateKeyParams{ProductID: productID, Period: 30})
	if err != nil {
		t.Fatal(err)
	}
	key := created.Key
	if now := b.client.Now(); !near(now, t0) {
		t.Fatalf("after an answer: Now %s, want Cryptolens' clock %s", now, t0)
	}
	if _, err := b.client.GetKey(context.Background(), productID, key); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(b.logs.String(), "clock differs"); n != 1 {
		t.Fatalf("got %d clock warnings, want 1:\n%s", n, b.logs.String())
	}

	sim := cryptolenssim.New() // this host's clock
	sim.AddProduct(productID, cryptolenssim.ProductOptions{})
	sim.AddToken(token, cryptolenssim.Token{})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	c, _ := cryptolens.New(cryptolens.Config{BaseURL: srv.URL, Token: token, RateLimit: -1})
	if _, err := c.CreateKey(context.Background(), cryptolens.CreateKeyParams{ProductID: productID, Period: 30}); err != nil {
		t.Fatal(err)
	}
	if now := c.Now(); !near(now, time.Now()) {
		t.Fatalf("clocks agree: Now %s, want this host's", now)
	}
}

// An SKGL product answers a change that gives the key a new string with that string in
// message; an SKM15 product keeps the key and answers no new key. The client returns
// the new string, and "" when the key stays.
func TestChangesReturnTheNewSKGLKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const skgl = productID + 1
	b := setup(t)
	b.sim.AddProduct(skgl, cryptolenssim.ProductOptions{SKGL: true})
	changes := map[string]func(product int, key string) (string, error){
		"ExtendLicense": func(p int, k string) (string, error) { return b.client.ExtendLicense(ctx, p, k, 3) },
		"AddFeature":    func(p int, k string) (string, error) { return b.client.AddFeature(ctx, p, k, 2) },
		"RemoveFeature": func(p int, k string) (string, error) { return b.client.RemoveFeature(ctx, p, k, 1) },
	}
	for name, change := range changes {
		t.Run(name, func(t *testing.T) {
			for _, p := range []int{productID, skgl} {
				k, _ := b.sim.PutKey(cryptolenssim.Key{ProductID: p, Expires: t0})
				got, err := change(p, k.Key)
				if err != nil {
					t.Fatal(err)
				}
				_, oldExists := b.sim.Key(p, k.Key)
				_, newExists := b.sim.Key(p, got)
				switch {
				case p == productID && (got != "" || !oldExists):
					t.Fatalf("SKM15: got new key %q (old key exists: %v), want \"\" and the same key", got, oldExists)
				case p == skgl && (got == "" || got == k.Key || !newExists || oldExists):
					t.Fatalf("SKGL: got new key %q for %q (exists: %v, old exists: %v), want the key's new string", got, k.Key, newExists, oldExists)
				}
			}
		})
	}
}

// Only a message shaped like a key string counts as a new key: ExtendLicense documents
// message as "either null or the new key (if using SKGL)", and for the feature methods
// it is undocumented, so anything else must never replace a key.
func TestChangedKeyMessage(t *testing.T) {
	t.Parallel()
	const old = "ABCDE-FGHIJ-KLMNO-PQRST"
	tests := map[string]struct {
		message string
		want    string
	}{
		"empty":        {`""`, ""},
		"null":         {`null`, ""},
		"the same key": {`"` + old + `"`, ""},
		"a sentence":   {`"Changed."`, ""},
		"words":        {`"The key was updated"`, ""},
		"a new key":    {`"MXNBF-ITLDZ-WXPZQ-AVOGL"`, "MXNBF-ITLDZ-WXPZQ-AVOGL"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, err := cryptolens.New(cryptolens.Config{BaseURL: "http://cryptolens.invalid", Token: token, RateLimit: -1,
				HTTPClient: &http.Client{Transport: answer{200, `{"result":0,"message":` + tc.message + `}`}}})
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.ExtendLicense(context.Background(), productID, old, 1)
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v, want %q", got, err, tc.want)
			}
		})
	}
}

// errOf drops the new key string a change returns, for tests about its error.
func errOf(_ string, err error) error { return err }
