package stripesim

import (
	"encoding/json"
	"fmt"
	"strings"
)

// eventSource says where an event comes from: the sandbox account in test mode unless
// told otherwise.
type eventSource struct {
	livemode bool
	account  string
}

// emit records an event with a snapshot of object and hands it to the endpoints.
func (s *Sim) emit(typ string, object obj, previous obj) {
	s.emitFrom(typ, object, previous, eventSource{})
}

func (s *Sim) emitFrom(typ string, object obj, previous obj, src eventSource) *Event {
	if s.opts.NoEvents {
		return nil
	}
	ev := &Event{ID: s.id("evt"), Type: typ, Created: s.unix(), seq: s.next(), Object: object, Previous: previous,
		APIVersion: s.opts.AccountAPIVersion, Livemode: src.livemode, Account: src.account}
	pending := 0
	for _, ep := range s.endpoints {
		if ep.wants(typ) {
			pending++
		}
	}
	// An event is created in the account's version, and once more in each version an
	// endpoint that wants it pins (Stripe: "Events sent to this endpoint will be
	// generated with this Stripe Version instead of your account's default").
	ev.Payload = s.renderEvent(ev, ev.APIVersion, pending)
	for _, ep := range s.endpoints {
		v := ep.opts.APIVersion
		if !ep.wants(typ) || v == "" || v == ev.APIVersion || ev.payloads[v] != nil {
			continue
		}
		if ev.payloads == nil {
			ev.payloads = map[string][]byte{}
		}
		ev.payloads[v] = s.renderEvent(ev, v, pending)
	}
	s.events = append(s.events, ev)
	s.eventByID[ev.ID] = ev
	for _, ep := range s.endpoints {
		if ep.wants(typ) {
			ep.enqueue(ev)
		}
	}
	return ev
}

func (s *Sim) renderEvent(ev *Event, version string, pending int) []byte {
	object := convert(version, ev.Object).(obj)
	if ev.Livemode {
		if version == APIVersion {
			object = deepCopy(object).(obj) // the snapshot stays as it was
		}
		setLivemode(object)
	}
	data := obj{"object": object}
	if ev.Previous != nil {
		data["previous_attributes"] = convertPrevious(version, ev.Object, ev.Previous)
	}
	env := obj{
		"id": ev.ID, "object": "event", "api_version": version, "created": ev.Created, "data": data,
		"livemode": ev.Livemode, "pending_webhooks": pending, "request": obj{"id": nil, "idempotency_key": nil}, "type": ev.Type,
	}
	if ev.Account != "" {
		env["account"] = ev.Account
	}
	payload, err := json.Marshal(env)
	if err != nil {
		panic(fmt.Sprintf("stripesim: render event: %v", err)) // the renderers only build JSON-safe values
	}
	return payload
}

func (s *Sim) emitSub(typ string, sub *Subscription, previous obj) {
	s.emit(typ, s.renderSubscription(sub, nil), previous)
}

func (s *Sim) emitInvoice(typ string, inv *Invoice) { s.emit(typ, s.renderInvoice(inv, nil), nil) }

// InjectOptions say where an injected event comes from.
type InjectOptions struct {
	// Livemode marks the event and its object as live-mode, as if from a live endpoint
	// or a live key's Events API.
	Livemode bool
	// Account is a connected account ("acct_..."): the event carries it as a top-level
	// `account`, as events from Connect accounts do.
	Account string
}

// InjectEvent emits an event of type typ about the object with id objectID (a
// subscription, invoice, charge, customer, checkout session, dispute, price or product)
// as it is now, from live mode or a connected account. It is delivered to the endpoints
// and listed by the Events API like any other, and its id is returned. It returns an
// error for an unknown object or an account id without the acct_ prefix.
func (s *Sim) InjectEvent(typ, objectID string, o InjectOptions) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.Account != "" && !strings.HasPrefix(o.Account, "acct_") {
		return "", fmt.Errorf("account %q: want an acct_ id", o.Account)
	}
	object, err := s.renderByID(objectID)
	if err != nil {
		return "", err
	}
	ev := s.emitFrom(typ, object, nil, eventSource{livemode: o.Livemode, account: o.Account})
	if ev == nil {
		return "", nil
	}
	return ev.ID, nil
}

// renderByID renders any stored object in 2023-10-16, knowing its kind by its prefix.
func (s *Sim) renderByID(id string) (obj, error) {
	prefix, _, _ := strings.Cut(id, "_")
	switch prefix {
	case "sub":
		if sub, ok := s.subs[id]; ok {
			return s.renderSubscription(sub, nil), nil
		}
	case "in":
		if inv, ok := s.invoices[id]; ok {
			return s.renderInvoice(inv, nil), nil
		}
	case "ch":
		if c, ok := s.charges[id]; ok {
			return s.renderCharge(c), nil
		}
	case "cus":
		if c, ok := s.customers[id]; ok {
			return s.renderCustomer(c), nil
		}
	case "cs":
		if cs, ok := s.sessions[id]; ok {
			return s.renderSession(cs), nil
		}
	case "dp":
		if d, ok := s.disputes[id]; ok {
			return s.renderDispute(d), nil
		}
	case "price":
		if p, ok := s.prices[id]; ok {
			return s.renderPrice(p, nil), nil
		}
	case "prod":
		if p, ok := s.products[id]; ok {
			return s.renderProduct(p), nil
		}
	}
	return nil, errNotFound("object", id)
}
