package stripesim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// ControlHandler serves the control API over HTTP (JSON in, JSON out), for the sandbox
// binary and scripts. Every route calls the Go function of the same name:
//
//	POST /products                          {"name","metadata"}                 -> {"id"}
//	POST /prices                            PriceParams (snake_case; "type":"one_time") -> {"id"}
//	POST /checkout                          CheckoutParams (snake_case)         -> CheckoutResult
//	                                        "mode":"payment": PaymentParams     -> PaymentResult
//	POST /checkout/{id}/settle              {"succeeded":true}                  (SettleAsyncPayment)
//	POST /invoices                          InvoiceParams (snake_case)          -> InvoiceResult
//	POST /subscriptions                     SubscriptionParams (snake_case)     -> SubscriptionResult
//	POST /advance                           {"duration":"720h"}                 -> {"now"}
//	POST /customers/{id}/card_declines      {"declines":true}
//	POST /customers/{id}/fail_next_payment
//	POST /invoices/{id}/pay | /pay_out_of_band
//	POST /subscriptions/{id}/cancel | /pause | /resume
//	POST /subscriptions/{id}/cancel_at_period_end {"on":true}
//	POST /subscriptions/{id}/price          {"price","invoice_now"}
//	POST /subscriptions/{id}/quantity       {"quantity","invoice_now"}
//	POST /subscriptions/{id}/exhaust_dunning {"final":"unpaid"}
//	POST /subscriptions/{id}/pause_collection {"behavior","resumes_at"}       (behavior "" clears)
//	POST /subscriptions/{id}/extend_trial   {"trial_end":"2026-02-01T00:00:00Z"}
//	POST /subscriptions/{id}/metadata       {"metadata":{"k":"v"}}              ("" deletes)
//	POST /subscription_items/{id}/usage     {"quantity"}
//	POST /events                            {"type","object","livemode","account"} -> {"id"}
//	POST /account                           {"api_version"}                     (the account's default)
//	POST /charges/{id}/refund               {"amount"}                          -> {"id"}
//	POST /charges/{id}/dispute              {"reason"}                          -> {"id"}
//	POST /disputes/{id}/close               {"won":true}
//	POST /endpoints                         {"url","secrets","api_version",...EndpointOptions}
//	POST /endpoints/hold                    {"on":true}                         (HoldWebhooks; false releases)
//	POST /faults                            Faults
//	POST /flush                             waits until webhooks are delivered
//	GET  /subscriptions/{id}                the subscription's state, invoices and paid_through
//	GET  /now                               {"now"}
//	GET  /events                            [{"id","type"}], oldest first
//	GET  /endpoints                         [{"url","stats"}] (DeliveryStats)
//	GET  /requests                          {"routes": {"GET /v1/subscriptions": n, ...}, "faulted": {"429": n}}
func (s *Sim) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, fn func(r *http.Request, body map[string]json.RawMessage) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			body := map[string]json.RawMessage{}
			if r.Method == http.MethodPost && r.ContentLength != 0 {
				if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
					controlError(w, http.StatusBadRequest, err)
					return
				}
			}
			out, err := fn(r, body)
			if err != nil {
				controlError(w, http.StatusUnprocessableEntity, err)
				return
			}
			if out == nil {
				out = map[string]any{"ok": true}
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(out)
		})
	}
	id := func(r *http.Request) string { return r.PathValue("id") }
	handle("POST /products", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Name     string            `json:"name"`
			Metadata map[string]string `json:"metadata"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return map[string]string{"id": s.CreateProduct(p.Name, p.Metadata)}, nil
	})
	handle("POST /prices", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Product       string            `json:"product"`
			UnitAmount    int64             `json:"unit_amount"`
			Currency      string            `json:"currency"`
			Type          string            `json:"type"`
			Interval      string            `json:"interval"`
			IntervalCount int64             `json:"interval_count"`
			UsageType     string            `json:"usage_type"`
			Nickname      string            `json:"nickname"`
			Metadata      map[string]string `json:"metadata"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		if p.Type != "" && p.Type != "recurring" && p.Type != "one_time" {
			return nil, fmt.Errorf("price type %q: want recurring or one_time", p.Type)
		}
		pid, err := s.CreatePrice(PriceParams{Product: p.Product, UnitAmount: p.UnitAmount, Currency: p.Currency, OneTime: p.Type == "one_time",
			Interval: p.Interval, IntervalCount: p.IntervalCount, UsageType: p.UsageType, Nickname: p.Nickname, Metadata: p.Metadata})
		return map[string]string{"id": pid}, err
	})
	handle("POST /checkout", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var mode struct {
			Mode string `json:"mode"`
		}
		if raw, ok := b["mode"]; ok {
			if err := json.Unmarshal(raw, &mode.Mode); err != nil {
				return nil, err
			}
			delete(b, "mode")
		}
		switch mode.Mode {
		case ModePayment:
			return s.controlPayment(b)
		case "", ModeSubscription:
		default:
			return nil, fmt.Errorf("mode %q: want subscription or payment", mode.Mode)
		}
		var p struct {
			Customer string `json:"customer"`
			Email    string `json:"email"`
			Name     string `json:"name"`
			Items    []struct {
				Price    string `json:"price"`
				Quantity int64  `json:"quantity"`
			} `json:"items"`
			TrialDays            int               `json:"trial_days"`
			CardDeclines         bool              `json:"card_declines"`
			ClientReferenceID    string            `json:"client_reference_id"`
			Metadata             map[string]string `json:"metadata"`
			SubscriptionMetadata map[string]string `json:"subscription_metadata"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		cp := CheckoutParams{Customer: p.Customer, Email: p.Email, Name: p.Name, TrialDays: p.TrialDays, CardDeclines: p.CardDeclines,
			ClientReferenceID: p.ClientReferenceID, Metadata: p.Metadata, SubscriptionMetadata: p.SubscriptionMetadata}
		for _, it := range p.Items {
			cp.Items = append(cp.Items, ItemParams{Price: it.Price, Quantity: it.Quantity})
		}
		res, err := s.Checkout(cp)
		return map[string]any{"session": res.Session, "subscription": res.Subscription, "customer": res.Customer,
			"invoice": res.Invoice, "completed": res.Completed}, err
	})
	handle("POST /checkout/{id}/settle", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Succeeded bool `json:"succeeded"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.SettleAsyncPayment(id(r), p.Succeeded)
	})
	handle("POST /invoices", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Customer string `json:"customer"`
			Email    string `json:"email"`
			Name     string `json:"name"`
			Items    []struct {
				Price    string `json:"price"`
				Quantity int64  `json:"quantity"`
			} `json:"items"`
			CollectionMethod string `json:"collection_method"`
			DaysUntilDue     int    `json:"days_until_due"`
			CardDeclines     bool   `json:"card_declines"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		ip := InvoiceParams{Customer: p.Customer, Email: p.Email, Name: p.Name, CollectionMethod: p.CollectionMethod,
			DaysUntilDue: p.DaysUntilDue, CardDeclines: p.CardDeclines}
		for _, it := range p.Items {
			ip.Items = append(ip.Items, ItemParams{Price: it.Price, Quantity: it.Quantity})
		}
		res, err := s.CreateInvoice(ip)
		return map[string]any{"invoice": res.Invoice, "customer": res.Customer}, err
	})
	handle("POST /subscriptions", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Customer string `json:"customer"`
			Email    string `json:"email"`
			Name     string `json:"name"`
			Items    []struct {
				Price    string `json:"price"`
				Quantity int64  `json:"quantity"`
			} `json:"items"`
			TrialDays        int               `json:"trial_days"`
			CollectionMethod string            `json:"collection_method"`
			DaysUntilDue     int               `json:"days_until_due"`
			CardDeclines     bool              `json:"card_declines"`
			Metadata         map[string]string `json:"metadata"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		sp := SubscriptionParams{Customer: p.Customer, Email: p.Email, Name: p.Name, TrialDays: p.TrialDays,
			CollectionMethod: p.CollectionMethod, DaysUntilDue: p.DaysUntilDue, CardDeclines: p.CardDeclines, Metadata: p.Metadata}
		for _, it := range p.Items {
			sp.Items = append(sp.Items, ItemParams{Price: it.Price, Quantity: it.Quantity})
		}
		res, err := s.CreateSubscription(sp)
		return map[string]any{"subscription": res.Subscription, "customer": res.Customer, "invoice": res.Invoice}, err
	})
	handle("POST /subscriptions/{id}/pause_collection", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Behavior  string    `json:"behavior"`
			ResumesAt time.Time `json:"resumes_at"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.SetPauseCollection(id(r), p.Behavior, p.ResumesAt)
	})
	handle("POST /subscriptions/{id}/extend_trial", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			TrialEnd time.Time `json:"trial_end"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.ExtendTrial(id(r), p.TrialEnd)
	})
	handle("POST /subscriptions/{id}/metadata", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Metadata map[string]string `json:"metadata"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.SetSubscriptionMetadata(id(r), p.Metadata)
	})
	handle("POST /subscription_items/{id}/usage", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Quantity int64 `json:"quantity"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.ReportUsage(id(r), p.Quantity)
	})
	handle("POST /events", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Type     string `json:"type"`
			Object   string `json:"object"`
			Livemode bool   `json:"livemode"`
			Account  string `json:"account"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		if p.Type == "" {
			return nil, errors.New("an event needs a type")
		}
		eid, err := s.InjectEvent(p.Type, p.Object, InjectOptions{Livemode: p.Livemode, Account: p.Account})
		return map[string]string{"id": eid}, err
	})
	handle("POST /account", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			APIVersion string `json:"api_version"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.SetAccountAPIVersion(p.APIVersion)
	})
	handle("POST /advance", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Duration string `json:"duration"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		d, err := time.ParseDuration(p.Duration)
		if err != nil || d < 0 {
			return nil, errors.New(`duration must be a positive Go duration such as "720h"`)
		}
		s.Advance(d)
		return map[string]any{"now": s.Now()}, nil
	})
	handle("GET /now", func(*http.Request, map[string]json.RawMessage) (any, error) {
		return map[string]any{"now": s.Now()}, nil
	})
	handle("POST /customers/{id}/card_declines", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Declines bool `json:"declines"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.SetCardDeclines(id(r), p.Declines)
	})
	handle("POST /customers/{id}/fail_next_payment", func(r *http.Request, _ map[string]json.RawMessage) (any, error) {
		return nil, s.FailNextPayment(id(r))
	})
	handle("POST /invoices/{id}/pay", func(r *http.Request, _ map[string]json.RawMessage) (any, error) { return nil, s.PayInvoice(id(r)) })
	handle("POST /invoices/{id}/pay_out_of_band", func(r *http.Request, _ map[string]json.RawMessage) (any, error) {
		return nil, s.PayOutOfBand(id(r))
	})
	handle("POST /subscriptions/{id}/cancel", func(r *http.Request, _ map[string]json.RawMessage) (any, error) { return nil, s.CancelNow(id(r)) })
	handle("POST /subscriptions/{id}/pause", func(r *http.Request, _ map[string]json.RawMessage) (any, error) { return nil, s.Pause(id(r)) })
	handle("POST /subscriptions/{id}/resume", func(r *http.Request, _ map[string]json.RawMessage) (any, error) { return nil, s.Resume(id(r)) })
	handle("POST /subscriptions/{id}/cancel_at_period_end", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			On bool `json:"on"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.CancelAtPeriodEnd(id(r), p.On)
	})
	handle("POST /subscriptions/{id}/price", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Price      string `json:"price"`
			InvoiceNow bool   `json:"invoice_now"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.ChangePrice(id(r), p.Price, ChangeOptions{InvoiceNow: p.InvoiceNow})
	})
	handle("POST /subscriptions/{id}/quantity", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Quantity   int64 `json:"quantity"`
			InvoiceNow bool  `json:"invoice_now"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.ChangeQuantity(id(r), p.Quantity, ChangeOptions{InvoiceNow: p.InvoiceNow})
	})
	handle("POST /subscriptions/{id}/exhaust_dunning", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Final string `json:"final"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.ExhaustDunning(id(r), p.Final)
	})
	handle("POST /charges/{id}/refund", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Amount int64 `json:"amount"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		rid, err := s.Refund(id(r), p.Amount)
		return map[string]string{"id": rid}, err
	})
	handle("POST /charges/{id}/dispute", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Reason string `json:"reason"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		did, err := s.Dispute(id(r), p.Reason)
		return map[string]string{"id": did}, err
	})
	handle("POST /disputes/{id}/close", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			Won bool `json:"won"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		return nil, s.CloseDispute(id(r), p.Won)
	})
	handle("POST /endpoints", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			URL           string   `json:"url"`
			Secrets       []string `json:"secrets"`
			APIVersion    string   `json:"api_version"`
			Types         []string `json:"types"`
			Workers       int      `json:"workers"`
			Reorder       bool     `json:"reorder"`
			DuplicateRate float64  `json:"duplicate_rate"`
			DropRate      float64  `json:"drop_rate"`
			MaxAttempts   int      `json:"max_attempts"`
			RetryBackoff  string   `json:"retry_backoff"`
			Seed          uint64   `json:"seed"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		if p.URL == "" || len(p.Secrets) == 0 {
			return nil, errors.New("an endpoint needs a url and at least one secret")
		}
		if p.APIVersion != "" {
			if err := CheckVersion(p.APIVersion); err != nil {
				return nil, err
			}
		}
		var backoff time.Duration
		if p.RetryBackoff != "" {
			var err error
			if backoff, err = time.ParseDuration(p.RetryBackoff); err != nil {
				return nil, err
			}
		}
		s.AddEndpoint(p.URL, EndpointOptions{Secrets: p.Secrets, APIVersion: p.APIVersion, Types: p.Types, Workers: p.Workers, Reorder: p.Reorder,
			DuplicateRate: p.DuplicateRate, DropRate: p.DropRate, MaxAttempts: p.MaxAttempts, RetryBackoff: backoff, Seed: p.Seed})
		return nil, nil
	})
	handle("POST /endpoints/hold", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			On bool `json:"on"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		s.HoldWebhooks(p.On)
		return nil, nil
	})
	handle("POST /faults", func(r *http.Request, b map[string]json.RawMessage) (any, error) {
		var p struct {
			RateLimitRate   float64 `json:"rate_limit_rate"`
			ErrorRate       float64 `json:"error_rate"`
			RateLimitNext   int     `json:"rate_limit_next"`
			ErrorNext       int     `json:"error_next"`
			LockTimeoutNext int     `json:"lock_timeout_next"`
			ConflictNext    int     `json:"conflict_next"`
			FinalErrorNext  int     `json:"final_error_next"`
			Latency         string  `json:"latency"`
		}
		if err := decode(b, &p); err != nil {
			return nil, err
		}
		f := Faults{RateLimitRate: p.RateLimitRate, ErrorRate: p.ErrorRate, RateLimitNext: p.RateLimitNext, ErrorNext: p.ErrorNext,
			LockTimeoutNext: p.LockTimeoutNext, ConflictNext: p.ConflictNext, FinalErrorNext: p.FinalErrorNext}
		if p.Latency != "" {
			d, err := time.ParseDuration(p.Latency)
			if err != nil {
				return nil, err
			}
			f.Latency = d
		}
		s.SetFaults(f)
		return nil, nil
	})
	handle("POST /flush", func(r *http.Request, _ map[string]json.RawMessage) (any, error) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
		defer cancel()
		return nil, s.FlushWebhooks(ctx)
	})
	handle("GET /events", func(r *http.Request, _ map[string]json.RawMessage) (any, error) {
		type brief struct {
			ID   string `json:"id"`
			Type string `json:"type"`
		}
		evs := s.Events()
		out := make([]brief, len(evs))
		for i, ev := range evs {
			out[i] = brief{ev.ID, ev.Type}
		}
		return out, nil
	})
	handle("GET /requests", func(r *http.Request, _ map[string]json.RawMessage) (any, error) {
		return map[string]any{"routes": s.Requests(), "faulted": s.Faulted()}, nil
	})
	handle("GET /endpoints", func(r *http.Request, _ map[string]json.RawMessage) (any, error) {
		type stats struct {
			URL   string        `json:"url"`
			Stats DeliveryStats `json:"stats"`
		}
		s.mu.Lock()
		eps := slices.Clone(s.endpoints)
		s.mu.Unlock()
		out := make([]stats, len(eps))
		for i, ep := range eps {
			out[i] = stats{ep.url, ep.Stats()}
		}
		return out, nil
	})
	handle("GET /subscriptions/{id}", func(r *http.Request, _ map[string]json.RawMessage) (any, error) {
		sub, ok := s.Subscription(id(r))
		if !ok {
			return nil, errNotFound("subscription", id(r))
		}
		return map[string]any{"subscription": sub, "invoices": s.Invoices(sub.ID), "paid_through": s.PaidThrough(sub.ID)}, nil
	})
	return mux
}

// controlPayment plays POST /checkout with "mode":"payment".
func (s *Sim) controlPayment(b map[string]json.RawMessage) (any, error) {
	var p struct {
		Customer string `json:"customer"`
		Email    string `json:"email"`
		Name     string `json:"name"`
		Guest    bool   `json:"guest"`
		Items    []struct {
			Price    string `json:"price"`
			Quantity int64  `json:"quantity"`
		} `json:"items"`
		Async             bool              `json:"async"`
		CardDeclines      bool              `json:"card_declines"`
		InvoiceCreation   bool              `json:"invoice_creation"`
		ClientReferenceID string            `json:"client_reference_id"`
		Metadata          map[string]string `json:"metadata"`
	}
	if err := decode(b, &p); err != nil {
		return nil, err
	}
	pp := PaymentParams{Customer: p.Customer, Email: p.Email, Name: p.Name, Guest: p.Guest, Async: p.Async, CardDeclines: p.CardDeclines,
		InvoiceCreation: p.InvoiceCreation, ClientReferenceID: p.ClientReferenceID, Metadata: p.Metadata}
	for _, it := range p.Items {
		pp.Items = append(pp.Items, ItemParams{Price: it.Price, Quantity: it.Quantity})
	}
	res, err := s.CheckoutPayment(pp)
	return map[string]any{"session": res.Session, "customer": res.Customer, "payment_intent": res.PaymentIntent, "charge": res.Charge,
		"invoice": res.Invoice, "completed": res.Completed}, err
}

// decode reads a control request's body into v, refusing unknown fields.
func decode(body map[string]json.RawMessage, v any) error {
	b, _ := json.Marshal(body)
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func controlError(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}
