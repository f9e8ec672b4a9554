package demo

import (
	"bufio"
	"compress/gzip"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/revocation/httpsguard"
)

// tally is what one backend received: messages acknowledged, distinct
// message ids (the agent delivers at least once, so a resend after a lost
// ack is a duplicate), and the serial of the client certificate that sent
// the last one (it changes when the agent renews).
type tally struct {
	mu       sync.Mutex
	up       bool
	received uint64
	ids      map[string]struct{}
	serial   string
}

func newTally() *tally { return &tally{ids: map[string]struct{}{}} }

// add counts one acknowledged message (an agent envelope).
func (t *tally) add(serial string, payload []byte) {
	var env struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(payload, &env)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.received++
	if env.ID != "" {
		t.ids[env.ID] = struct{}{}
	}
	if serial != "" {
		t.serial = serial
	}
}

func (t *tally) setUp(up bool) {
	t.mu.Lock()
	t.up = up
	t.mu.Unlock()
}

// Backend is one backend's state as its server side sees it.
type Backend struct {
	Up       bool   `json:"up"`
	Addr     string `json:"addr"`
	Received uint64 `json:"received"` // messages acknowledged
	Unique   uint64 `json:"unique"`   // distinct message ids among them
	Serial   string `json:"serial"`   // client certificate of the last message
}

func (t *tally) snapshot(addr string) Backend {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Backend{Up: t.up, Addr: addr, Received: t.received, Unique: uint64(len(t.ids)), Serial: t.serial}
}

// sink is an HTTPS server that requires a client certificate from the demo
// CA and acknowledges what uplink/https sends: POST bodies of gzip-compressed
// newline-delimited JSON envelopes, acked with 204 once every line parsed.
// Like the broker it can be stopped and started on the same address.
type sink struct {
	tls   *tls.Config
	log   *slog.Logger
	addr  string
	guard *httpsguard.Guard

	mu    sync.Mutex
	srv   *http.Server
	done  chan struct{}
	tally *tally
}

// sinkPath is where the agent posts.
const sinkPath = "/ingest"

// maxBody bounds one decompressed batch.
const maxBody = 16 << 20

// newSink makes the sink; guard (nil: none) refuses revoked client
// certificates and cuts their connections (package httpsguard).
func newSink(tlsCfg *tls.Config, log *slog.Logger, t *tally, guard *httpsguard.Guard) *sink {
	return &sink{tls: tlsCfg, log: log, addr: "127.0.0.1:0", tally: t, guard: guard}
}

// Start listens (a free port the first time, then the same one).
func (s *sink) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("https sink: listen on %s: %w", s.addr, err)
	}
	s.addr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+sinkPath, s.ingest)
	cfg := s.tls
	if s.guard != nil {
		cfg = s.guard.TLSConfig(s.tls)
	}
	srv := &http.Server{Handler: mux, TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	if s.guard != nil {
		s.guard.Track(srv)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("https sink stopped", "err", err)
		}
	}()
	s.srv, s.done = srv, done
	s.tally.setUp(true)
	return nil
}

// Stop closes the listener and every connection, and waits for the server.
func (s *sink) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return
	}
	_ = s.srv.Close()
	<-s.done
	s.srv = nil
	s.tally.setUp(false)
}

// Toggle stops a running sink or starts a stopped one.
func (s *sink) Toggle() error {
	s.mu.Lock()
	running := s.srv != nil
	s.mu.Unlock()
	if running {
		s.Stop()
		return nil
	}
	return s.Start()
}

// Addr is the sink's host:port.
func (s *sink) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// URL is where the agent posts.
func (s *sink) URL() string { return "https://" + s.Addr() + sinkPath }

func (s *sink) ingest(w http.ResponseWriter, r *http.Request) {
	serial := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		serial = ca.SerialHex(r.TLS.PeerCertificates[0].SerialNumber)
	}
	lines, err := readBatch(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for _, l := range lines {
		s.tally.add(serial, l)
	}
	w.WriteHeader(http.StatusNoContent)
}

// readBatch decodes a gzip NDJSON body into its lines, refusing a line
// that is not a JSON object so a broken batch is never acknowledged.
func readBatch(r *http.Request) ([][]byte, error) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, fmt.Errorf("gzip body: %w", err)
		}
		defer zr.Close()
		body = zr
	}
	sc := bufio.NewScanner(io.LimitReader(body, maxBody))
	sc.Buffer(make([]byte, 0, 64<<10), maxBody)
	var lines [][]byte
	for sc.Scan() {
		l := sc.Bytes()
		if len(l) == 0 {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(l, &obj); err != nil {
			return nil, fmt.Errorf("line %d is not a JSON object: %w", len(lines)+1, err)
		}
		lines = append(lines, append([]byte(nil), l...))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return lines, nil
}
