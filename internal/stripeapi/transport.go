package stripeapi

import (
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"
)

// transport paces every request through a token bucket and retries rate limits (429)
// and server errors (5xx) with exponential backoff and jitter. stripe-go sends its own
// Idempotency-Key on every POST, so a retried write is applied once by Stripe.
type transport struct {
	base    http.RoundTripper
	limiter *rate.Limiter
	retries int
	backoff time.Duration
	log     zerolog.Logger
	observe func(route, outcome string, took time.Duration)
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	var resp *http.Response
	var err error
	for attempt := 0; ; attempt++ {
		if err := t.limiter.Wait(req.Context()); err != nil {
			return nil, err
		}
		r := req
		if attempt > 0 {
			r = req.Clone(req.Context())
			if req.GetBody != nil {
				body, berr := req.GetBody()
				if berr != nil {
					return nil, berr
				}
				r.Body = body
			}
		}
		began := time.Now()
		resp, err = t.base.RoundTrip(r)
		if t.observe != nil {
			outcome := "error"
			if err == nil {
				outcome = strconv.Itoa(resp.StatusCode/100) + "xx"
				if resp.StatusCode == http.StatusTooManyRequests {
					outcome = "429"
				}
			}
			t.observe(route(req), outcome, time.Since(began))
		}
		retryable := err != nil || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500
		if !retryable || attempt >= t.retries || req.Context().Err() != nil {
			return resp, err
		}
		wait := t.backoff << attempt
		if resp != nil {
			if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && s > 0 {
				wait = time.Duration(s) * time.Second
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		wait = min(wait, 30*time.Second)
		wait = wait/2 + rand.N(wait/2+1)
		ev := t.log.Warn().Str("path", req.URL.Path).Int("attempt", attempt+1).Dur("wait", wait)
		if err != nil {
			ev = ev.Err(err)
		} else {
			ev = ev.Int("status", resp.StatusCode)
		}
		ev.Msg("stripe request failed; retrying")
		timer := time.NewTimer(wait)
		select {
		case <-req.Context().Done():
			timer.Stop()
			return nil, req.Context().Err()
		case <-timer.C:
		}
	}
}

// route names a request for metrics: the method and the path with ids collapsed.
func route(r *http.Request) string {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	for i := 2; i < len(parts); i++ {
		if strings.Contains(parts[i], "_") {
			parts[i] = "{id}"
		}
	}
	return r.Method + " /" + strings.Join(parts, "/")
}
