package ca

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// manualClock is a clock that moves only when told.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *manualClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// from makes the client's connections come from a loopback address of
// its own (127.0.0.n), a peer apart from the others.
func (e *estClient) from(n int) *estClient {
	tr := e.http.Transport.(*http.Transport)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(n))}}
	tr.DialContext = d.DialContext
	return e
}

func retryAfter(t *testing.T, r response) time.Duration {
	t.Helper()
	s, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || s < 1 {
		t.Fatalf("%d %s: Retry-After %q", r.status, r.body, r.header.Get("Retry-After"))
	}
	return time.Duration(s) * time.Second
}

// TestTokenGuessRate measures how many token guesses one client gets
// checked in an hour when it retries as soon as Retry-After allows, on a
// clock the test moves: the free guesses, then one per doubling wait up to
// the cap. Every refused attempt in between is a 429 with Retry-After,
// answered before the body is parsed or anything is signed.
func TestTokenGuessRate(t *testing.T) {
	clk := &manualClock{t: time.Now()}
	s := newTestServer(t, Options{Now: clk.Now, AuditRefusalsPerMinute: -1})
	good := s.token(t, TokenOptions{})
	c := s.client(nil).from(2)
	csr := csrFor(t, newKey(t), "guess-1")
	start := clk.Now()
	checked, limited := 0, 0
	for clk.Now().Sub(start) < time.Hour {
		r := c.enroll(t, csr, token.Token{ID: fmt.Sprintf("t%016x", checked), Secret: strings.Repeat("A", 43)})
		switch r.status {
		case http.StatusUnauthorized:
			checked++
		case http.StatusTooManyRequests:
			limited++
			if errCode(r.body) != est.CodeRateLimited {
				t.Fatalf("429 body %q", r.body)
			}
			// A second attempt at once is refused too.
			if again := c.enroll(t, csr, good); again.status != http.StatusTooManyRequests {
				t.Fatalf("attempt inside the backoff: %d %s", again.status, again.body)
			}
			clk.Advance(retryAfter(t, r))
		default:
			t.Fatalf("guess: %d %s", r.status, r.body)
		}
	}
	// 5 free, then waits of 1, 2, 4 ... 256 s (9 guesses, 511 s), then one
	// per 300 s for the rest of the hour (10 or 11).
	t.Logf("guesses checked in one simulated hour: %d (%d attempts refused with 429)", checked, limited)
	if want := peerFreeGuesses + 9 + 11; checked > want || checked < want-2 {
		t.Fatalf("%d guesses checked in an hour, want about %d", checked, want)
	}
	// Another peer is not slowed down by this one, and the good token
	// still works once its own wait (none) allows.
	if r := s.client(nil).from(3).enroll(t, csr, good); r.status != http.StatusOK {
		t.Fatalf("another peer with a good token: %d %s", r.status, r.body)
	}
}

// TestTokenGuessPerToken guesses one token's secret from many peers: the
// token id is slowed down whichever peer asks.
func TestTokenGuessPerToken(t *testing.T) {
	clk := &manualClock{t: time.Now()}
	s := newTestServer(t, Options{Now: clk.Now, AuditRefusalsPerMinute: -1})
	tok := s.token(t, TokenOptions{})
	bad := tok
	bad.Secret = strings.Repeat("B", 43)
	csr := csrFor(t, newKey(t), "guess-2")
	for i := range tokenFreeGuesses {
		if r := s.client(nil).from(10+i).enroll(t, csr, bad); r.status != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d %s", i, r.status, r.body)
		}
	}
	r := s.client(nil).from(40).enroll(t, csr, bad)
	if r.status != http.StatusUnauthorized {
		t.Fatalf("guess over the free ones: %d %s", r.status, r.body)
	}
	r = s.client(nil).from(41).enroll(t, csr, tok)
	if r.status != http.StatusTooManyRequests {
		t.Fatalf("token in its backoff, from a new peer: %d %s", r.status, r.body)
	}
	clk.Advance(retryAfter(t, r))
	if r := s.client(nil).from(41).enroll(t, csr, tok); r.status != http.StatusOK {
		t.Fatalf("good secret after the wait: %d %s", r.status, r.body)
	}
}

func TestBackoffStep(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {9, 256 * time.Second}, {10, 300 * time.Second}, {100, 300 * time.Second}} {
		if got := backoffStep(time.Second, 300*time.Second, tc.n); got != tc.want {
			t.Errorf("step %d: %s, want %s", tc.n, got, tc.want)
		}
	}
}

