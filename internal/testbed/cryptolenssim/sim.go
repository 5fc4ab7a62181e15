// Package cryptolenssim is a stateful, in-memory Cryptolens Web API: the methods keysync
// calls, with their documented semantics (../shared/research/cryptolens.md), tokens with
// method permissions, an injectable clock, a call log, and fault injection. It is an
// http.Handler for tests (httptest) and the sandbox binary.
package cryptolenssim

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Method names, as in the URL path.
const (
	CreateKey        = "CreateKey"
	GetKey           = "GetKey"
	GetKeys          = "GetKeys"
	ExtendLicense    = "ExtendLicense"
	BlockKey         = "BlockKey"
	UnblockKey       = "UnblockKey"
	AddFeature       = "AddFeature"
	RemoveFeature    = "RemoveFeature"
	MachineLockLimit = "MachineLockLimit"
	// ChangeNotes replaces a key's notes (the official SDKs have it; keysync does not call it).
	ChangeNotes = "ChangeNotes"
	// AddCustomer is the permission CreateKey also needs with AddOrUseExistingCustomer.
	AddCustomer = "AddCustomer"
)

// Mutating lists the methods that change state.
var Mutating = []string{CreateKey, ExtendLicense, BlockKey, UnblockKey, AddFeature, RemoveFeature, MachineLockLimit, ChangeNotes}

// Cryptolens' messages, verbatim.
const (
	MsgAuth            = "Unable to authenticate."
	MsgAccessDenied    = "Access denied."
	MsgInvalidInput    = "The input parameters were incorrect."
	MsgProductNotFound = "Could not find the product."
	MsgKeyNotFound     = "Could not find the key."
	MsgNotesTooLong    = "The notes field cannot be more than 500 characters."
	MsgSomethingWrong  = "Something went wrong. Please contact support@cryptolens.io and we will try to fix it."
	MsgNoSubscription  = "No active subscription found. Please contact support."
)

// routes maps a method to its URL group.
var routes = map[string]string{
	CreateKey: "key", GetKey: "key", ExtendLicense: "key", BlockKey: "key", UnblockKey: "key",
	AddFeature: "key", RemoveFeature: "key", MachineLockLimit: "key", ChangeNotes: "key", GetKeys: "product",
}

// Key is a license key's state.
type Key struct {
	ProductID       int
	ID              int64
	GlobalID        int64
	Key             string
	Created         time.Time
	Expires         time.Time
	Period          int
	Features        [8]bool
	Notes           string
	Block           bool
	MaxNoOfMachines int
	CustomerID      int
	// AutoBlocked is true when the product's "Block Expired Licenses" option blocked it.
	AutoBlocked bool
}

// Customer is a customer's state.
type Customer struct {
	ID          int
	Name        string
	Email       string
	CompanyName string
	Created     time.Time
}

// ProductOptions are a product's settings.
type ProductOptions struct {
	// BlockExpired mirrors Cryptolens' "Block Expired Licenses": keys that are
	// time-limited are blocked about an hour after they expire (Cryptolens' FAQ; its
	// feature-definitions page says expiry applies only to time-limited keys).
	BlockExpired bool
	// TimeLimitedFeature is the feature (1..8) that marks a key as time-limited, set in
	// the product's feature definitions; 0 means Cryptolens' default, F1.
	TimeLimitedFeature int
	// AllTimeLimited mirrors the product option "Treat all licenses as time-limited".
	AllTimeLimited bool
	// SKGL makes the product use the legacy SKGL key algorithm: the key string encodes
	// the expiry and features, so ExtendLicense (documented) and AddFeature and
	// RemoveFeature (a guess: "certain properties") change it and answer the new key in
	// message. SKM15 products (the default) keep their key strings.
	SKGL bool
}

// timeLimited reports whether Cryptolens treats k as time-limited in a product with
// these options.
func (o ProductOptions) timeLimited(k *Key) bool {
	f := o.TimeLimitedFeature
	if f < 1 || f > 8 {
		f = 1
	}
	return o.AllTimeLimited || k.Features[f-1]
}

type product struct {
	opts   ProductOptions
	keys   []*Key // in id order
	byKey  map[string]*Key
	nextID int64
}

