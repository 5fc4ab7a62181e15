package events_test

import (
	"testing"

	"github.com/keysync/keysync/internal/events"
)

func TestStorablePayload(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		in, want string
	}{
		"untouched":         {`{"a":"b","n":12345678901234567890}`, `{"a":"b","n":12345678901234567890}`},
		"nul in a value":    {`{"metadata":{"note":"a\u0000b"},"n":12345678901234567890}`, `{"metadata":{"note":"a` + "\uFFFD" + `b"},"n":12345678901234567890}`},
		"nul in a key":      {`{"k\u0000":[1,"\u0000"]}`, `{"k` + "\uFFFD" + `":[1,"` + "\uFFFD" + `"]}`},
		"invalid utf-8":     {"{\"a\":\"x\xday\"}", `{"a":"x` + "\uFFFD" + `y"}`},
		"escaped backslash": {`{"a":"\\u0000"}`, `{"a":"\\u0000"}`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := events.StorablePayload([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestHandled(t *testing.T) {
	t.Parallel()
	for _, typ := range []string{"invoice.paid", "customer.subscription.deleted", "charge.dispute.created",
		"checkout.session.async_payment_succeeded", "checkout.session.async_payment_failed"} {
		if !events.Handled(typ) {
			t.Errorf("got Handled(%q) = false, want true", typ)
		}
	}
	for _, typ := range []string{"customer.created", "invoice.created", ""} {
		if events.Handled(typ) {
			t.Errorf("got Handled(%q) = true, want false", typ)
		}
	}
	// The catch-up lists them in one Events API query, which takes at most 20 types.
	if got := len(events.HandledTypes()); got != 14 {
		t.Errorf("got %d handled types, want 14", got)
	}
}

func TestGuard(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		keyLive bool
		ev      events.Event
		want    string // the refusal's reason; "" for none
	}{
		"test key, test event":       {false, events.Event{Livemode: false}, ""},
		"live key, live event":       {true, events.Event{Livemode: true}, ""},
		"test key, live event":       {false, events.Event{Livemode: true}, events.ReasonLivemode},
		"live key, test event":       {true, events.Event{Livemode: false}, events.ReasonLivemode},
		"connected account":          {false, events.Event{Account: "acct_1"}, events.ReasonConnect},
		"both: the mode comes first": {false, events.Event{Livemode: true, Account: "acct_1"}, events.ReasonLivemode},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tc.ev.Type = "invoice.paid"
			got := events.Guard{Livemode: tc.keyLive}.Check(tc.ev)
			switch {
			case tc.want == "" && got != nil:
				t.Fatalf("got refusal %+v, want none", got)
			case tc.want != "" && (got == nil || got.Reason != tc.want || got.Detail == ""):
				t.Fatalf("got %+v, want a refusal for %s with its detail", got, tc.want)
			}
			tc.ev.Refused = got
			if want := map[bool]events.Status{true: events.StatusPending, false: events.StatusIgnored}[got == nil]; tc.ev.InitialStatus() != want {
				t.Fatalf("got status %s, want %s", tc.ev.InitialStatus(), want)
			}
		})
	}
}
