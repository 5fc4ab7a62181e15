package main

import (
	"context"
	"net"
	"net/http"
	"time"
)

// maxHeaderBytes bounds a request's header. Stripe's deliveries and an operator's calls
// carry well under a kilobyte; net/http's default (1 MiB) let 150 connections that never
// finished their headers hold 243 MB.
const maxHeaderBytes = 32 << 10

// newHTTPServer returns the server for one of keysync serve's listeners, serving h. Its
// timeouts and limits bound what a slow or hostile client can hold, before any handler
// runs. Requests do not inherit ctx's cancellation: an in-flight webhook finishes, and
// shutdown stops the server in order (App.Run).
func newHTTPServer(ctx context.Context, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
}