// Token is an access token's scope.
type Token struct {
	// Methods the token may call; empty: all.
	Methods []string
	// ProductID locks the token to one product; 0: any.
	ProductID int
}

// Faults injects failures. Rates are probabilities from 0 to 1, drawn per call from the
// simulator's seeded generator, so a test run is repeatable.
type Faults struct {
	// Down answers every call with HTTP 503 and an HTML page, as a load balancer does
	// when the service is gone.
	Down bool
	// ErrorRate answers with a server error, half of the time HTTP 500 with an HTML
	// page, half of the time HTTP 200 with "Something went wrong". Nothing changes.
	ErrorRate float64
	// RateLimitRate answers HTTP 429. Nothing changes.
	RateLimitRate float64
	// GarbageRate answers HTTP 200 with a body that is not JSON. Nothing changes.
	GarbageRate float64
	// LostAnswerRate applies a mutating call and then answers HTTP 502, as when a
	// proxy loses the answer: the caller cannot know the change was made.
	LostAnswerRate float64
	// NoSubscription answers every call with "No active subscription found.", as when
	// the vendor's Cryptolens subscription has lapsed.
	NoSubscription bool
	// TimeoutRate never answers that share of calls: the request hangs until the caller
	// gives up (at most a minute), and nothing changes.
	TimeoutRate float64
	// Latency is added before every answer.
	Latency time.Duration
}

// Call is one entry of the call log.
type Call struct {
	At     time.Time
	Method string
	// Params are the call's parameters, without the token.
	Params url.Values
	Status int
	// Result is 0 for success, 1 for a Cryptolens error, -1 when no envelope was sent.
	Result  int
	Message string
	// Applied is true when the call changed state.
	Applied bool
}

// Sim is the simulator. The zero value is not usable; call New.
type Sim struct {
	mu        sync.Mutex
	now       func() time.Time
	offset    time.Duration
	rng       *rand.Rand
	products  map[int]*product
	tokens    map[string]Token
	customers []*Customer
	globalID  int64
	faults    Faults
	calls     []Call
	signer    signer
	wholeDays bool
}

// Option configures a Sim.
type Option func(*Sim)

// WithClock makes the simulator read time from now (default time.Now).
func WithClock(now func() time.Time) Option { return func(s *Sim) { s.now = now } }

// WithWholeDays makes Cryptolens keep dates as whole days: a key is created at
// midnight (UTC) of today and ExtendLicense adds days to the date, dropping the time of
// day. A real GetKey answer kept in the .NET SDK's tests has "created" and "expires" at
// midnight next to a "signDate" with seconds; a newer one has seconds throughout. The
// real behaviour is unverified, so keysync must be right under either.
func WithWholeDays() Option { return func(s *Sim) { s.wholeDays = true } }

// WithSeed seeds key generation and fault draws (default 1).
func WithSeed(seed uint64) Option {
	return func(s *Sim) { s.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }
}

// New returns an empty simulator: add products and tokens before use.
func New(opts ...Option) *Sim {
	s := &Sim{now: time.Now, products: map[int]*product{}, tokens: map[string]Token{}}
	WithSeed(1)(s)
	for _, o := range opts {
		o(s)
	}
	return s
}

// AddProduct creates a product.
func (s *Sim) AddProduct(id int, opts ProductOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.products[id] = &product{opts: opts, byKey: map[string]*Key{}, nextID: 1}
}

// AddToken creates an access token with the given scope.
func (s *Sim) AddToken(token string, scope Token) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = scope
}

// SetFaults replaces the injected faults.
func (s *Sim) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// Advance moves the simulator's clock forward by d (on top of its clock).
func (s *Sim) Advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offset += d
}

// Now returns the simulator's current time.
func (s *Sim) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clock()
}

func (s *Sim) clock() time.Time { return s.now().Add(s.offset).UTC().Truncate(time.Second) }

// Key returns a copy of a key's state, as a vendor would see it in the dashboard.
func (s *Sim) Key(productID int, key string) (Key, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.products[productID]
	if !ok {
		return Key{}, false
	}
	s.autoBlock(p)
	k, ok := p.byKey[key]
	if !ok {
		return Key{}, false
	}
	return *k, true
}

