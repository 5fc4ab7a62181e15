package metrics

// CallCount is how many calls this process made to an outside system, and how many of
// them failed.
type CallCount struct {
	Calls, Errors int
}

// CallCounts reads the call counters: Stripe's and Cryptolens' calls since this process
// started. A Stripe call failed unless it was answered 2xx; a Cryptolens call unless
// its outcome is ok. An unreadable registry reads as no calls.
func (m *Metrics) CallCounts() (stripe, cryptolens CallCount) {
	families, _ := m.Registry.Gather()
	for _, f := range families {
		var c *CallCount
		var okOutcome string
		switch f.GetName() {
		case "keysync_stripe_calls_total":
			c, okOutcome = &stripe, "2xx"
		case "keysync_cryptolens_calls_total":
			c, okOutcome = &cryptolens, "ok"
		default:
			continue
		}
		for _, s := range f.GetMetric() {
			n := int(s.GetCounter().GetValue())
			c.Calls += n
			for _, l := range s.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() != okOutcome {
					c.Errors += n
				}
			}
		}
	}
	return stripe, cryptolens
}
