package main

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76"

	"github.com/keysync/keysync/internal/delivery"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/license"
	"github.com/keysync/keysync/internal/postgres"
	"github.com/keysync/keysync/internal/stripeapi"
	"github.com/keysync/keysync/internal/syncer"
)

// customerSide wires package delivery into serve: the license page on the public
// listener and, with KEYSYNC_SMTP_URL, the e-mail of new keys and the lost-keys form.
// newApp makes it before the sync engine (whose KeyCreated hook it is) and mounts it
// once the River client exists.
type customerSide struct {
	cfg config
	log zerolog.Logger
	// client queues e-mail jobs; nil until mount, and with e-mail off.
	client *river.Client[pgx.Tx]
}

// keyCreated is the sync engine's KeyCreated hook: with e-mail on, it asks for an
// outbox scan, which mails the new key. A scan it fails to queue is made up by the
// periodic one (jobs.OutboxEvery).
func (c *customerSide) keyCreated(ctx context.Context) {
	if c.client == nil {
		return
	}
	if err := jobs.QueueOutboxScan(ctx, c.client); err != nil {
		c.log.Warn().Err(err).Msg("could not queue the e-mail of a new key; the periodic outbox scan will")
	}
}

// mount serves the license page on mux and, with e-mail on, registers the e-mail
// workers and the outbox scan on River and serves the lost-keys form.
func (c *customerSide) mount(mux *http.ServeMux, workers *river.Workers, client *river.Client[pgx.Tx], store *postgres.Store,
	engine *syncer.Syncer, parts engineParts) error {
	keys := deliveryKeys{store: store, names: &productNames{parts: parts, byProduct: map[int]string{}}}
	licenses := delivery.Licenses{Store: keys, Cryptolens: parts.crypto, TimeLimitedFeature: c.cfg.TimeLimitedFeature}
	clientIP := delivery.ClientIP(c.cfg.ClientIPHeader)
	opts := delivery.PageOptions{Livemode: parts.stripe.Livemode(), MaxAge: c.cfg.LicensePageMaxAge, PortalURL: c.cfg.PortalURL,
		Template: c.cfg.LicenseTemplate, PerMinute: c.cfg.LicenseRateLimit, ClientIP: clientIP, Now: parts.crypto.Now}

	if c.cfg.SMTP != nil {
		sender, err := delivery.NewSMTP(*c.cfg.SMTP, c.cfg.EmailFrom)
		if err != nil {
			return err
		}
		log := c.log.With().Str("component", "email").Logger()
		emailer := delivery.NewEmailer(store, parts.stripe, licenses, sender, delivery.EmailOptions{Templates: c.cfg.EmailTemplates,
			PortalURL: c.cfg.PortalURL, Domain: sender.Domain()}, log)
		river.AddWorker(workers, &jobs.EmailKeyWorker{Send: emailer.SendKey})
		river.AddWorker(workers, &jobs.EmailOutboxWorker{Outbox: emailer.Outbox, Client: client})
		river.AddWorker(workers, &jobs.ResendKeysWorker{Resend: emailer.Resend})
		client.PeriodicJobs().Add(jobs.OutboxJob())
		c.client = client
		mux.Handle("POST "+delivery.ResendPath, delivery.NewResend(jobs.ResendQueue{Client: client},
			delivery.ResendOptions{Template: c.cfg.LicenseTemplate, ClientIP: clientIP}, log))
		opts.ResendPath = delivery.ResendPath
		log.Info().Str("smtp_host", c.cfg.SMTP.Host).Int("smtp_port", c.cfg.SMTP.Port).Str("tls", c.cfg.SMTP.TLS).
			Msg("new keys are e-mailed to customers; the lost-keys form is on")
	}

	// Every well-formed session id costs a Stripe read on the client every Sync uses:
	// the page's reads get a quarter of its rate, so made-up ids cannot starve the Syncs.
	log := c.log.With().Str("component", "license").Logger()
	reads := delivery.NewSessionReads(parts.stripe, delivery.SessionBudget{PerSecond: c.cfg.StripeRateLimit / 4}, log)
	page := delivery.NewPage(reads, deliverySyncer{engine: engine}, licenses, opts, log)
	mux.Handle("GET "+delivery.Path, page)
	return nil
}

// deliverySyncer runs the license page's Syncs on the sync engine.
type deliverySyncer struct{ engine *syncer.Syncer }