// Keys returns copies of all of a product's keys, in id order.
func (s *Sim) Keys(productID int) []Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.products[productID]
	if !ok {
		return nil
	}
	s.autoBlock(p)
	out := make([]Key, len(p.keys))
	for i, k := range p.keys {
		out[i] = *k
	}
	return out
}

// Customers returns copies of all customers.
func (s *Sim) Customers() []Customer {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Customer, len(s.customers))
	for i, c := range s.customers {
		out[i] = *c
	}
	return out
}

// PutKey stores a key as a vendor would create or edit it by hand in the dashboard (no
// call is logged). A zero ID or GlobalID is assigned; an empty Key is generated. With
// WithWholeDays its dates are kept as whole days, as every date is.
func (s *Sim) PutKey(k Key) (Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.products[k.ProductID]
	if !ok {
		return Key{}, fmt.Errorf("no product %d", k.ProductID)
	}
	if !k.Created.IsZero() {
		k.Created = s.day(k.Created)
	}
	if !k.Expires.IsZero() {
		k.Expires = s.day(k.Expires)
	}
	if old, ok := p.byKey[k.Key]; ok && k.Key != "" {
		k.ID, k.GlobalID = old.ID, old.GlobalID
		*old = k
		return k, nil
	}
	s.newKey(p, &k)
	return k, nil
}

// EditKey changes a key in place as a vendor would by hand (no call is logged).
func (s *Sim) EditKey(productID int, key string, edit func(*Key)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.products[productID]
	if !ok {
		return false
	}
	k, ok := p.byKey[key]
	if !ok {
		return false
	}
	edit(k)
	return true
}

// Calls returns a copy of the call log.
func (s *Sim) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// CallCount returns how many calls of method were logged (all outcomes).
func (s *Sim) CallCount(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		if c.Method == method {
			n++
		}
	}
	return n
}

// AppliedCount returns how many calls of method changed state.
func (s *Sim) AppliedCount(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		if c.Method == method && c.Applied {
			n++
		}
	}
	return n
}

// ResetCalls empties the call log.
func (s *Sim) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
}

func (s *Sim) newKey(p *product, k *Key) {
	if k.ID == 0 {
		k.ID = p.nextID
	}
	p.nextID = max(p.nextID, k.ID) + 1
	s.globalID++
	if k.GlobalID == 0 {
		k.GlobalID = s.globalID
	}
	for k.Key == "" || p.byKey[k.Key] != nil {
		k.Key = s.randomKey()
	}
	if k.Created.IsZero() {
		k.Created = s.day(s.clock())
	}
	p.keys = append(p.keys, k)
	p.byKey[k.Key] = k
}

// day is t as Cryptolens keeps it: to the second, or midnight with WithWholeDays.
func (s *Sim) day(t time.Time) time.Time {
	if s.wholeDays {
		return t.UTC().Truncate(24 * time.Hour)
	}
	return t
}

// rekey gives an SKGL product's key a new string after a change that the string encodes,
// and returns the answer's message: the new key, or "" when the string stays.
func (s *Sim) rekey(p *product, k *Key) string {
	if !p.opts.SKGL {
		return ""
	}
	old := k.Key
	delete(p.byKey, old)
	for k.Key == old || p.byKey[k.Key] != nil {
		k.Key = s.randomKey()
	}
	p.byKey[k.Key] = k
	return k.Key
}

const keyAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

func (s *Sim) randomKey() string {
	var b strings.Builder
	for i := range 20 {
		if i > 0 && i%5 == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(keyAlphabet[s.rng.IntN(len(keyAlphabet))])
	}
	return b.String()
}

// autoBlock applies "Block Expired Licenses": time-limited keys expired for an hour
// get blocked.
func (s *Sim) autoBlock(p *product) {
	if !p.opts.BlockExpired {
		return
	}
	now := s.clock()
	for _, k := range p.keys {
		if !k.Block && p.opts.timeLimited(k) && !k.Expires.IsZero() && now.Sub(k.Expires) >= time.Hour {
			k.Block, k.AutoBlocked = true, true
		}
	}
}

