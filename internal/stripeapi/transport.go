package stripeapi

import (
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"
)

// transport paces every request through a token bucket and retries, with exponential
// backoff and jitter, rate limits (429), and what Stripe asks it to retry
// (Stripe-Should-Retry), or without that header server errors (5xx) and requests that
// got no answer. stripe-go sends its own Idempotency-Key on every POST, so a retried
// write is applied once by Stripe.
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
		if !shouldRetry(resp, err) || attempt >= t.retries || req.Context().Err() != nil {
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

// shouldRetry decides whether an attempt is worth repeating, as stripe-go's own
// shouldRetry does but for rate limits. A 429 always is, with keysync's backoff: a
// rate limit is what the backoff is for (stripe-go gives up on it), and an object
// lock's 429 asks for a retry anyway. Otherwise Stripe-Should-Retry decides when Stripe
// sends it: "false" when a retry would fail again or do nothing (a 500 whose request
// Stripe's idempotency layer already answered), "true" when it would help although the
// status alone does not say so (a 409 conflict). Without it: no answer at all, or a 5xx.
func shouldRetry(resp *http.Response, err error) bool {
	if err != nil {
		return true
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		return true
	}
	if resp.StatusCode < 400 {
		return false
	}
	switch resp.Header.Get("Stripe-Should-Retry") {
	case "true":
		return true
	case "false":
		return false
	}
	return resp.StatusCode >= 500
}

// route names a request for metrics: the method and the path with every id replaced by
// {id}, so that the label's values are the paths keysync's code spells out, whatever
// the ids (a subscription id an operator typed, one an event carried). Stripe's paths
// alternate a collection and an id after the version (/v1/invoices/in_1/lines); a
// namespace such as checkout is followed by its collection. The path is split as
// sent, escaped, so an id that holds a slash stays one segment.
func route(r *http.Request) string {
	parts := strings.Split(strings.Trim(r.URL.EscapedPath(), "/"), "/")
	version := slices.Index(parts, "v1")
	if version < 0 {
		return r.Method + " (other)"
	}
	id := false
	for i := version + 1; i < len(parts); i++ {
		switch {
		case id:
			parts[i], id = "{id}", false
		case !stripeNamespaces[parts[i]]:
			id = true
		}
	}
	return r.Method + " /" + strings.Join(parts[version:], "/")
}

// stripeNamespaces are the path segments that group collections rather than name one.
var stripeNamespaces = map[string]bool{"checkout": true, "billing": true, "billing_portal": true, "test_helpers": true}
