package https

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

type pki struct {
	pool   *x509.CertPool
	server tls.Certificate
	client tls.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca := testpki.New(t, "ca")
	return &pki{pool: ca.Pool(), server: *ca.Server(t).TLS, client: *ca.Client(t, "dev-1").TLS}
}

// sink is an mTLS HTTPS backend that records message ids.
type sink struct {
	srv      *httptest.Server
	mu       sync.Mutex
	ids      map[string]int
	requests atomic.Int32
	// answer, when set, decides the status of a request (by number).
	answer func(n int32, w http.ResponseWriter) bool
}

func newSink(t *testing.T, p *pki) *sink {
	s := &sink{ids: map[string]int{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.requests.Add(1)
		if s.answer != nil && s.answer(n, w) {
			return
		}
		if r.Header.Get("Content-Encoding") != "gzip" || r.Header.Get("Content-Type") != "application/x-ndjson" {
			http.Error(w, "want gzip ndjson", http.StatusUnsupportedMediaType)
			return
		}
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sc := bufio.NewScanner(zr)
		var got []string
		for sc.Scan() {
			var m struct{ ID string }
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil || m.ID == "" {
				http.Error(w, "bad line", http.StatusBadRequest)
				return
			}
			got = append(got, m.ID)
		}
		s.mu.Lock()
		for _, id := range got {
			s.ids[id]++
		}
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *sink) count() (unique, dup int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.ids {
		unique++
		dup += n - 1
	}
	return
}

func fill(t *testing.T, sp *spool.Spool, n int) {
	t.Helper()
	batch := make([][]byte, 0, 100)
	for i := 0; i < n; i++ {
		batch = append(batch, []byte(fmt.Sprintf(`{"id":"m-%d","data":{"v":%d}}`, i, i)))
		if len(batch) == cap(batch) || i == n-1 {
			if _, err := sp.AppendBatch(batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

func start(t *testing.T, o Options) (*Sender, func()) {
	t.Helper()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return s, stop
}

func clientTLS(p *pki) *tls.Config {
	return &tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{p.client}, MinVersion: tls.VersionTLS12}
}

func TestDeliversEverythingOverMTLS(t *testing.T) {
	p := newPKI(t)
	sk := newSink(t, p)
	sp, err := spool.Open(t.TempDir(), spool.Options{Sync: spool.SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	fill(t, sp, 5000)
	s, _ := start(t, Options{URL: sk.srv.URL + "/ingest", TLS: clientTLS(p), Spool: sp, BatchMax: 300, BatchBytes: 8 << 10})
	poll.Until(t, 20*time.Second, "5000 messages", func() bool { u, _ := sk.count(); return u == 5000 })
	poll.Until(t, 20*time.Second, "spool drained", func() bool { return sp.Stats().Depth == 0 })
	if _, dup := sk.count(); dup != 0 {
		t.Fatalf("%d duplicates on a clean run", dup)
	}
	if st := s.Stats(); st.Acked != 5000 || st.Batches < 5000*40/(8<<10) {
		t.Fatalf("stats %+v: batches should respect the byte bound", st)
	}
}

func TestWithoutClientCertRefused(t *testing.T) {
	p := newPKI(t)
	sk := newSink(t, p)
	sp, _ := spool.Open(t.TempDir(), spool.Options{Sync: spool.SyncNever})
	t.Cleanup(func() { sp.Close() })
	fill(t, sp, 10)
	s, _ := start(t, Options{URL: sk.srv.URL, TLS: &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS12}, Spool: sp, RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond})
	poll.Until(t, 20*time.Second, "a failure", func() bool { return s.Stats().Failures > 0 })
	if u, _ := sk.count(); u != 0 || sp.Stats().Depth != 10 {
		t.Fatalf("messages left the spool without mTLS: %d delivered, depth %d", u, sp.Stats().Depth)
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	p := newPKI(t)
	sk := newSink(t, p)
	var firstAt, secondAt atomic.Int64
	sk.answer = func(n int32, w http.ResponseWriter) bool {
		if n == 1 {
			firstAt.Store(time.Now().UnixNano())
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		if n == 2 {
			secondAt.Store(time.Now().UnixNano())
		}
		return false
	}
	sp, _ := spool.Open(t.TempDir(), spool.Options{Sync: spool.SyncNever})
	t.Cleanup(func() { sp.Close() })
	fill(t, sp, 50)
	// RetryMin is tiny: only Retry-After can explain a wait of a second.
	start(t, Options{URL: sk.srv.URL, TLS: clientTLS(p), Spool: sp, RetryMin: time.Millisecond, RetryMax: time.Minute})
	poll.Until(t, 20*time.Second, "delivery after 429", func() bool { u, _ := sk.count(); return u == 50 })
	if gap := time.Duration(secondAt.Load() - firstAt.Load()); gap < time.Second {
		t.Fatalf("retried %v after 429 with Retry-After: 1", gap)
	}
}

func TestIdentityRejectedIsReportedAndNotAcked(t *testing.T) {
	p := newPKI(t)
	sk := newSink(t, p)
	var reject atomic.Bool
	reject.Store(true)
	sk.answer = func(n int32, w http.ResponseWriter) bool {
		if reject.Load() {
			w.WriteHeader(http.StatusForbidden)
			return true
		}
		return false
	}
	sp, _ := spool.Open(t.TempDir(), spool.Options{Sync: spool.SyncNever})
	t.Cleanup(func() { sp.Close() })
	fill(t, sp, 20)
	s, _ := start(t, Options{URL: sk.srv.URL, TLS: clientTLS(p), Spool: sp, RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	poll.Until(t, 20*time.Second, "identity error", func() bool { return strings.Contains(s.Stats().LastError, "rejected the device identity") })
	if sp.Stats().Depth != 20 {
		t.Fatalf("rejected batch was acked: depth %d", sp.Stats().Depth)
	}
	reject.Store(false)
	poll.Until(t, 20*time.Second, "delivery once accepted", func() bool { u, _ := sk.count(); return u == 20 })
}

func TestTakeBatch(t *testing.T) {
	recs := []spool.Record{{Payload: make([]byte, 10)}, {Payload: make([]byte, 10)}, {Payload: make([]byte, 10)}}
	cases := []struct{ max, want int }{{100, 3}, {22, 2}, {11, 1}, {1, 1}}
	for _, c := range cases {
		if got := len(takeBatch(recs, c.max)); got != c.want {
			t.Errorf("max %d: %d records, want %d", c.max, got, c.want)
		}
	}
}
