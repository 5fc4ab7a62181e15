package webhook_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/keysync/keysync/internal/ingest"
	"github.com/keysync/keysync/internal/jobs"
	"github.com/keysync/keysync/internal/pgtest"
	wh "github.com/keysync/keysync/internal/webhook"
)

// FuzzHandler feeds random bodies and headers to the real handler, ingester and
// database. When sign is true the body gets a valid signature, so the parsing behind
// verification is fuzzed too. Invariants: no panic; a request without a valid
// signature writes nothing; only 200, 400 and 413 are answered (a 503 here would be an
// event the store cannot take, which Stripe would redeliver for days).
func FuzzHandler(f *testing.F) {
	f.Add([]byte(`{"id":"evt_1","object":"event","type":"invoice.paid","api_version":"2023-10-16","created":1}`), "", true)
	f.Add([]byte(`{"id":"evt_1","object":"event","type":"invoice.paid","api_version":"2023-10-16","created":1}`), "t=1,v1=abc", false)
	f.Add([]byte(`{"id":"evt_1","object":"event","type":"x","api_version":null}`), "", true)
	f.Add([]byte(`{"id":"","object":"event","type":"x"}`), "", true)
	f.Add([]byte(`[]`), "t=,v1=,v0=", false)
	f.Add([]byte(`{"id":"evt_n","object":"event","type":"invoice.paid","api_version":"2023-10-16","data":{"m":"\u0000"}}`), "", true)
	f.Add([]byte{0xff, 0xfe, 0x00}, "t=99999999999999999999,v1=zz", false)
	f.Add([]byte(`{"id":"evt_2","object":"event","type":"invoice.paid","api_version":"2023-10-16","created":-1e30}`), "", true)
	f.Add([]byte(`{"id":"evt_3","object":"event","type":"invoice.paid","api_version":"2023-10-16","created":99999999999}`), "", true)

	pool := pgtest.Pool(f)
	ing := ingest.New(jobs.NewTables(pool), ingest.Config{}, zerolog.Nop())
	ing.Start(context.Background())
	f.Cleanup(ing.Stop)
	h, err := wh.NewHandler(wh.Config{Secrets: []string{"whsec_fuzz"}}, ing, zerolog.Nop())
	if err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, body []byte, header string, sign bool) {
		if sign {
			header = webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{
				Payload: body, Secret: "whsec_fuzz", Timestamp: time.Now(),
			}).Header
		}
		before := rows(t, pool)
		req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", header)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		after := rows(t, pool)

		validSig := webhook.ValidatePayload(body, header, "whsec_fuzz") == nil
		if !validSig && after != before {
			t.Fatalf("wrote %d rows without a valid signature (status %d)", after-before, w.Code)
		}
		if w.Code != http.StatusOK && after != before {
			t.Fatalf("answered %d but wrote %d rows", w.Code, after-before)
		}
		if w.Code != http.StatusOK && w.Code != http.StatusBadRequest && w.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("got status %d (%s), want 200, 400 or 413", w.Code, w.Body)
		}
	})
}

func rows(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM stripe_events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