// ServeHTTP answers /api/{group}/{Method} (GET or form POST), paths and parameter names
// case-insensitive, as Cryptolens does. Empty path segments are ignored: the official
// Python SDK calls `…/api//key/ChangeNotes` and `…/api/product/getkeys/`.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.FieldsFunc(r.URL.Path, func(c rune) bool { return c == '/' })
	if len(parts) != 3 || !strings.EqualFold(parts[0], "api") {
		http.NotFound(w, r)
		return
	}
	method := ""
	for m, group := range routes {
		if strings.EqualFold(m, parts[2]) && strings.EqualFold(group, parts[1]) {
			method = m
		}
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	params := url.Values{}
	for k, v := range r.Form {
		// The official clients send a parameter they were not given as its language's
		// null: Node's CreateKey sends CustomerId=null and AllowedMachines=null on every
		// call, Python sends Name=None. Cryptolens documents both as "by default, null".
		if len(v) == 1 && (v[0] == "null" || v[0] == "None") {
			continue
		}
		params[strings.ToLower(k)] = v
	}
	token := params.Get("token")
	params.Del("token")

	s.mu.Lock()
	faults := s.faults
	latency := faults.Latency
	hang := faults.TimeoutRate > 0 && s.rng.Float64() < faults.TimeoutRate
	if hang {
		s.calls = append(s.calls, Call{At: s.clock(), Method: parts[2], Params: params, Result: -1, Message: "timeout"})
	}
	s.mu.Unlock()
	if hang {
		t := time.NewTimer(time.Minute)
		defer t.Stop()
		select {
		case <-r.Context().Done():
		case <-t.C:
		}
		return
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-r.Context().Done():
			t.Stop()
			return
		case <-t.C:
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	// Every answer's Date header carries the simulator's (test) clock, as Cryptolens'
	// answers carry its own.
	w.Header().Set("Date", s.clock().Format(http.TimeFormat))
	call := Call{At: s.clock(), Method: method, Params: params}
	defer func() { s.calls = append(s.calls, call) }()
	if method == "" {
		call.Method = parts[2]
		s.answer(w, &call, http.StatusNotFound, 1, "Unknown method.", nil)
		return
	}
	if s.inject(w, &call, faults) {
		return
	}
	scope, ok := s.tokens[token]
	if !ok {
		s.answer(w, &call, http.StatusUnauthorized, 1, MsgAuth, nil)
		return
	}
	if faults.NoSubscription {
		s.answer(w, &call, http.StatusOK, 1, MsgNoSubscription, nil)
		return
	}
	if !scope.allows(method, params) {
		s.answer(w, &call, http.StatusOK, 1, MsgAccessDenied, nil)
		return
	}
	fields, msg, applied, err := s.handle(method, params)
	if err != nil {
		s.answer(w, &call, http.StatusOK, 1, err.Error(), nil)
		return
	}
	call.Applied = applied
	if applied && faults.LostAnswerRate > 0 && s.rng.Float64() < faults.LostAnswerRate {
		call.Status, call.Result, call.Message = http.StatusBadGateway, -1, "answer lost"
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("<html><body><h1>502 Bad Gateway</h1></body></html>"))
		return
	}
	s.answer(w, &call, http.StatusOK, 0, msg, fields)
}

// inject answers with an injected fault and reports whether it did.
func (s *Sim) inject(w http.ResponseWriter, call *Call, f Faults) bool {
	html := func(status int, text string) {
		call.Status, call.Result, call.Message = status, -1, text
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = fmt.Fprintf(w, "<html><body><h1>%d %s</h1></body></html>", status, text)
	}
	switch {
	case f.Down:
		html(http.StatusServiceUnavailable, "Service Unavailable")
	case f.RateLimitRate > 0 && s.rng.Float64() < f.RateLimitRate:
		html(http.StatusTooManyRequests, "Too Many Requests")
	case f.ErrorRate > 0 && s.rng.Float64() < f.ErrorRate:
		if s.rng.IntN(2) == 0 {
			html(http.StatusInternalServerError, "Internal Server Error")
		} else {
			s.answer(w, call, http.StatusOK, 1, MsgSomethingWrong, nil)
		}
	case f.GarbageRate > 0 && s.rng.Float64() < f.GarbageRate:
		call.Status, call.Result, call.Message = http.StatusOK, -1, "garbage"
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("<!DOCTYPE html><title>Maintenance</title>"))
	default:
		return false
	}
	return true
}

