package cryptolens_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keysync/keysync/internal/cryptolens"
)

// answer is a RoundTripper that gives every request the same response.
type answer struct {
	status int
	body   string
}

func (a answer) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: a.status, Body: io.NopCloser(strings.NewReader(a.body)), Header: http.Header{}, Request: r}, nil
}

// FuzzEnvelope feeds random answers (status and body) to the client's envelope parsing,
// through a read (GetKey, which also decodes the key) and a write (ExtendLicense).
// Invariants: no panic; success only for a JSON object with "result": 0 and a status
// that is neither 429 nor 5xx; every failure is an *Error of exactly one class,
// retryable or permanent; a 429 or 5xx without a Cryptolens refusal is retryable; no
// error text holds the token, even when the answer echoes it.
func FuzzEnvelope(f *testing.F) {
	f.Add(200, `{"result":0,"message":"","licenseKey":{"key":"ABCDE-FGHIJ","expires":"2026-06-01T00:00:00","f1":true,"maxnoofmachines":2}}`)
	f.Add(200, `{"result":1,"message":"Could not find the key."}`)
	f.Add(200, `{"result":1,"message":"Something went wrong"}`)
	f.Add(200, `{"result":1,"message":"Unable to authenticate. `+token+`"}`)
	f.Add(500, `<html><body>Internal Server Error</body></html>`)
	f.Add(503, `{"result":0}`)
	f.Add(429, `{"result":0}`)
	f.Add(200, `{"message":"only a message"}`)
	f.Add(200, `{"result":0,"licenseKey":{"expires":"not a time"}}`)
	f.Add(200, `{"result":0,"licenseKey":null}`)
	f.Add(200, `{"result":null}`)
	f.Add(200, `[]`)
	f.Add(204, ``)
	f.Fuzz(func(t *testing.T, status int, body string) {
		if status < 100 || status > 999 {
			status = 200 + (status%800+800)%800
		}
		c, err := cryptolens.New(cryptolens.Config{BaseURL: "http://cryptolens.invalid", Token: token, RateLimit: -1, ReadRetries: -1,
			HTTPClient: &http.Client{Transport: answer{status, body}}})
		if err != nil {
			t.Fatal(err)
		}
		_, readErr := c.GetKey(context.Background(), productID, "ABCDE-FGHIJ-KLMNO-PQRST")
		_, writeErr := c.ExtendLicense(context.Background(), productID, "ABCDE-FGHIJ-KLMNO-PQRST", 30)

		var env struct {
			Result *int `json:"result"`
		}
		okEnvelope := json.Unmarshal([]byte(body), &env) == nil && env.Result != nil && *env.Result == 0 &&
			status != http.StatusTooManyRequests && status < 500
		if writeErr == nil && !okEnvelope {
			t.Fatalf("ExtendLicense succeeded on HTTP %d %q", status, body)
		}
		if okEnvelope && writeErr != nil {
			t.Fatalf("ExtendLicense failed on a result-0 answer (HTTP %d): %v", status, writeErr)
		}
		if readErr == nil && !okEnvelope {
			t.Fatalf("GetKey succeeded on HTTP %d %q", status, body)
		}
		for _, err := range []error{readErr, writeErr} {
			if err == nil {
				continue
			}
			var e *cryptolens.Error
			if !errors.As(err, &e) {
				t.Fatalf("%T is not a *cryptolens.Error: %v", err, err)
			}
			if errors.Is(err, cryptolens.ErrRetryable) == errors.Is(err, cryptolens.ErrPermanent) {
				t.Fatalf("not exactly one class: %v", err)
			}
			if (status == http.StatusTooManyRequests || status >= 500) && !strings.Contains(body, `"result"`) && !cryptolens.IsRetryable(err) {
				t.Fatalf("HTTP %d without a Cryptolens result is permanent: %v", status, err)
			}
			if strings.Contains(err.Error(), token) {
				t.Fatalf("the token is in the error: %v", err)
			}
		}
	})
}
