package admin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/keysync/keysync/internal/admin"
)

// openAPIRouter loads openapi.yaml, checks it is a valid document, and routes requests
// to its operations.
func openAPIRouter(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(admin.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	router, err := legacy.NewRouter(doc) // validates the document first
	if err != nil {
		t.Fatalf("invalid OpenAPI document: %v", err)
	}
	return doc, router
}

// validatingClient returns a client whose every request and answer is checked against
// openapi.yaml, failing t on a mismatch:
//   - the request must be to an operation the document has;
//   - the document and the API must agree on the request: one the document refuses
//     (a parameter out of its schema, no bearer token) must not succeed, and one it
//     accepts must not be answered 400;
//   - the answer's status must be one the operation lists, with its headers and a
//     body that validates against its schema.
func validatingClient(t *testing.T) *http.Client {
	_, router := openAPIRouter(t)
	return &http.Client{Transport: validatingTransport{errorf: t.Errorf, router: router}}
}

type validatingTransport struct {
	errorf func(format string, args ...any)
	router routers.Router
}

func (v validatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	what := req.Method + " " + req.URL.RequestURI()
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		v.errorf("%s: no such operation in openapi.yaml: %v", what, err)
		return http.DefaultTransport.RoundTrip(req)
	}

	// The request as the document sees it. Security is checked for form only (a
	// bearer token is present): whether it is the right one is the API's business.
	opts := &openapi3filter.Options{IncludeResponseStatus: true, AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
		if !strings.HasPrefix(in.RequestValidationInput.Request.Header.Get("Authorization"), "Bearer ") {
			return errors.New("no bearer token")
		}
		return nil
	}}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	reqErr := openapi3filter.ValidateRequest(req.Context(), in)

	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))

	switch {
	case reqErr != nil && resp.StatusCode < 300:
		v.errorf("%s: openapi.yaml refuses the request (%v), but the API answered %d", what, reqErr, resp.StatusCode)
	case reqErr == nil && resp.StatusCode == http.StatusBadRequest:
		v.errorf("%s: openapi.yaml accepts the request, but the API answered 400: %s", what, body)
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header, Options: opts}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(req.Context(), out); err != nil {
		v.errorf("%s: the answer (%d %s) does not match openapi.yaml: %v", what, resp.StatusCode, body, err)
	}
	return resp, nil
}

// The validating client catches what it is there to catch: an answer the document does
// not describe, and a request on which the document and the API disagree.
func TestValidatingClientCatchesMismatches(t *testing.T) {
	t.Parallel()
	_, router := openAPIRouter(t)
	tests := map[string]struct {
		path   string
		token  bool
		status int
		body   string
	}{
		"fine (the control)":            {"/api/v1/reconcile", true, http.StatusOK, `{"queued":"sweep"}`},
		"undocumented status":           {"/api/v1/reconcile", true, http.StatusTeapot, `{"error":"x"}`},
		"body off its schema":           {"/api/v1/reconcile", true, http.StatusOK, `{"queued":7}`},
		"refused request that succeeds": {"/api/v1/subscriptions/not_a_sub/sync", true, http.StatusOK, `{"queued":"x"}`},
		"no token, and it succeeds":     {"/api/v1/reconcile", false, http.StatusOK, `{"queued":"sweep"}`},
		"accepted request answered 400": {"/api/v1/reconcile", true, http.StatusBadRequest, `{"error":"x"}`},
		"no such operation":             {"/api/v1/nowhere", true, http.StatusNotFound, `{"error":"x"}`},
	}
	for name, tc := range tests {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(tc.status)
			_, _ = io.WriteString(w, tc.body)
		}))
		var complaints []string
		client := &http.Client{Transport: validatingTransport{router: router, errorf: func(f string, a ...any) {
			complaints = append(complaints, fmt.Sprintf(f, a...))
		}}}
		req, _ := http.NewRequest(http.MethodPost, srv.URL+tc.path, nil)
		if tc.token {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		srv.Close()
		if got, want := len(complaints) > 0, name != "fine (the control)"; got != want {
			t.Errorf("%s: complained %v (%q), want %v", name, got, complaints, want)
		}
	}
}
