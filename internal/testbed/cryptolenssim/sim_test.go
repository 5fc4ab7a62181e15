package cryptolenssim_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/testbed/cryptolenssim"
)

const (
	productID = 1001
	admin     = "tok_admin"
	readOnly  = "tok_read"
	otherProd = "tok_other_product"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type bundle struct {
	sim *cryptolenssim.Sim
	srv *httptest.Server
}

func setup(t *testing.T) *bundle {
	t.Helper()
	sim := cryptolenssim.New(cryptolenssim.WithClock(func() time.Time { return t0 }))
	sim.AddProduct(productID, cryptolenssim.ProductOptions{})
	sim.AddProduct(2002, cryptolenssim.ProductOptions{BlockExpired: true})
	sim.AddToken(admin, cryptolenssim.Token{})
	sim.AddToken(readOnly, cryptolenssim.Token{Methods: []string{cryptolenssim.GetKey, cryptolenssim.GetKeys}})
	sim.AddToken(otherProd, cryptolenssim.Token{ProductID: 2002})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &bundle{sim: sim, srv: srv}
}

type answer struct {
	status int
	body   map[string]any
	raw    string
}

func (a answer) message() string { s, _ := a.body["message"].(string); return s }
func (a answer) result() float64 {
	r, ok := a.body["result"].(float64)
	if !ok {
		return -1
	}
	return r
}

func (b *bundle) call(t *testing.T, path, token string, kv ...any) answer {
	t.Helper()
	form := url.Values{"token": {token}}
	for i := 0; i < len(kv); i += 2 {
		form.Set(kv[i].(string), fmt.Sprint(kv[i+1]))
	}
	resp, err := http.PostForm(b.srv.URL+path, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, raw: string(raw)}
	_ = json.Unmarshal(raw, &a.body)
	return a
}

func (b *bundle) create(t *testing.T, kv ...any) string {
	t.Helper()
	a := b.call(t, "/api/key/CreateKey", admin, append([]any{"ProductId", productID}, kv...)...)
	if a.result() != 0 {
		t.Fatalf("CreateKey: %s", a.raw)
	}
	return a.body["key"].(string)
}

func TestExtendLicense(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		expires time.Time
		days    int
		want    time.Time
	}{
		"before expiry adds to the expiry":     {t0.AddDate(0, 0, 10), 5, t0.AddDate(0, 0, 15)},
		"after expiry counts from now":         {t0.AddDate(0, 0, -3), 5, t0.AddDate(0, 0, 5)},
		"negative days shorten":                {t0.AddDate(0, 0, 10), -4, t0.AddDate(0, 0, 6)},
		"zero days change nothing":             {t0.AddDate(0, 0, 10), 0, t0.AddDate(0, 0, 10)},
		"expiring this second counts from now": {t0, 30, t0.AddDate(0, 0, 30)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			k, _ := b.sim.PutKey(cryptolenssim.Key{ProductID: productID, Expires: tc.expires})
			a := b.call(t, "/api/key/ExtendLicense", admin, "ProductId", productID, "Key", k.Key, "NoOfDays", tc.days)
			if a.result() != 0 {
				t.Fatalf("got %s, want success", a.raw)
			}
			got, _ := b.sim.Key(productID, k.Key)
			if !got.Expires.Equal(tc.want) {
				t.Fatalf("got expiry %s, want %s", got.Expires, tc.want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	key := b.create(t, "Period", 30)
	tests := map[string]struct {
		path, token string
		params      []any
		status      int
		message     string
	}{
		"wrong token":                         {"/api/key/GetKey", "tok_nope", []any{"ProductId", productID, "Key", key}, 401, cryptolenssim.MsgAuth},
		"missing permission":                  {"/api/key/ExtendLicense", readOnly, []any{"ProductId", productID, "Key", key, "NoOfDays", 1}, 200, cryptolenssim.MsgAccessDenied},
		"product-locked token, other product": {"/api/key/GetKey", otherProd, []any{"ProductId", productID, "Key", key}, 200, cryptolenssim.MsgAccessDenied},
		"unknown key":                         {"/api/key/GetKey", admin, []any{"ProductId", productID, "Key", "AAAAA-BBBBB-CCCCC-DDDDD"}, 200, cryptolenssim.MsgKeyNotFound},
		"wrong product":                       {"/api/key/BlockKey", admin, []any{"ProductId", 999, "Key", key}, 200, cryptolenssim.MsgProductNotFound},
		"no product id":                       {"/api/key/GetKey", admin, []any{"Key", key}, 200, cryptolenssim.MsgInvalidInput},
		"feature 9":                           {"/api/key/AddFeature", admin, []any{"ProductId", productID, "Key", key, "Feature", 9}, 200, cryptolenssim.MsgInvalidInput},
		"notes too long":                      {"/api/key/CreateKey", admin, []any{"ProductId", productID, "Notes", strings.Repeat("n", 501)}, 200, cryptolenssim.MsgNotesTooLong},
		"changed notes too long":              {"/api/key/ChangeNotes", admin, []any{"ProductId", productID, "Key", key, "Notes", strings.Repeat("n", 501)}, 200, cryptolenssim.MsgNotesTooLong},
		"unknown method (a guess)":            {"/api/key/NoSuchMethod", admin, []any{"ProductId", productID}, 404, "Unknown method."},
		"customer needs AddCustomer":          {"/api/key/CreateKey", readOnly, []any{"ProductId", productID}, 200, cryptolenssim.MsgAccessDenied},
		"bad search":                          {"/api/product/GetKeys", admin, []any{"ProductId", productID, "SearchQuery", "drop table"}, 200, cryptolenssim.MsgInvalidInput},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a := b.call(t, tc.path, tc.token, tc.params...)
			if a.status != tc.status || a.result() != 1 || a.message() != tc.message {
				t.Fatalf("got %d %s, want %d with %q", a.status, a.raw, tc.status, tc.message)
			}
		})
	}
	if got, _ := b.sim.Key(productID, key); !got.Expires.Equal(t0.AddDate(0, 0, 30)) || got.Block {
		t.Fatalf("refused calls changed the key: %+v", got)
	}
}

func TestBlockTwice(t *testing.T) {
	t.Parallel()
	b := setup(t)
	key := b.create(t)
	for i, want := range []string{"Changed", "Not changed"} {
		if a := b.call(t, "/api/key/BlockKey", admin, "ProductId", productID, "Key", key); a.result() != 0 || a.message() != want {
			t.Fatalf("block %d: got %s, want %q", i+1, a.raw, want)
		}
	}
	for i, want := range []string{"Changed", "Not changed"} {
		if a := b.call(t, "/api/key/UnblockKey", admin, "ProductId", productID, "Key", key); a.result() != 0 || a.message() != want {
			t.Fatalf("unblock %d: got %s, want %q", i+1, a.raw, want)
		}
	}
	if got := b.sim.AppliedCount(cryptolenssim.BlockKey); got != 1 {
		t.Fatalf("got %d applied blocks, want 1", got)
	}
}

func TestCreateKeyAndCustomers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.call(t, "/api/key/CreateKey", admin, "ProductId", productID, "Period", 35, "F1", "true", "F3", "True",
		"MaxNoOfMachines", 3, "Notes", "stripe:sub_1", "AddOrUseExistingCustomer", "true", "Name", "Ada", "Email", "ada@example.com")
	if a.result() != 0 || a.body["customerId"] != float64(1) {
		t.Fatalf("got %s, want a key and customerId 1", a.raw)
	}
	key := a.body["key"].(string)
	got, _ := b.sim.Key(productID, key)
	if !got.Expires.Equal(t0.AddDate(0, 0, 35)) || got.Period != 35 || got.Features != [8]bool{true, false, true} ||
		got.MaxNoOfMachines != 3 || got.Notes != "stripe:sub_1" || got.CustomerID != 1 || len(key) != 23 {
		t.Fatalf("got %+v", got)
	}
	// The same email reuses the customer.
	a = b.call(t, "/api/key/CreateKey", admin, "ProductId", productID, "AddOrUseExistingCustomer", "true", "Name", "Ada L.", "Email", "ADA@example.com")
	if a.body["customerId"] != float64(1) || len(b.sim.Customers()) != 1 {
		t.Fatalf("got %s and %d customers, want customer 1 reused", a.raw, len(b.sim.Customers()))
	}
	// GetKey renders the documented shape.
	g := b.call(t, "/api/key/GetKey", admin, "ProductId", productID, "Key", key)
	lk, _ := g.body["licenseKey"].(map[string]any)
	if lk["expires"] != "2026-04-05T12:00:00" || lk["f1"] != true || lk["f2"] != false || lk["maxNoOfMachines"] != float64(3) ||
		lk["customer"].(map[string]any)["email"] != "ada@example.com" {
		t.Fatalf("got %s", g.raw)
	}
}

func TestGetKeysPagingAndSearch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i := range 250 {
		b.sim.PutKey(cryptolenssim.Key{ProductID: productID, Notes: fmt.Sprintf("stripe:sub_%d", i), Block: i%50 == 0, Expires: t0})
	}
	third := b.call(t, "/api/product/GetKeys", admin, "ProductId", productID, "Page", 3)
	if third.body["total"] != float64(250) || third.body["pageCount"] != float64(3) || third.body["returned"] != float64(52) {
		t.Fatalf("page 3: got total=%v pages=%v returned=%v", third.body["total"], third.body["pageCount"], third.body["returned"])
	}
	first := third.body["licenseKeys"].([]any)[0].(map[string]any)
	if first["id"] != float64(199) {
		t.Fatalf("page 3 starts at id %v, want 199 (99 a page, id order)", first["id"])
	}
	k7 := b.sim.Keys(productID)[7]
	tests := map[string]struct {
		query string
		want  float64
	}{
		"notes.contains":      {`notes.contains("stripe:sub_12")`, 11}, // sub_12, sub_120..129
		"block=true":          {`block=true`, 5},
		"key":                 {fmt.Sprintf(`key="%s"`, k7.Key), 1},
		"id":                  {`id=42`, 1},
		"combined with &&":    {`notes.contains("stripe:sub_1") && block=true`, 2}, // sub_100, sub_150
		"combined with and":   {`block=false and notes.contains("sub_249")`, 1},
		"quote inside string": {`notes.contains("a \" and b")`, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a := b.call(t, "/api/product/GetKeys", admin, "ProductId", productID, "SearchQuery", tc.query)
			if a.result() != 0 || a.body["total"] != tc.want {
				t.Fatalf("got %v (%s), want %v", a.body["total"], a.message(), tc.want)
			}
		})
	}
}

