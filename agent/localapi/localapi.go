// Package localapi is the agent's HTTP API for local applications, served on
// a Unix socket: POST /v1/telemetry queues messages, GET /v1/status reports
// the agent's state, GET /v1/commands streams downlink commands as
// newline-delimited JSON.
package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/edgeagent/edgeagent/uplink/spool"
	"golang.org/x/net/netutil"
)

// MaxBodyBytes bounds one POST /v1/telemetry body.
const MaxBodyBytes = 1 << 20

// MaxBatch bounds how many messages one request may carry.
const MaxBatch = 1000

// Sink takes validated messages, each a JSON object, all or none, and
// returns their message ids. It must not return before they are durable.
type Sink interface {
	Submit(ctx context.Context, msgs []json.RawMessage) ([]string, error)
}

// Command is a downlink message for local apps.
type Command struct {
	Topic   string          `json:"topic"`
	Payload json.RawMessage `json:"payload"`
	Time    time.Time       `json:"time"`
}

// Limits bound what local users can hold open on the API socket. It is
// open to the service's group: without them, connections left idle by one
// local process would use up the agent's file descriptors, and the uplinks
// could not reconnect.
type Limits struct {
	MaxConns      int           // connections served at once; more wait in the socket's backlog
	HeaderTimeout time.Duration // to send a request's headers, from connect or the last answer
	ReadTimeout   time.Duration // to send a whole request, body included
	IdleTimeout   time.Duration // a kept-alive connection with no request
}

// DefaultLimits are the limits New sets.
func DefaultLimits() Limits {
	return Limits{MaxConns: 64, HeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 30 * time.Second}
}

// maxHeaderBytes bounds one request's headers (the API needs a few hundred bytes).
const maxHeaderBytes = 16 << 10

// Server is the local API.
type Server struct {
	sink   Sink
	status func() any
	hub    *Hub
	log    *slog.Logger
	renew  func(context.Context) error
	limits Limits
}

// SetLimits replaces DefaultLimits(); call it before Serve.
func (s *Server) SetLimits(l Limits) { s.limits = l }

// SetRenew enables POST /v1/renew, which renews the certificate now and
// answers when it is done.
func (s *Server) SetRenew(f func(context.Context) error) { s.renew = f }

// New returns a Server. status returns a JSON-marshalable snapshot.
func New(sink Sink, status func() any, hub *Hub, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{sink: sink, status: status, hub: hub, log: log, limits: DefaultLimits()}
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/telemetry", s.telemetry)
	mux.HandleFunc("GET /v1/status", s.getStatus)
	mux.HandleFunc("GET /v1/commands", s.commands)
	mux.HandleFunc("POST /v1/renew", s.renewNow)
	return mux
}

// Serve listens on the Unix socket at path (mode 0660, replacing a stale
// socket) until ctx ends.
func (s *Server) Serve(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("local api: create socket dir: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("local api: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return fmt.Errorf("local api: chmod %s: %w", path, err)
	}
	l := s.limits
	// No WriteTimeout: GET /v1/commands streams for as long as the app
	// listens.
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: l.HeaderTimeout, ReadTimeout: l.ReadTimeout,
		IdleTimeout: l.IdleTimeout, MaxHeaderBytes: maxHeaderBytes}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(netutil.LimitListener(ln, l.MaxConns)) }()
	select {
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
		<-errc
		_ = os.Remove(path)
		return nil
	case err := <-errc:
		return fmt.Errorf("local api: %w", err)
	}
}

// removeStaleSocket removes a socket left by a crashed agent, but refuses
// to take over one that a running agent still answers on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("local api: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("local api: %s exists and is not a socket; remove it or choose another api socket path", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("local api: another agent is listening on %s", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("local api: remove stale socket: %w", err)
	}
	return nil
}

type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, errorBody{Error: fmt.Sprintf(format, args...)})
}

// ParseMessages validates a telemetry body: one JSON object, or an array of
// 1 to MaxBatch objects.
func ParseMessages(body []byte) ([]json.RawMessage, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, errors.New("empty body: send a JSON object or an array of objects")
	}
	var msgs []json.RawMessage
	switch body[0] {
	case '{':
		msgs = []json.RawMessage{body} // Compact below validates it
	case '[':
		if err := json.Unmarshal(body, &msgs); err != nil {
			return nil, fmt.Errorf("body is not valid JSON: %v", err)
		}
		if len(msgs) == 0 {
			return nil, errors.New("empty array: nothing to send")
		}
		if len(msgs) > MaxBatch {
			return nil, fmt.Errorf("%d messages in one request, at most %d", len(msgs), MaxBatch)
		}
		for i, m := range msgs {
			m = bytes.TrimSpace(m)
			if len(m) == 0 || m[0] != '{' {
				return nil, fmt.Errorf("array element %d is not a JSON object", i)
			}
			msgs[i] = m
		}
	default:
		return nil, errors.New("body must be a JSON object or an array of objects")
	}
	for i, m := range msgs {
		var compact bytes.Buffer
		if err := json.Compact(&compact, m); err != nil {
			return nil, fmt.Errorf("body is not valid JSON: message %d: %v", i, err)
		}
		msgs[i] = compact.Bytes()
	}
	return msgs, nil
}

