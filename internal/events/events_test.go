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
	for _, typ := range []string{"invoice.paid", "customer.subscription.deleted", "charge.dispute.created"} {
		if !events.Handled(typ) {
			t.Errorf("got Handled(%q) = false, want true", typ)
		}
	}
	for _, typ := range []string{"customer.created", "invoice.created", ""} {
		if events.Handled(typ) {
			t.Errorf("got Handled(%q) = true, want false", typ)
		}
	}
	if got := len(events.HandledTypes()); got != 12 {
		t.Errorf("got %d handled types, want 12", got)
	}
}
