package delivery

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
)

// What a Checkout Session shows, by mode, status, payment status, mode of the account
// and age.
func TestJudge(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	sub := &stripe.Subscription{ID: "sub_1"}
	session := func(edit func(s *stripe.CheckoutSession)) *stripe.CheckoutSession {
		s := &stripe.CheckoutSession{ID: "cs_test_1", Mode: stripe.CheckoutSessionModeSubscription, Subscription: sub,
			Status: stripe.CheckoutSessionStatusComplete, PaymentStatus: stripe.CheckoutSessionPaymentStatusPaid, Created: now.Add(-time.Hour).Unix()}
		if edit != nil {
			edit(s)
		}
		return s
	}
	tests := map[string]struct {
		session  *stripe.CheckoutSession
		livemode bool
		want     Status
		owner    Owner
	}{
		"paid subscription": {session: session(nil), want: StatusReady, owner: Owner{OwnerSubscription, "sub_1"}},
		"trial": {session: session(func(s *stripe.CheckoutSession) {
			s.PaymentStatus = stripe.CheckoutSessionPaymentStatusNoPaymentRequired
		}), want: StatusReady, owner: Owner{OwnerSubscription, "sub_1"}},
		"paid purchase": {session: session(func(s *stripe.CheckoutSession) { s.Mode, s.Subscription = stripe.CheckoutSessionModePayment, nil }),
			want: StatusReady, owner: Owner{OwnerPurchase, "cs_test_1"}},
		"bank debit on its way": {session: session(func(s *stripe.CheckoutSession) {
			s.Mode, s.PaymentStatus = stripe.CheckoutSessionModePayment, stripe.CheckoutSessionPaymentStatusUnpaid
		}), want: StatusProcessing},
		"still paying": {session: session(func(s *stripe.CheckoutSession) {
			s.Status, s.PaymentStatus = stripe.CheckoutSessionStatusOpen, stripe.CheckoutSessionPaymentStatusUnpaid
		}), want: StatusProcessing},
		"expired unpaid": {session: session(func(s *stripe.CheckoutSession) {
			s.Status, s.PaymentStatus = stripe.CheckoutSessionStatusExpired, stripe.CheckoutSessionPaymentStatusUnpaid
		}), want: StatusNotFound},
		"setup mode":         {session: session(func(s *stripe.CheckoutSession) { s.Mode = stripe.CheckoutSessionModeSetup }), want: StatusNotFound},
		"no subscription":    {session: session(func(s *stripe.CheckoutSession) { s.Subscription = nil }), want: StatusNotFound},
		"other mode":         {session: session(nil), livemode: true, want: StatusNotFound},
		"live on a live key": {session: session(func(s *stripe.CheckoutSession) { s.Livemode = true }), livemode: true, want: StatusReady, owner: Owner{OwnerSubscription, "sub_1"}},
		"a week old":         {session: session(func(s *stripe.CheckoutSession) { s.Created = now.Add(-7 * 24 * time.Hour).Unix() }), want: StatusReady, owner: Owner{OwnerSubscription, "sub_1"}},
		"older than a week":  {session: session(func(s *stripe.CheckoutSession) { s.Created = now.Add(-7*24*time.Hour - time.Second).Unix() }), want: StatusGone},
		"old and unpaid": {session: session(func(s *stripe.CheckoutSession) {
			s.Created, s.Status = now.Add(-8*24*time.Hour).Unix(), stripe.CheckoutSessionStatusOpen
		}), want: StatusGone},
		"none": {want: StatusNotFound},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, owner := judge(tc.session, tc.livemode, now, 7*24*time.Hour)
			if got != tc.want || owner != tc.owner {
				t.Fatalf("got %s %+v, want %s %+v", got, owner, tc.want, tc.owner)
			}
		})
	}
}

func TestParseSMTPURL(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		url  string
		want SMTPConfig
		err  string
	}{
		"submission":    {url: "smtp://shop%40example.com:p%40ss@mail.example.com", want: SMTPConfig{Host: "mail.example.com", Port: 587, TLS: TLSRequired, Username: "shop@example.com", Password: "p@ss"}},
		"implicit TLS":  {url: "smtps://u:secret-pw@mail.example.com", want: SMTPConfig{Host: "mail.example.com", Port: 465, TLS: TLSImplicit, Username: "u", Password: "secret-pw"}},
		"local relay":   {url: "smtp://127.0.0.1:25?tls=none", want: SMTPConfig{Host: "127.0.0.1", Port: 25, TLS: TLSNone}},
		"opportunistic": {url: "smtp://relay:2525?tls=opportunistic", want: SMTPConfig{Host: "relay", Port: 2525, TLS: TLSOpportunistic}},
		"scheme":        {url: "http://u:secret-pw@mail.example.com", err: "smtp://"},
		"no host":       {url: "smtp://u:secret-pw@:587", err: "no host"},
		"bad port":      {url: "smtp://u:secret-pw@mail.example.com:99999", err: "port"},
		"tls on smtps":  {url: "smtps://u:secret-pw@mail.example.com?tls=none", err: "tls"},
		"unknown tls":   {url: "smtp://u:secret-pw@mail.example.com?tls=maybe", err: "tls"},
		"unknown":       {url: "smtp://u:secret-pw@mail.example.com?auth=plain", err: "auth"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseSMTPURL(tc.url)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "secret-pw") {
					t.Fatalf("got %v, want an error about %q without the password", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v, want %+v", got, err, tc.want)
			}
		})
	}
}

// The client behind a proxy is the address the proxy added last; without the header
// configured, or with a forged value, the connection's peer.
func TestClientIP(t *testing.T) {
	t.Parallel()
	req := func(xff string) *http.Request {
		r, _ := http.NewRequest("GET", "/license", nil)
		r.RemoteAddr = "10.0.0.7:5555"
		if xff != "" {
			r.Header.Set("X-Forwarded-For", xff)
		}
		return r
	}
	direct, proxied := ClientIP(""), ClientIP("X-Forwarded-For")
	for _, tc := range []struct {
		name string
		f    func(*http.Request) string
		xff  string
		want string
	}{
		{"direct", direct, "203.0.113.9", "10.0.0.7"},
		{"proxied", proxied, "198.51.100.1, 203.0.113.9", "203.0.113.9"},
		{"forged", proxied, "not an address", "10.0.0.7"},
		{"no header", proxied, "", "10.0.0.7"},
	} {
		if got := tc.f(req(tc.xff)); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

// Buckets refill with time, and idle ones are forgotten.
func TestLimiter(t *testing.T) {
	t.Parallel()
	l := newLimiter(6, 2) // one every 10s
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	for i := range 2 {
		if ok, _ := l.allow("a", now); !ok {
			t.Fatalf("request %d refused within the burst", i+1)
		}
	}
	if ok, wait := l.allow("a", now); ok || wait <= 0 || wait > 10*time.Second {
		t.Fatalf("past the burst: got %v, wait %s; want refused for at most 10s", ok, wait)
	}
	if ok, _ := l.allow("a", now.Add(10*time.Second)); !ok {
		t.Fatal("refused after the bucket refilled")
	}
	l.allow("b", now)
	l.allow("c", now.Add(5*time.Minute)) // sweeps: a and b have been idle long enough to be full
	if len(l.buckets) != 1 {
		t.Fatalf("got %d buckets after the sweep, want 1", len(l.buckets))
	}
}
