package ca

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// DefaultHealthListen is where `edgeca serve` answers /healthz and /readyz
// by default: loopback, plain HTTP, apart from the EST port (they are not
// EST resources, and a load balancer's probe needs no client certificate).
const DefaultHealthListen = "127.0.0.1:8442"

// readyTimeout bounds the store check of one /readyz.
const readyTimeout = 2 * time.Second

// HealthMux returns the handler of the health address: /healthz answers
// 200 while the process runs; /readyz answers 200 when the CA can issue
// (keys loaded, intermediate valid, store reachable) and 503 with the
// reason otherwise. Other plain-HTTP resources of the CA (such as a CRL)
// belong on this mux too.
func (c *CA) HealthMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := c.Ready(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	// The CRL, for relying parties that reach the health address and not
	// the EST port (it is public and signed).
	mux.HandleFunc("GET "+CRLPathPrefix, c.serveCRL)
	// Prometheus metrics and the read-only fleet page (metrics.go,
	// fleetpage.go).
	mux.HandleFunc("GET "+MetricsPath, c.serveMetrics)
	mux.HandleFunc("GET "+FleetPath, c.serveFleetPage)
	return mux
}

// Ready returns nil when the CA can issue now: its signing key is loaded,
// its intermediate is valid, and the store answers.
func (c *CA) Ready(ctx context.Context) error {
	if c.auth == nil || c.auth.signer == nil {
		return errors.New("no signing key loaded")
	}
	if _, absent := c.auth.signer.(absentKey); absent {
		return ErrNoSigningKey
	}
	now := c.now()
	if now.After(c.auth.intermediate.NotAfter) || now.Before(c.auth.intermediate.NotBefore) {
		return fmt.Errorf("the issuing certificate is not valid now (valid %s to %s)", c.auth.intermediate.NotBefore.Format(time.RFC3339), c.auth.intermediate.NotAfter.Format(time.RFC3339))
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	start := time.Now()
	err := c.st.Ping(ctx)
	c.metrics.noteStoreLatency(storeOpPing, time.Since(start))
	c.noteStore(err)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// ServeHealth serves HealthMux on ln until ctx is done.
func (c *CA) ServeHealth(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           c.HealthMux(),
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       headerTimeout,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve health: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	return err
}

// noteStore follows whether the store is reachable, from the outcome of an
// operation on it, and logs the changes only: a database that is away
// for an hour gives two log lines, not one per request.
func (c *CA) noteStore(err error) {
	switch {
	case errors.Is(err, store.ErrUnavailable):
		now := c.now()
		if c.storeDown.CompareAndSwap(false, true) {
			c.storeDownSince.Store(now.UnixNano())
			c.log.Error("store unreachable: enrollments answered 503 with Retry-After until it is back", "err", err)
		}
	default: // an answer, even a refusal, is the store reachable
		if c.storeDown.CompareAndSwap(true, false) {
			since := time.Unix(0, c.storeDownSince.Load())
			c.log.Info("store reachable again", "down_for", c.now().Sub(since).Round(time.Millisecond).String())
		}
	}
}

// Retry-After of a 503 while the store is away: spread over
// [storeRetryMin, storeRetryMin+storeRetrySpread) so the fleet does not
// come back in one wave.
const (
	storeRetryMin    = 5 * time.Second
	storeRetrySpread = 10 * time.Second
)

// unavailableError is the answer to a request the store could not serve.
func unavailableError(err error, jitter float64) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: est.CodeUnavailable,
		Msg:        "the CA cannot reach its database: retry after the time in Retry-After",
		Reason:     err.Error(),
		RetryAfter: storeRetryMin + time.Duration(jitter*float64(storeRetrySpread))}
}

func jitter() float64 { return rand.Float64() }