type submitResponse struct {
	Accepted int      `json:"accepted"`
	IDs      []string `json:"ids"`
}

func (s *Server) telemetry(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSON(ct) {
		fail(w, http.StatusUnsupportedMediaType, "content type %q: send application/json", ct)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			fail(w, http.StatusRequestEntityTooLarge, "body over %d bytes: split it into several requests", MaxBodyBytes)
			return
		}
		fail(w, http.StatusBadRequest, "read body: %v", err)
		return
	}
	msgs, err := ParseMessages(body)
	if err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	ids, err := s.sink.Submit(r.Context(), msgs)
	if err != nil {
		code, retry := SubmitFailure(err)
		if errors.Is(err, spool.ErrWrite) {
			// The spool logs when storing begins and ends to fail; a line
			// per refused request would flood the log of a full disk.
			s.log.Debug("local api: refused telemetry", "err", err)
		} else {
			s.log.Error("local api: queue telemetry", "err", err)
		}
		if retry > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(retry/time.Second)))
		}
		fail(w, code, "not accepted, none of the %d messages was stored: %v", len(msgs), err)
		return
	}
	writeJSON(w, http.StatusAccepted, submitResponse{Accepted: len(ids), IDs: ids})
}

// How long a client is asked to wait after a refusal: a disk is not
// freed in an instant, a shutting-down agent is back in seconds.
const (
	retryAfterStorage  = 10 * time.Second
	retryAfterShutdown = 5 * time.Second
)

// SubmitFailure maps a Sink error to the answer: 507 with Retry-After for
// a full disk or quota, 503 with Retry-After for other storage failures
// and a closing spool, plain 503 for the rest (say, no uplink configured,
// which waiting does not fix).
func SubmitFailure(err error) (code int, retryAfter time.Duration) {
	switch {
	case errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT):
		return http.StatusInsufficientStorage, retryAfterStorage
	case errors.Is(err, spool.ErrWrite):
		return http.StatusServiceUnavailable, retryAfterStorage
	case errors.Is(err, spool.ErrClosed):
		return http.StatusServiceUnavailable, retryAfterShutdown
	}
	return http.StatusServiceUnavailable, 0
}

func isJSON(ct string) bool {
	mt, _, _ := bytes.Cut([]byte(ct), []byte(";"))
	return string(bytes.TrimSpace(mt)) == "application/json"
}

func (s *Server) renewNow(w http.ResponseWriter, r *http.Request) {
	if s.renew == nil {
		fail(w, http.StatusNotImplemented, "renewal is not available")
		return
	}
	if err := s.renew(r.Context()); err != nil {
		fail(w, http.StatusBadGateway, "renewal failed: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, s.status())
}

func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.status())
}

func (s *Server) commands(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		fail(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	ch, cancel := s.hub.Subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case c, ok := <-ch:
			if !ok {
				return
			}
			if err := enc.Encode(c); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

// Hub fans downlink commands out to every subscribed local app. A
// subscriber that does not keep up loses commands (counted), rather than
// stalling the uplink.
type Hub struct {
	mu      sync.Mutex
	subs    map[chan Command]struct{}
	dropped uint64
}

// NewHub returns an empty Hub.
func NewHub() *Hub { return &Hub{subs: map[chan Command]struct{}{}} }

// Subscribe returns a channel of commands and a function to unsubscribe.
func (h *Hub) Subscribe() (<-chan Command, func()) {
	ch := make(chan Command, 64)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
		h.mu.Unlock()
	}
}

// Publish delivers c to every subscriber without blocking.
func (h *Hub) Publish(c Command) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- c:
		default:
			h.dropped++
		}
	}
}

// Dropped is how many deliveries were lost to slow subscribers.
func (h *Hub) Dropped() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropped
}

// Client returns an HTTP client for the agent's API on the Unix socket at
// path (any host name in the URL reaches it, e.g. http://agent/v1/status);
// timeout 0 means none, for the command stream.
func Client(path string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
}