func TestBlockExpiredLicenses(t *testing.T) {
	t.Parallel()
	b := setup(t)
	k, _ := b.sim.PutKey(cryptolenssim.Key{ProductID: 2002, Expires: t0.Add(-30 * time.Minute), Features: [8]bool{true}})
	if got, _ := b.sim.Key(2002, k.Key); got.Block {
		t.Fatal("blocked 30 minutes after expiry, want about an hour")
	}
	b.sim.Advance(31 * time.Minute)
	if got, _ := b.sim.Key(2002, k.Key); !got.Block || !got.AutoBlocked {
		t.Fatalf("got %+v an hour after expiry, want auto-blocked", got)
	}
	a := b.call(t, "/api/key/GetKey", admin, "ProductId", 2002, "Key", k.Key)
	if a.body["licenseKey"].(map[string]any)["block"] != true {
		t.Fatalf("GetKey: got %s, want block=true", a.raw)
	}
}

// "Block Expired Licenses" blocks only time-limited keys: those with the product's
// time-limited feature (F1 by default) on, or every key with "Treat all licenses as
// time-limited".
func TestBlockExpiredOnlyTimeLimited(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		opts     cryptolenssim.ProductOptions
		features [8]bool
		blocked  bool
	}{
		"F1 on, default feature":       {cryptolenssim.ProductOptions{BlockExpired: true}, [8]bool{true}, true},
		"F1 off, default feature":      {cryptolenssim.ProductOptions{BlockExpired: true}, [8]bool{false, true}, false},
		"F3 is the time-limited one":   {cryptolenssim.ProductOptions{BlockExpired: true, TimeLimitedFeature: 3}, [8]bool{false, false, true}, true},
		"F3 defined, only F1 on":       {cryptolenssim.ProductOptions{BlockExpired: true, TimeLimitedFeature: 3}, [8]bool{true}, false},
		"all treated as time-limited":  {cryptolenssim.ProductOptions{BlockExpired: true, AllTimeLimited: true}, [8]bool{}, true},
		"option off, time-limited key": {cryptolenssim.ProductOptions{}, [8]bool{true}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sim := cryptolenssim.New(cryptolenssim.WithClock(func() time.Time { return t0 }))
			sim.AddProduct(7, tc.opts)
			k, _ := sim.PutKey(cryptolenssim.Key{ProductID: 7, Expires: t0.Add(-2 * time.Hour), Features: tc.features})
			if got, _ := sim.Key(7, k.Key); got.Block != tc.blocked || got.AutoBlocked != tc.blocked {
				t.Errorf("got block %v (auto %v), want %v", got.Block, got.AutoBlocked, tc.blocked)
			}
		})
	}
}

