package main

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/license"
)

// The policy settings reach the engine: paused collection, and the time-limited feature
// both in the policy (keys get it on) and in the mapping (no plan may turn it off).
func TestNewPartsWiresThePolicy(t *testing.T) {
	t.Parallel()
	cfg := config{StripeAPIKey: "sk_test_x", CryptolensToken: "t", BufferDays: 5, LapseWhenPaused: true, TimeLimitedFeature: 2}
	parts, err := newParts(cfg, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !parts.policy.LapseOnPausedCollection || parts.policy.TimeLimitedFeature != 2 || parts.policy.BufferDays != 5 {
		t.Fatalf("got policy %+v, want lapse on paused collection, time-limited F2, 5 buffer days", parts.policy)
	}
	on := license.Item{PriceID: "price_1", PriceMetadata: map[string]string{"skm": `{"ProductId":1,"F2":true}`}}
	if _, ok, err := parts.mapping.Resolve(on); !ok || err != nil {
		t.Fatalf("a plan with F2 on: got %v, %v, want it mapped", ok, err)
	}
	off := license.Item{PriceID: "price_2", PriceMetadata: map[string]string{"skm": `{"ProductId":1,"F2":false}`}}
	if _, _, err := parts.mapping.Resolve(off); err == nil {
		t.Fatal("a plan turning off the time-limited feature F2 resolved; want an error")
	}
}
