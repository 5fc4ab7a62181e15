package stripeapi_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/stripeapi"
)

// stripeMockVersion is the last stripe-mock that embeds the 2023-10-16 spec.
const stripeMockVersion = "v0.183.0"

// TestContractWithStripeMock makes every call keysync makes against a real stripe-mock
// of API 2023-10-16, which validates each parameter against the spec: a parameter,
// expansion or filter that 2023-10-16 does not know fails here. stripe-mock is installed
// from the Go module proxy (go install ...@v0.183.0, into a temporary directory) and run
// on loopback only; the test stops it by its PID.
func TestContractWithStripeMock(t *testing.T) {
	t.Parallel()
	bin := t.TempDir()
	install := exec.Command("go", "install", "github.com/stripe/stripe-mock@"+stripeMockVersion)
	install.Env = append(os.Environ(), "GOBIN="+bin, "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install stripe-mock %s: %v\n%s", stripeMockVersion, err, out)
	}
	httpPort, httpsPort := freePort(t), freePort(t)
	// Both listeners are named: given only -http-addr, stripe-mock also opens HTTPS on
	// all interfaces.
	mock := exec.Command(filepath.Join(bin, "stripe-mock"),
		"-http-addr", "127.0.0.1:"+httpPort, "-https-addr", "127.0.0.1:"+httpsPort)
	if err := mock.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = mock.Process.Kill()
		_ = mock.Wait()
	})
	addr := "127.0.0.1:" + httpPort
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock did not listen on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// stripe-mock wants a key of exactly three parts: sk_test_<x>.
	c, err := stripeapi.New(stripeapi.Config{APIKey: "sk_test_123", BaseURL: "http://" + addr, Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s against stripe-mock %s: %v", what, stripeMockVersion, err)
		}
	}
	sub, err := c.GetSubscription(ctx, "sub_123")
	check("GetSubscription", err)
	if sub == nil || sub.Items == nil {
		t.Fatal("stripe-mock's subscription has no items list")
	}
	sub.Items.HasMore = true // stripe-mock's fixture has one page: ask for the rest anyway
	check("CompleteItems", c.CompleteItems(ctx, sub))
	for _, err := range c.Subscriptions(ctx) {
		check("Subscriptions", err)
	}
	_, err = c.PaidInvoices(ctx, "sub_123")
	check("PaidInvoices", err)
	inv, err := c.GetInvoice(ctx, "in_123")
	check("GetInvoice", err)
	if inv == nil || inv.Lines == nil {
		t.Fatal("stripe-mock's invoice has no lines list")
	}
	inv.Lines.HasMore = true // stripe-mock's fixture has one page: ask for the rest anyway
	check("CompleteLines", c.CompleteLines(ctx, inv))
	_, err = c.GetCharge(ctx, "ch_123")
	check("GetCharge", err)
	_, err = c.GetDispute(ctx, "dp_123")
	check("GetDispute", err)
	_, err = c.Disputes(ctx, "ch_123")
	check("Disputes", err)
	_, err = c.GetCheckoutSession(ctx, "cs_test_123")
	check("GetCheckoutSession", err)
	_, err = c.GetCustomer(ctx, "cus_123")
	check("GetCustomer", err)
	_, err = c.CustomersByEmail(ctx, "ada@example.com")
	check("CustomersByEmail", err)
	_, err = c.GetProduct(ctx, "prod_123")
	check("GetProduct", err)
	_, err = c.GetPrice(ctx, "price_123")
	check("GetPrice", err)
	_, err = c.GetEvent(ctx, "evt_123")
	check("GetEvent", err)
	_, err = c.Events(ctx, time.Now().Add(-24*time.Hour), []string{"invoice.paid", "customer.subscription.updated"})
	check("Events", err)
	check("SetSubscriptionMetadata", c.SetSubscriptionMetadata(ctx, "sub_123", "cryptolens_key", "AAAAA-BBBBB-CCCCC-DDDDD"))
	_, err = c.SessionLineItems(ctx, "cs_test_123")
	check("SessionLineItems", err)
	_, err = c.PurchaseInvoice(ctx, "in_123")
	check("PurchaseInvoice", err)
	_, err = c.PaymentCharges(ctx, "pi_123")
	check("PaymentCharges", err)
	_, err = c.PaymentSession(ctx, "pi_123")
	check("PaymentSession", err)
	_, err = c.InvoiceSession(ctx, "cus_123", "in_123")
	check("InvoiceSession", err)
	for _, err := range c.CompleteSessions(ctx, time.Now().Add(-24*time.Hour)) {
		check("CompleteSessions", err)
	}
	for _, err := range c.PaidInvoicesSince(ctx, time.Now().Add(-24*time.Hour)) {
		check("PaidInvoicesSince", err)
	}

	// The contract would pass vacuously if stripe-mock accepted anything: show that it
	// refuses a parameter 2023-10-16 does not know. (It does not check expansions;
	// TestExpansionsExistInSpec does.)
	for _, path := range []string{"/v1/subscriptions?not_a_parameter=1", "/v1/events?types[]=invoice.paid&bogus=2"} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		req.Header.Set("Authorization", "Bearer sk_test_123")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("stripe-mock answered %d to %s, want 400: it does not validate parameters", resp.StatusCode, path)
		}
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