// SyncSubscription syncs a subscription.
func (d deliverySyncer) SyncSubscription(ctx context.Context, id string, cause syncer.Cause) (delivery.Synced, error) {
	res, err := d.engine.Sync(ctx, id, cause)
	return delivery.Synced{Unmapped: res.Unmapped}, err
}

// SyncPurchase syncs a one-time purchase (the page's Checkout Session in payment mode).
func (d deliverySyncer) SyncPurchase(ctx context.Context, id string, cause syncer.Cause) (delivery.Synced, error) {
	res, err := d.engine.SyncPurchase(ctx, id, cause)
	return delivery.Synced{Unmapped: res.Unmapped}, err
}

// deliveryKeys reads the keys keysync recorded, for the license page and the e-mails.
type deliveryKeys struct {
	store *postgres.Store
	names *productNames
}

// OwnerKeys returns the keys of a subscription (one per Cryptolens product for a
// bundle) or of a purchase (perpetual), named after the Stripe products sold.
func (k deliveryKeys) OwnerKeys(ctx context.Context, o delivery.Owner) ([]delivery.KeyRef, error) {
	refs, err := k.store.OwnerKeyRefs(ctx, o)
	if err != nil || len(refs) == 0 {
		return refs, err
	}
	k.names.learn(ctx, o)
	return k.names.name(refs), nil
}

// CustomerKeys returns the keys of a customer's subscriptions and purchases.
func (k deliveryKeys) CustomerKeys(ctx context.Context, customer string) ([]delivery.KeyRef, error) {
	refs, err := k.store.CustomerKeyRefs(ctx, customer)
	if err != nil {
		return nil, err
	}
	for _, r := range refs {
		if !k.names.known(r.ProductID) {
			k.names.learn(ctx, r.Owner)
		}
	}
	return k.names.name(refs), nil
}

// productNames names Cryptolens products after the Stripe products whose prices map to
// them, as read from subscriptions: what the customer bought, for the page and the
// e-mails. Names are kept once learnt; a failed read leaves keys unnamed (the page
// says "Product <id>").
type productNames struct {
	parts engineParts
	mu    sync.Mutex
	// byProduct maps a Cryptolens product to its Stripe product names, joined.
	byProduct map[int]string
}

func (n *productNames) known(product int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.byProduct[product]
	return ok
}

// learn reads what a subscription or a purchase sold and names the Cryptolens products
// its items map to.
func (n *productNames) learn(ctx context.Context, o delivery.Owner) {
	type sold struct {
		item license.Item
		name string
	}
	var items []sold
	add := func(it license.Item, p *stripe.Product) {
		if p != nil && p.Name != "" {
			items = append(items, sold{it, p.Name})
		}
	}
	switch {
	case o.Kind == delivery.OwnerSubscription:
		sub, err := n.parts.stripe.GetSubscription(ctx, o.ID)
		if err != nil || sub.Items == nil {
			return
		}
		for _, it := range sub.Items.Data {
			if it.Price != nil {
				add(stripeapi.Item(it), it.Price.Product)
			}
		}
	case strings.HasPrefix(o.ID, "cs_"):
		lines, err := n.parts.stripe.SessionLineItems(ctx, o.ID)
		if err != nil {
			return
		}
		for _, l := range lines {
			if l.Price != nil {
				add(stripeapi.PriceItem(l.Price, l.Quantity), l.Price.Product)
			}
		}
	default: // an invoice of no subscription
		inv, err := n.parts.stripe.PurchaseInvoice(ctx, o.ID)
		if err != nil || inv.Lines == nil {
			return
		}
		for _, l := range inv.Lines.Data {
			if l.Price != nil {
				add(stripeapi.PriceItem(l.Price, l.Quantity), l.Price.Product)
			}
		}
	}
	names := map[int][]string{}
	for _, s := range items {
		plan, ok, err := n.parts.mapping.Resolve(s.item)
		if err != nil || !ok {
			continue
		}
		if !slices.Contains(names[plan.ProductID], s.name) {
			names[plan.ProductID] = append(names[plan.ProductID], s.name)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for product, ns := range names {
		n.byProduct[product] = strings.Join(ns, " + ")
	}
}

// name sets each ref's product name from what was learnt.
func (n *productNames) name(refs []delivery.KeyRef) []delivery.KeyRef {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := range refs {
		if refs[i].ProductName == "" {
			refs[i].ProductName = n.byProduct[refs[i].ProductID]
		}
	}
	return refs
}