// With whole days, a key is created at midnight and extended by whole dates: a key made
// at 12:00 for 30 days expires at midnight, 12 hours short of 30 days from now.
func TestWholeDays(t *testing.T) {
	t.Parallel()
	sim := cryptolenssim.New(cryptolenssim.WithClock(func() time.Time { return t0 }), cryptolenssim.WithWholeDays())
	sim.AddProduct(productID, cryptolenssim.ProductOptions{})
	sim.AddToken(admin, cryptolenssim.Token{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	b := &bundle{sim: sim, srv: srv}

	key := b.create(t, "Period", 30)
	k, _ := sim.Key(productID, key)
	midnight := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	if !k.Created.Equal(midnight) || !k.Expires.Equal(midnight.AddDate(0, 0, 30)) {
		t.Fatalf("got created %s expires %s, want %s and 30 days later", k.Created, k.Expires, midnight)
	}
	if a := b.call(t, "/api/key/ExtendLicense", admin, "ProductId", productID, "Key", key, "NoOfDays", 2); a.result() != 0 {
		t.Fatal(a.raw)
	}
	if k, _ := sim.Key(productID, key); !k.Expires.Equal(midnight.AddDate(0, 0, 32)) {
		t.Fatalf("after +2 days: got %s, want %s", k.Expires, midnight.AddDate(0, 0, 32))
	}
	// A key made by hand in the dashboard keeps whole days too.
	put, _ := sim.PutKey(cryptolenssim.Key{ProductID: productID, Expires: t0.Add(50 * time.Hour)})
	if !put.Created.Equal(midnight) || !put.Expires.Equal(midnight.AddDate(0, 0, 2)) {
		t.Fatalf("PutKey: got created %s expires %s, want %s and 2 days later", put.Created, put.Expires, midnight)
	}
}

// An SKGL product changes the key string when ExtendLicense changes the expiry, and
// answers the new key in message; the old string is gone. SKM15 keys keep theirs.
func TestSKGLKeyChanges(t *testing.T) {
	t.Parallel()
	for name, skgl := range map[string]bool{"SKGL": true, "SKM15": false} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sim := cryptolenssim.New(cryptolenssim.WithClock(func() time.Time { return t0 }))
			sim.AddProduct(productID, cryptolenssim.ProductOptions{SKGL: skgl})
			sim.AddToken(admin, cryptolenssim.Token{})
			srv := httptest.NewServer(sim)
			t.Cleanup(srv.Close)
			b := &bundle{sim: sim, srv: srv}

			key := b.create(t, "Period", 30)
			for _, call := range [][]any{{"/api/key/ExtendLicense", "NoOfDays", 5}, {"/api/key/AddFeature", "Feature", 2}} {
				a := b.call(t, call[0].(string), admin, "ProductId", productID, "Key", key, call[1], call[2])
				if a.result() != 0 {
					t.Fatalf("%s: %s", call[0], a.raw)
				}
				next := a.message()
				if !skgl {
					if next != "" {
						t.Fatalf("%s on SKM15: got message %q, want none", call[0], next)
					}
					continue
				}
				if next == "" || next == key {
					t.Fatalf("%s on SKGL: got message %q, want a new key string", call[0], next)
				}
				if _, ok := sim.Key(productID, key); ok {
					t.Fatalf("%s on SKGL: the old key string %q still exists", call[0], key)
				}
				key = next
			}
			k, ok := sim.Key(productID, key)
			if !ok || !k.Features[1] || !k.Expires.Equal(t0.AddDate(0, 0, 35)) {
				t.Fatalf("got %+v (found %v), want F2 on and 35 days", k, ok)
			}
		})
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		faults     cryptolenssim.Faults
		wantStatus []int
		wantJSON   bool
		applied    bool
	}{
		"down":            {cryptolenssim.Faults{Down: true}, []int{503}, false, false},
		"rate limit":      {cryptolenssim.Faults{RateLimitRate: 1}, []int{429}, false, false},
		"errors":          {cryptolenssim.Faults{ErrorRate: 1}, []int{500, 200}, false, false},
		"garbage":         {cryptolenssim.Faults{GarbageRate: 1}, []int{200}, false, false},
		"lost answer":     {cryptolenssim.Faults{LostAnswerRate: 1}, []int{502}, false, true},
		"no subscription": {cryptolenssim.Faults{NoSubscription: true}, []int{200}, true, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			key := b.create(t, "Period", 10)
			b.sim.SetFaults(tc.faults)
			a := b.call(t, "/api/key/ExtendLicense", admin, "ProductId", productID, "Key", key, "NoOfDays", 5)
			okStatus := false
			for _, s := range tc.wantStatus {
				okStatus = okStatus || a.status == s
			}
			if !okStatus || a.result() == 0 {
				t.Fatalf("got %d %s, want one of %v and no success", a.status, a.raw, tc.wantStatus)
			}
			got, _ := b.sim.Key(productID, key)
			if extended := got.Expires.Equal(t0.AddDate(0, 0, 15)); extended != tc.applied {
				t.Fatalf("got expiry %s, want applied=%v", got.Expires, tc.applied)
			}
		})
	}
}