// TestIdleAndSlowClients holds 1,000 idle connections from one peer and
// 100 clients that send their body a byte at a time from another, and
// enrolls a good client from a third meanwhile. Connections over the
// per-peer limit are closed at once.
func TestIdleAndSlowClients(t *testing.T) {
	s := newTestServer(t, Options{})
	addr := strings.TrimPrefix(s.url, "https://")
	dial := func(n int) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(n))}, Timeout: 10 * time.Second}
		return d.Dial("tcp", addr)
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 1000 {
		c, err := dial(2)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	tok := s.token(t, TokenOptions{Uses: 1})
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(3)
			if err != nil {
				return
			}
			defer c.Close()
			tc := tls.Client(c, &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1"})
			if tc.HandshakeContext(ctx) != nil {
				return
			}
			fmt.Fprintf(tc, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: 100000\r\nAuthorization: Basic %s\r\n\r\n",
				est.Path("", est.OpSimpleEnroll), est.MediaPKCS10, "dDpz")
			for j := 0; ctx.Err() == nil && j < 100000; j++ {
				if _, err := tc.Write([]byte("A")); err != nil {
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond): // the slow client's pace
				}
			}
		}()
	}
	good := s.client(nil).from(1)
	key := newKey(t)
	if r := good.enroll(t, csrFor(t, key, "good-1"), tok); r.status != http.StatusOK {
		t.Fatalf("good client: %d %s", r.status, r.body)
	}
	// The idle peer got DefaultMaxConnsPerPeer connections; the server
	// closed the others.
	// They were accepted (and refused) before the good client's, which
	// came after them in the listen queue, so a short read deadline
	// only waits out the connections the server holds.
	var closed atomic.Int64
	var readers sync.WaitGroup
	deadline := time.Now().Add(2 * time.Second)
	for _, c := range conns {
		readers.Add(1)
		go func() {
			defer readers.Done()
			_ = c.SetReadDeadline(deadline)
			if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				closed.Add(1)
			}
		}()
	}
	readers.Wait()
	if n := closed.Load(); n < 1000-DefaultMaxConnsPerPeer {
		t.Fatalf("%d of 1000 idle connections closed by the server, want at least %d", n, 1000-DefaultMaxConnsPerPeer)
	}
}

// TestGarbageIsBounded sends 10 s of refused requests from one client,
// each with 15 KB of headers and a user name full of terminal escapes
// and line breaks, and checks the database and the server log grew by at
// most 1 MB together and hold no raw control character.
func TestGarbageIsBounded(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "edgeca.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	s := newTestServer(t, Options{Logger: slog.New(slog.NewTextHandler(logFile, nil))})
	size := func() int64 {
		var n int64
		for _, f := range []string{logPath, filepath.Join(s.dir, DBFile), filepath.Join(s.dir, DBFile+"-wal")} {
			if fi, err := os.Stat(f); err == nil {
				n += fi.Size()
			}
		}
		return n
	}
	before := size()
	pad := strings.Repeat("x", 15<<10)
	user := "t\x1b[2J\x1b[31m\r\n2026-12-01T00:00:00Z simpleenroll ok dev-evil\r\n"
	c := s.client(nil)
	c.http.Transport.(*http.Transport).DisableKeepAlives = false
	bodies := [][]byte{[]byte("garbage\x00\x1b"), csrFor(t, newKey(t), "evil\r\nx"), csrFor(t, newKey(t), "dev-1")}
	requests := 0
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); requests++ {
		op := est.OpSimpleEnroll
		if requests%5 == 4 {
			op = est.OpSimpleReenroll
		}
		req, err := http.NewRequest(http.MethodPost, s.url+est.Path("", op), bytes.NewReader(bodies[requests%len(bodies)]))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", est.MediaPKCS10+"; x=\xff\t")
		req.Header.Set("X-Pad", pad)
		req.SetBasicAuth(user+strconv.Itoa(requests), "secret\r\n")
		resp, err := c.http.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", requests, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("garbage request %d answered %d", requests, resp.StatusCode)
		}
	}
	grown := size() - before
	t.Logf("%d garbage requests in 10 s grew the database and the log by %d bytes", requests, grown)
	if grown > 1<<20 {
		t.Fatalf("%d garbage requests grew the database and the log by %d bytes, over 1 MB", requests, grown)
	}
	// Close the window: the summary accounts for every refusal not
	// recorded one by one.
	for _, r := range s.ca.sampler.flush(s.clock.Now().Add(refusalWindow)) {
		s.ca.writeSummary(context.Background(), r)
	}
	recs, err := s.ca.Audit(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	accounted := 0
	for _, r := range recs {
		if r.Code == "sampled" {
			n, err := strconv.Atoi(strings.Fields(r.Reason)[0])
			if err != nil {
				t.Fatalf("summary %q", r.Reason)
			}
			accounted += n
		} else {
			accounted++
		}
	}
	if accounted != requests || len(recs) > 2*DefaultRefusalsPerMinute {
		t.Fatalf("%d audit records account for %d refusals, want %d", len(recs), accounted, requests)
	}
	for _, r := range recs {
		for _, f := range []string{r.Op, r.Peer, r.TokenID, r.DeviceID, r.Code, r.Reason} {
			if strings.ContainsAny(f, "\x1b\r\n") {
				t.Fatalf("audit record holds a raw control character: %q", f)
			}
		}
	}
	logFile.Sync()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if !strings.HasPrefix(sc.Text(), "time=") || strings.ContainsAny(sc.Text(), "\x1b\r") {
			t.Fatalf("log line forged or raw: %q", sc.Text())
		}
	}
}

