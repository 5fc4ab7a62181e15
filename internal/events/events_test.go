package events_test

import (
	"errors"
	"strings"
	"testing"
	"time"

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
		// jsonb refuses a lone surrogate (22P02) as it refuses a NUL (22P05).
		"lone high surrogate":  {`{"a":"x\ud800y","n":1.50}`, `{"a":"x` + "\uFFFD" + `y","n":1.50}`},
		"lone low surrogate":   {`{"a":"\uDC00"}`, `{"a":"` + "\uFFFD" + `"}`},
		"surrogate in a key":   {`{"\ud800":1}`, `{"` + "\uFFFD" + `":1}`},
		"valid pair":           {`{"a":"\ud83d\ude00"}`, `{"a":"` + "\U0001F600" + `"}`},
		"escaped backslash, u": {`{"a":"\\ud800"}`, `{"a":"\\ud800"}`},
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

func TestStorable(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	valid := events.Event{ID: "evt_1NvQ2x2eZvKYlo2C0aBcDeFg", Type: "customer.subscription.updated", Created: now.Add(-time.Hour),
		APIVersion: "2025-03-31.basil", Payload: []byte(`{"id":"evt_1","note":"a\u0000b"}`)}
	tests := map[string]struct {
		change func(*events.Event)
		field  string // the field the error names; "" for a valid event
	}{
		"valid":                      {func(*events.Event) {}, ""},
		"connected account":          {func(e *events.Event) { e.Account = "acct_1Abc" }, ""},
		"no api version":             {func(e *events.Event) { e.APIVersion = "" }, ""},
		"test clock, a year ahead":   {func(e *events.Event) { e.Created = now.AddDate(1, 0, 0) }, ""},
		"not an event id":            {func(e *events.Event) { e.ID = "cus_1" }, "id"},
		"id too long":                {func(e *events.Event) { e.ID = "evt_" + strings.Repeat("a", 252) }, "id"},
		"id with a quote":            {func(e *events.Event) { e.ID = `evt_1"` }, "id"},
		"empty type":                 {func(e *events.Event) { e.Type = "" }, "type"},
		"type too long":              {func(e *events.Event) { e.Type = strings.Repeat("a.", 65) }, "type"},
		"type with a space":          {func(e *events.Event) { e.Type = "invoice paid" }, "type"},
		"type in capitals":           {func(e *events.Event) { e.Type = "INVOICE.PAID" }, "type"},
		"api version with a newline": {func(e *events.Event) { e.APIVersion = "2023-10-16\n" }, "api_version"},
		"account without acct_":      {func(e *events.Event) { e.Account = "cus_1" }, "account"},
		"created before Stripe":      {func(e *events.Event) { e.Created = time.Date(2010, 12, 31, 0, 0, 0, 0, time.UTC) }, "created"},
		"created at zero":            {func(e *events.Event) { e.Created = time.Unix(0, 0) }, "created"},
		"created far ahead":          {func(e *events.Event) { e.Created = now.AddDate(6, 0, 0) }, "created"},
		"payload not JSON":           {func(e *events.Event) { e.Payload = []byte("{\"a\":\"\\u0000") }, "payload"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ev := valid
			tc.change(&ev)
			got, err := events.Storable(ev, now)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("got %v, want the event stored", err)
				}
				if want := `{"id":"evt_1","note":"a` + "\uFFFD" + `b"}`; string(got.Payload) != want || got.ID != ev.ID {
					t.Fatalf("got %s (%s), want %s: the payload made storable", got.Payload, got.ID, want)
				}
				return
			}
			if !errors.Is(err, events.ErrInvalid) || !strings.Contains(err.Error(), tc.field+":") {
				t.Fatalf("got %v, want ErrInvalid naming %s", err, tc.field)
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
