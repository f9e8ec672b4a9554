// Package https is the HTTPS uplink: it sends spooled telemetry as batched,
// gzip-compressed newline-delimited JSON POSTs over mutual TLS, and acks the
// batch in the spool only on a 2xx answer.
package https

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/edgeagent/edgeagent/internal/backoff"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// Options configure a Sender.
type Options struct {
	URL        string      // https://host[:port]/path
	TLS        *tls.Config // from uplink.ClientTLSConfig
	Spool      *spool.Spool
	BatchMax   int // messages per POST; default 500
	BatchBytes int // uncompressed bytes per POST; default 1 MiB
	Timeout    time.Duration
	RetryMin   time.Duration // default 1s
	RetryMax   time.Duration // default 20s: with the liveness bounds below, delivery resumes within 45s of a path healing
	Logger     *slog.Logger
	// Rand returns a float in [0,1) for jitter; nil means math/rand/v2.
	Rand func() float64
}

// ErrIdentityRejected is the state when the backend answers 401 or 403: our
// certificate is not accepted, which retrying alone will not fix.
var ErrIdentityRejected = errors.New("backend rejected the device identity")

// Stats is the sender's state for status and metrics.
type Stats struct {
	Connected bool // the last POST got an answer from the backend
	Batches   uint64
	Acked     uint64
	Failures  uint64
	LastError string
}

// Sender ships one spool to one HTTPS endpoint.
type Sender struct {
	o  Options
	hc *http.Client

	mu    sync.Mutex
	stats Stats
}

// New validates o.
func New(o Options) (*Sender, error) {
	if o.URL == "" || o.Spool == nil || o.TLS == nil {
		return nil, errors.New("https uplink: URL, TLS config and spool are required")
	}
	if o.BatchMax <= 0 {
		o.BatchMax = 500
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 1 << 20
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 20 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	return &Sender{o: o, hc: &http.Client{Transport: newTransport(o), Timeout: o.Timeout}}, nil
}

// Liveness bounds for a connection. A path that stops passing packets
// without a FIN or RST (a NAT that forgot us, a cellular handover) leaves
// a connection that looks open for ever: HTTP/2 pings on a connection
// that has been silent for pingAfter, and close it when no answer comes
// within pingTimeout or a write makes no progress for writeTimeout. After
// any failed request the idle pool is closed too, so the retry dials.
const (
	pingAfter        = 15 * time.Second
	pingTimeout      = 10 * time.Second
	writeTimeout     = 15 * time.Second
	dialTimeout      = 15 * time.Second
	handshakeTimeout = 15 * time.Second
)

func newTransport(o Options) *http.Transport {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 15 * time.Second}
	return &http.Transport{
		TLSClientConfig:       o.TLS,
		DialContext:           d.DialContext,
		TLSHandshakeTimeout:   handshakeTimeout,
		ResponseHeaderTimeout: o.Timeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
		HTTP2:                 &http.HTTP2Config{SendPingTimeout: pingAfter, PingTimeout: pingTimeout, WriteByteTimeout: writeTimeout},
	}
}

// Stats returns a snapshot.
func (s *Sender) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Reconnect drops pooled connections so the next POST handshakes again
// (after a renewal, with the new certificate).
func (s *Sender) Reconnect() { s.hc.CloseIdleConnections() }

// Run sends until ctx ends. It returns nil on cancellation; delivery errors
// are retried, never returned.
func (s *Sender) Run(ctx context.Context) error {
	var pending []spool.Record
	attempt := 0
	for {
		if len(pending) == 0 {
			recs, err := s.o.Spool.Next(ctx, s.o.BatchMax)
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, spool.ErrClosed) {
					return nil // shutting down
				}
				return fmt.Errorf("https uplink: read spool: %w", err)
			}
			pending = recs
		}
		batch := takeBatch(pending, s.o.BatchBytes)
		wait, err := s.post(ctx, batch)
		if err == nil {
			seqs := make([]uint64, len(batch))
			for i, r := range batch {
				seqs[i] = r.Seq
			}
			if err := s.o.Spool.Ack(seqs...); err != nil {
				return fmt.Errorf("https uplink: ack: %w", err)
			}
			pending = pending[len(batch):]
			attempt = 0
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if wait == 0 {
			wait = backoff.Delay(attempt, s.o.RetryMin, s.o.RetryMax, s.o.Rand())
		}
		if errors.Is(err, ErrIdentityRejected) {
			// Not fixed by hammering: wait as long as the cap allows, so
			// a renewal (or the operator) can fix the identity meanwhile.
			wait = backoff.Delay(64, s.o.RetryMin, s.o.RetryMax, s.o.Rand())
			s.o.Logger.Error("https uplink: backend rejected our certificate", "url", s.o.URL, "err", err, "retry_in", wait)
		} else {
			s.o.Logger.Warn("https uplink: send failed", "url", s.o.URL, "err", err, "retry_in", wait)
		}
		attempt++
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// takeBatch returns the longest prefix of recs within maxBytes (at least
// one record, so an oversized message still goes out alone).
func takeBatch(recs []spool.Record, maxBytes int) []spool.Record {
	n, size := 0, 0
	for n < len(recs) {
		size += len(recs[n].Payload) + 1
		if n > 0 && size > maxBytes {
			break
		}
		n++
	}
	return recs[:n]
}

// post sends one batch. It returns a server-requested wait (Retry-After)
// with the error when there is one.
func (s *Sender) post(ctx context.Context, batch []spool.Record) (time.Duration, error) {
	var body bytes.Buffer
	zw := gzip.NewWriter(&body)
	for _, r := range batch {
		zw.Write(r.Payload)
		zw.Write([]byte{'\n'})
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.o.URL, &body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Content-Encoding", "gzip")
	resp, err := s.hc.Do(req)
	if err != nil {
		s.record(false, len(batch), err)
		// The connection may be dead without knowing it (a half-open
		// link): HTTP/2 keeps it pooled, and the retry would queue on it.
		// Closing the idle pool makes the retry dial a new one.
		s.hc.CloseIdleConnections()
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		s.record(true, len(batch), nil)
		return 0, nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		err = fmt.Errorf("%w: %s", ErrIdentityRejected, resp.Status)
	default:
		err = fmt.Errorf("POST %s: %s", s.o.URL, resp.Status)
	}
	s.record(true, 0, err)
	var wait time.Duration
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		wait = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		wait = min(wait, s.o.RetryMax)
	}
	return wait, err
}

// retryAfter reads delay-seconds or an HTTP date; 0 when absent or bad.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func (s *Sender) record(answered bool, acked int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Connected = answered
	if err != nil {
		s.stats.Failures++
		s.stats.LastError = err.Error()
		return
	}
	s.stats.Batches++
	s.stats.Acked += uint64(acked)
	s.stats.LastError = ""
}