// fdListener fails Accept with EMFILE n times.
type fdListener struct {
	net.Listener
	n int
}

func (l *fdListener) Accept() (net.Conn, error) {
	if l.n > 0 {
		l.n--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestFDExhaustionLogged checks that running out of file descriptors is
// logged at error level, once for a burst.
func TestFDExhaustionLogged(t *testing.T) {
	var buf bytes.Buffer
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l := newLimitListener(&fdListener{Listener: ln, n: 50}, 1, 1, slog.New(slog.NewTextHandler(&buf, nil)))
	for range 50 {
		if _, err := l.Accept(); !isFDExhaustion(err) {
			t.Fatalf("Accept: %v", err)
		}
	}
	if n := strings.Count(buf.String(), "level=ERROR"); n != 1 || !strings.Contains(buf.String(), "out of file descriptors") {
		t.Fatalf("log:\n%s", buf.String())
	}
}

// TestLimitListener: connections over the per-peer or the total limit are
// closed at accept; closing one frees its slot.
func TestLimitListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newLimitListener(ln, 2, 3, slog.New(slog.DiscardHandler))
	defer l.Close()
	for _, tc := range []struct {
		ip   string
		ok   bool
		note string
	}{
		{"127.0.0.2", true, ""},
		{"127.0.0.2", true, ""},
		{"127.0.0.2", false, "third from one peer"},
		{"127.0.0.3", true, ""},
		{"127.0.0.4", false, "fourth in total"},
	} {
		if got := l.acquire(tc.ip); got != tc.ok {
			t.Fatalf("acquire %s: %v, want %v (%s)", tc.ip, got, tc.ok, tc.note)
		}
	}
	l.release("127.0.0.2")
	if !l.acquire("127.0.0.4") {
		t.Fatal("a freed slot was not reused")
	}
	// Through Accept: a conn over the limit is closed, the next one served.
	l2 := newLimitListener(ln, 1, 10, slog.New(slog.DiscardHandler))
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := l2.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	first, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	held := <-accepted
	second, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	_ = second.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard, not a bound
	if _, err := second.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("second connection from one peer was not closed")
	}
	held.Close() // frees the slot
	third, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if c := <-accepted; c == nil {
		t.Fatal("the connection after a freed slot was not accepted")
	} else {
		c.Close()
	}
	if l2.refused.Load() != 1 {
		t.Fatalf("%d refused, want 1", l2.refused.Load())
	}
}

// TestGuessLimiterBounds: unknown keys beyond maxGuessKeys share one
// entry, and sweep forgets quiet keys.
func TestGuessLimiterBounds(t *testing.T) {
	g := newGuessLimiter(0, time.Second, time.Minute)
	now := time.Now()
	for i := range maxGuessKeys + 100 {
		g.fail(fmt.Sprint("k", i), now)
	}
	if len(g.entries) != maxGuessKeys+1 || g.entries["*"] == nil || g.entries["*"].failures != 100 {
		t.Fatalf("%d entries", len(g.entries))
	}
	if g.wait("k1", now) != time.Second {
		t.Fatalf("wait %s", g.wait("k1", now))
	}
	g.sweep(now.Add(3 * time.Minute))
	if len(g.entries) != 0 {
		t.Fatalf("%d entries after sweep", len(g.entries))
	}
}

// TestAuditMaxRows: the server keeps the audit log within its maximum.
func TestAuditMaxRows(t *testing.T) {
	s := newTestServer(t, Options{AuditMaxRows: 3})
	ctx := context.Background()
	for i := range 10 {
		s.ca.writeAudit(ctx, store.AuditRecord{Time: time.Now(), Op: "x", Result: store.ResultDenied, Reason: fmt.Sprint(i)})
	}
	s.ca.pruneAudit(ctx)
	recs, err := s.ca.Audit(ctx, 0)
	if err != nil || len(recs) != 3 || recs[0].Reason != "9" || recs[2].Reason != "7" {
		t.Fatalf("after prune: %+v %v", recs, err)
	}
}