func TestCallLogAndProtocol(t *testing.T) {
	t.Parallel()
	b := setup(t)
	key := b.create(t)
	// Paths and parameter names are case-insensitive, and GET works too.
	resp, err := http.Get(b.srv.URL + "/api/key/getkey?token=" + admin + "&productid=1001&KEY=" + key)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(raw), `"result":0`) {
		t.Fatalf("GET lowercase: got %s", raw)
	}
	calls := b.sim.Calls()
	if len(calls) != 2 || calls[0].Method != "CreateKey" || calls[1].Method != "GetKey" || !calls[0].Applied || calls[1].Applied {
		t.Fatalf("got calls %+v", calls)
	}
	for _, c := range calls {
		if c.Params.Has("token") || strings.Contains(fmt.Sprint(c.Params), admin) {
			t.Fatalf("call log keeps the token: %v", c.Params)
		}
	}
}

// A timeout fault never answers: the client's own timeout ends the call, and nothing
// changed.
func TestTimeoutFault(t *testing.T) {
	t.Parallel()
	b := setup(t)
	key := b.create(t, "Period", 10)
	b.sim.SetFaults(cryptolenssim.Faults{TimeoutRate: 1})
	c := &http.Client{Timeout: 200 * time.Millisecond}
	resp, err := c.PostForm(b.srv.URL+"/api/key/ExtendLicense", url.Values{"token": {admin}, "ProductId": {fmt.Sprint(productID)}, "Key": {key}, "NoOfDays": {"5"}})
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got HTTP %d, want no answer", resp.StatusCode)
	}
	if got, _ := b.sim.Key(productID, key); !got.Expires.Equal(t0.AddDate(0, 0, 10)) {
		t.Fatalf("got expiry %s after a timeout, want unchanged", got.Expires)
	}
	if calls := b.sim.Calls(); calls[len(calls)-1].Message != "timeout" {
		t.Fatalf("call log: got %+v, want the timeout logged", calls[len(calls)-1])
	}
}
