package bench_test

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	"github.com/keysync/keysync/internal/testbed/bench"
	"github.com/keysync/keysync/internal/webhook"
)

// The abuse loads do what they say against keysync's webhook handler behind a server
// with keysync's header limit: bodies are refused (forged signatures), and unfinished
// headers are refused once past the limit. This checks
// the loads, never the memory they cost.
func TestAbuseLoads(t *testing.T) {
	t.Parallel()
	ing := ingest.New(jobs.NewTables(pgtest.Pool(t)), ingest.Config{}, zerolog.Nop())
	ing.Start(context.Background())
	t.Cleanup(ing.Stop)
	h, err := webhook.NewHandler(webhook.Config{Secrets: []string{"whsec_abuse"}}, ing, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /webhooks/stripe", h)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, MaxHeaderBytes: 32 << 10, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	bodies := bench.FloodBodies(context.Background(), ln.Addr().String(), 64, time.Second, 0)
	// Whether some are also turned away (503) depends on how many bodies the machine
	// reads at once; internal/webhook tests the budget itself.
	if bodies["400"] == 0 || bodies["200"] != 0 {
		t.Fatalf("bodies: got %v, want the forged ones read and refused (400), none stored", bodies)
	}
	headers := bench.FloodHeaders(context.Background(), ln.Addr().String(), 4, 500*time.Millisecond)
	if headers["431"] == 0 || headers["200"] != 0 {
		t.Fatalf("headers: got %v, want them refused past the limit (431)", headers)
	}
}
