package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
)

// unreachable is an address nothing listens on.
const unreachable = "http://127.0.0.1:1"

// Classify sorts real errors from each package the way the workers need: permanent
// failures stop, outages of Stripe or Cryptolens snooze, the rest are retried.
func TestClassify(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		err  func(t *testing.T) error
		want jobs.Class
	}{
		"cryptolens access denied": {func(t *testing.T) error {
			return cryptolensErr(t, http.StatusOK, `{"result":1,"message":"Access denied."}`)
		}, jobs.Permanent},
		"cryptolens key not found, wrapped as Sync wraps it": {func(t *testing.T) error {
			return fmt.Errorf("extend: %w", cryptolensErr(t, http.StatusOK, `{"result":1,"message":"Could not find the key."}`))
		}, jobs.Permanent},
		"cryptolens server error": {func(t *testing.T) error {
			return cryptolensErr(t, http.StatusServiceUnavailable, `<html>down</html>`)
		}, jobs.Outage},
		"cryptolens rate limited": {func(t *testing.T) error {
			return cryptolensErr(t, http.StatusTooManyRequests, ``)
		}, jobs.Outage},
		"cryptolens unreachable": {func(t *testing.T) error {
			c, err := cryptolens.New(cryptolens.Config{BaseURL: unreachable, Token: "token", RateLimit: -1})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.ExtendLicense(context.Background(), 1, "AAAAA-BBBBB-CCCCC-DDDDD", 1)
			return err
		}, jobs.Outage},
		"stripe not found": {func(t *testing.T) error {
			return stripeErr(t, http.StatusNotFound, "resource_missing")
		}, jobs.Permanent},
		"stripe auth": {func(t *testing.T) error {
			return stripeErr(t, http.StatusUnauthorized, "")
		}, jobs.Permanent},
		"stripe invalid request": {func(t *testing.T) error {
			return stripeErr(t, http.StatusBadRequest, "parameter_invalid_empty")
		}, jobs.Permanent},
		"stripe rate limited": {func(t *testing.T) error {
			return stripeErr(t, http.StatusTooManyRequests, "rate_limit")
		}, jobs.Outage},
		"stripe server error, wrapped as SubscriptionFor wraps it": {func(t *testing.T) error {
			return fmt.Errorf("resolve dispute's charge: %w", stripeErr(t, http.StatusInternalServerError, ""))
		}, jobs.Outage},
		"stripe unreachable": {func(t *testing.T) error {
			c := stripeClient(t, unreachable)
			_, err := c.GetCustomer(context.Background(), "cus_x")
			return err
		}, jobs.Outage},
		"stripe call canceled": {func(t *testing.T) error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, err := stripeClient(t, unreachable).GetCustomer(ctx, "cus_x")
			return err
		}, jobs.Retry},
		"syncer permanent": {func(t *testing.T) error {
			_, err := syncer.SubscriptionFor(context.Background(), nil, "invoice.paid", []byte("{"))
			return err
		}, jobs.Permanent},
		"database unavailable": {func(t *testing.T) error {
			_, err := postgres.Open(context.Background(), "postgres://postgres@127.0.0.1:1/keysync", postgres.PoolConfig{ConnectTimeout: time.Second})
			return err
		}, jobs.Retry},
		"anything else": {func(t *testing.T) error {
			return errors.New("lost a race")
		}, jobs.Retry},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := tc.err(t)
			if err == nil {
				t.Fatal("got no error, want one to classify")
			}
			if got := jobs.Classify(err); got != tc.want {
				t.Fatalf("Classify(%v): got %v, want %v", err, got, tc.want)
			}
		})
	}
}

// cryptolensErr is ExtendLicense's error when Cryptolens answers status and body.
func cryptolensErr(t *testing.T, status int, body string) error {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	c, err := cryptolens.New(cryptolens.Config{BaseURL: srv.URL, Token: "token", RateLimit: -1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ExtendLicense(context.Background(), 1, "AAAAA-BBBBB-CCCCC-DDDDD", 1)
	return err
}

// stripeErr is GetCustomer's error when Stripe answers status with an error of code.
func stripeErr(t *testing.T, status int, code string) error {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = fmt.Fprintf(w, `{"error":{"type":"invalid_request_error","code":%q,"message":"refused"}}`, code)
	}))
	t.Cleanup(srv.Close)
	_, err := stripeClient(t, srv.URL).GetCustomer(context.Background(), "cus_x")
	return err
}

// stripeClient is a client of base that does not retry.
func stripeClient(t *testing.T, base string) *stripeapi.Client {
	t.Helper()
	c, err := stripeapi.New(stripeapi.Config{APIKey: "sk_test_x", BaseURL: base, Retries: -1, RateLimit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