func (t Token) allows(method string, params url.Values) bool {
	if len(t.Methods) > 0 && !slices.Contains(t.Methods, method) {
		return false
	}
	if method == CreateKey && isTrue(params.Get("addoruseexistingcustomer")) && len(t.Methods) > 0 &&
		!slices.Contains(t.Methods, AddCustomer) {
		return false
	}
	if t.ProductID != 0 {
		if id, err := strconv.Atoi(params.Get("productid")); err != nil || id != t.ProductID {
			return false
		}
	}
	return true
}

func (s *Sim) answer(w http.ResponseWriter, call *Call, status, result int, msg string, fields map[string]any) {
	call.Status, call.Result, call.Message = status, result, msg
	out := map[string]any{"result": result, "message": msg}
	for k, v := range fields {
		out[k] = v
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(out)
}

type simError string

func (e simError) Error() string { return string(e) }

// handle runs one method on the state. It returns the answer's extra fields, its
// message, whether state changed, and a Cryptolens error message as error.
func (s *Sim) handle(method string, params url.Values) (map[string]any, string, bool, error) {
	p, productID, err := s.productParam(params)
	if err != nil {
		return nil, "", false, err
	}
	s.autoBlock(p)
	now := s.clock()
	if method == CreateKey {
		return s.createKey(p, productID, params, now)
	}
	if method == GetKeys {
		return s.getKeys(p, params)
	}
	k, ok := p.byKey[params.Get("key")]
	if params.Get("key") == "" {
		return nil, "", false, simError(MsgInvalidInput)
	}
	if !ok {
		return nil, "", false, simError(MsgKeyNotFound)
	}
	switch method {
	case GetKey:
		if isTrue(params.Get("sign")) && params.Get("signmethod") == "1" {
			return s.signedKey(k)
		}
		return map[string]any{"licenseKey": s.wire(k), "metadata": nil}, "", false, nil
	case ChangeNotes:
		notes := params.Get("notes")
		if len([]rune(notes)) > 500 {
			return nil, "", false, simError(MsgNotesTooLong)
		}
		k.Notes = notes
		return nil, "", true, nil
	case ExtendLicense:
		days, err := intParam(params, "noofdays", 0)
		if err != nil {
			return nil, "", false, err
		}
		// Documented: days are added to the expiry, or to today when the key has expired.
		base := k.Expires
		if !base.After(now) {
			base = now
		}
		k.Expires = s.day(base).AddDate(0, 0, days)
		return nil, s.rekey(p, k), true, nil
	case BlockKey, UnblockKey:
		want := method == BlockKey
		if k.Block == want {
			return nil, "Not changed", false, nil
		}
		k.Block = want
		if !want {
			k.AutoBlocked = false
		}
		return nil, "Changed", true, nil
	case AddFeature, RemoveFeature:
		f, err := intParam(params, "feature", 0)
		if err != nil || f < 1 || f > 8 {
			return nil, "", false, simError(MsgInvalidInput)
		}
		k.Features[f-1] = method == AddFeature
		return nil, s.rekey(p, k), true, nil
	case MachineLockLimit:
		n, err := intParam(params, "numberofmachines", -1)
		if err != nil || n < 0 {
			return nil, "", false, simError(MsgInvalidInput)
		}
		k.MaxNoOfMachines = n
		return nil, "", true, nil
	}
	return nil, "", false, simError(MsgInvalidInput)
}

func (s *Sim) productParam(params url.Values) (*product, int, error) {
	id, err := strconv.Atoi(params.Get("productid"))
	if err != nil {
		return nil, 0, simError(MsgInvalidInput)
	}
	p, ok := s.products[id]
	if !ok {
		return nil, 0, simError(MsgProductNotFound)
	}
	return p, id, nil
}

func (s *Sim) createKey(p *product, productID int, params url.Values, now time.Time) (map[string]any, string, bool, error) {
	period, err := intParam(params, "period", 0)
	if err != nil || period < 0 {
		return nil, "", false, simError(MsgInvalidInput)
	}
	machines, err := intParam(params, "maxnoofmachines", 0)
	if err != nil || machines < 0 {
		return nil, "", false, simError(MsgInvalidInput)
	}
	notes := params.Get("notes")
	if len([]rune(notes)) > 500 {
		return nil, "", false, simError(MsgNotesTooLong)
	}
	k := &Key{ProductID: productID, Created: s.day(now), Expires: s.day(now).AddDate(0, 0, period), Period: period,
		Notes: notes, Block: isTrue(params.Get("block")), MaxNoOfMachines: machines}
	for i := range 8 {
		k.Features[i] = isTrue(params.Get("f" + strconv.Itoa(i+1)))
	}
	fields := map[string]any{}
	if cid, err := intParam(params, "customerid", 0); err != nil {
		return nil, "", false, err
	} else if cid > 0 {
		if s.customer(cid) == nil {
			return nil, "", false, simError("Could not find the customer.")
		}
		k.CustomerID = cid
	}
	if isTrue(params.Get("addoruseexistingcustomer")) {
		if k.CustomerID != 0 {
			return nil, "", false, simError(MsgInvalidInput)
		}
		email := strings.TrimSpace(params.Get("email"))
		var c *Customer
		for _, existing := range s.customers {
			if email != "" && strings.EqualFold(existing.Email, email) {
				c = existing
			}
		}
		if c == nil {
			c = &Customer{ID: len(s.customers) + 1, Name: params.Get("name"), Email: email,
				CompanyName: params.Get("companyname"), Created: now}
			s.customers = append(s.customers, c)
		}
		k.CustomerID = c.ID
		fields["customerId"] = c.ID
	}
	s.newKey(p, k)
	fields["key"] = k.Key
	return fields, "", true, nil
}

func (s *Sim) customer(id int) *Customer {
	for _, c := range s.customers {
		if c.ID == id {
			return c
		}
	}
	return nil
}

func (s *Sim) getKeys(p *product, params url.Values) (map[string]any, string, bool, error) {
	page, err := intParam(params, "page", 1)
	if err != nil || page < 1 {
		return nil, "", false, simError(MsgInvalidInput)
	}
	match, err := parseQuery(params.Get("searchquery"))
	if err != nil {
		return nil, "", false, simError(MsgInvalidInput)
	}
	var found []*Key
	for _, k := range p.keys {
		if match(k) {
			found = append(found, k)
		}
	}
	sort.Slice(found, func(i, j int) bool { return found[i].ID < found[j].ID })
	const pageSize = 99
	pages := (len(found) + pageSize - 1) / pageSize
	lo := min((page-1)*pageSize, len(found))
	hi := min(lo+pageSize, len(found))
	keys := make([]map[string]any, 0, hi-lo)
	for _, k := range found[lo:hi] {
		keys = append(keys, s.wire(k))
	}
	return map[string]any{"licenseKeys": keys, "returned": len(keys), "total": len(found), "pageCount": pages}, "", false, nil
}

// wire renders a key as GetKey does: lowerCamelCase, dates without an offset.
func (s *Sim) wire(k *Key) map[string]any {
	m := map[string]any{
		"productId": k.ProductID, "id": k.ID, "key": k.Key,
		"created": formatTime(k.Created), "expires": formatTime(k.Expires), "period": k.Period,
		"notes": nullIfEmpty(k.Notes), "block": k.Block, "globalId": k.GlobalID, "customer": nil,
		"activatedMachines": []any{}, "trialActivation": false, "maxNoOfMachines": k.MaxNoOfMachines,
		"allowedMachines": nil, "dataObjects": []any{}, "signDate": formatTime(s.clock()), "reseller": nil,
	}
	for i, on := range k.Features {
		m["f"+strconv.Itoa(i+1)] = on
	}
	if c := s.customer(k.CustomerID); c != nil {
		m["customer"] = map[string]any{"id": c.ID, "name": c.Name, "email": c.Email,
			"companyName": c.CompanyName, "created": formatTime(c.Created)}
	}
	return m
}

// nullIfEmpty renders an empty text field as null, as Cryptolens does for notes (the
// real answers kept in the .NET SDK's tests have "notes":null).
func nullIfEmpty(v string) any {
	if v == "" {
		return nil
	}
	return v
}

func formatTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05") }

func isTrue(v string) bool {
	b, err := strconv.ParseBool(strings.ToLower(v))
	return err == nil && b
}

func intParam(params url.Values, name string, def int) (int, error) {
	v := params.Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, simError(MsgInvalidInput)
	}
	return n, nil
}
