package stripesim

import (
	"errors"
	"fmt"
	"time"
)

// SetPauseCollection sets the subscription's pause_collection (behavior keep_as_draft,
// mark_uncollectible or void, until resumesAt or, when zero, until cleared), or clears
// it when behavior is "". The status stays as it is; renewal invoices made while paused
// are left drafts, or finalized and then marked uncollectible or voided, and are never
// charged. It emits customer.subscription.updated, and returns an error for an unknown
// subscription or behavior, a resume time not in the future, or an ended subscription.
func (s *Sim) SetPauseCollection(subscription, behavior string, resumesAt time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.sub(subscription)
	if err != nil {
		return err
	}
	if sub.Status != StatusActive && sub.Status != StatusTrialing && sub.Status != StatusPastDue {
		return fmt.Errorf("subscription %s is %s", subscription, sub.Status)
	}
	if behavior == "" {
		s.setPause(sub, nil)
		return nil
	}
	if behavior != PauseKeepAsDraft && behavior != PauseMarkUncollectible && behavior != PauseVoid {
		return fmt.Errorf("pause_collection behavior %q: want keep_as_draft, mark_uncollectible or void", behavior)
	}
	pc := &PauseCollection{Behavior: behavior}
	if !resumesAt.IsZero() {
		if !resumesAt.After(s.now) {
			return errors.New("pause_collection resumes_at must be in the future")
		}
		pc.ResumesAt = resumesAt.Unix()
	}
	s.setPause(sub, pc)
	return nil
}

// setPause replaces pause_collection (nil clears it, as when resumes_at passes).
func (s *Sim) setPause(sub *Subscription, pc *PauseCollection) {
	prev := obj{"pause_collection": renderPause(sub.PauseCollection)}
	sub.PauseCollection = pc
	s.emitSub("customer.subscription.updated", sub, prev)
}

// ExtendTrial moves a trialing subscription's trial end (and with it the period end and
// billing cycle anchor) to end, as an update with trial_end does. No invoice is made.
// It emits customer.subscription.updated, and returns an error unless the subscription is
// trialing and end is in the future.
func (s *Sim) ExtendTrial(subscription string, end time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.sub(subscription)
	if err != nil {
		return err
	}
	if sub.Status != StatusTrialing {
		return fmt.Errorf("subscription %s is %s, not trialing", subscription, sub.Status)
	}
	if !end.After(s.now) {
		return errors.New("trial_end must be in the future")
	}
	prev := obj{"trial_end": sub.TrialEnd, "current_period_end": sub.CurrentPeriodEnd, "billing_cycle_anchor": sub.BillingCycleAnchor}
	sub.TrialEnd = end.Unix()
	sub.CurrentPeriodEnd, sub.BillingCycleAnchor = sub.TrialEnd, sub.TrialEnd
	if sub.CancelAtPeriodEnd {
		prev["cancel_at"] = nullable(sub.CancelAt)
		sub.CancelAt = sub.CurrentPeriodEnd
	}
	s.emitSub("customer.subscription.updated", sub, prev)
	return nil
}

// ReportUsage adds quantity to a metered subscription item's usage in the current
// period, as a usage record with action=increment does; the renewal invoice bills it. It
// emits nothing, and returns an error for an unknown or licensed item, a negative
// quantity, or an ended subscription.
func (s *Sim) ReportUsage(item string, quantity int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if quantity < 0 {
		return errors.New("usage quantity must not be negative")
	}
	for _, sub := range s.subs {
		for _, it := range sub.Items {
			if it.ID != item {
				continue
			}
			if !s.prices[it.Price].metered() {
				return fmt.Errorf("subscription item %s has a licensed price: usage is for metered prices", item)
			}
			if sub.Status == StatusCanceled || sub.Status == StatusIncompleteExpired {
				return fmt.Errorf("subscription %s has ended", sub.ID)
			}
			it.Usage += quantity
			return nil
		}
	}
	return errNotFound("subscription item", item)
}
