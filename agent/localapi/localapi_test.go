package localapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/uplink/spool"
)

// recordingSink keeps what it was given; it stands in for the spool in
// these unit tests of the HTTP layer.
type recordingSink struct {
	mu   sync.Mutex
	got  []json.RawMessage
	fail error
}

func (s *recordingSink) Submit(_ context.Context, msgs []json.RawMessage) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return nil, s.fail
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		s.got = append(s.got, m)
		ids[i] = fmt.Sprint(len(s.got))
	}
	return ids, nil
}

func (s *recordingSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

// serve starts the API on a real Unix socket and returns a client for it.
func serve(t *testing.T, sink Sink, hub *Hub) *http.Client {
	t.Helper()
	c, _ := serveWith(t, sink, hub, DefaultLimits())
	return c
}

// serveWith is serve with limits; it also returns the socket's path.
func serveWith(t *testing.T, sink Sink, hub *Hub, limits Limits) (*http.Client, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	srv := New(sink, func() any { return map[string]string{"state": "ok"} }, hub, nil)
	srv.SetLimits(limits)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c.Get("http://agent/v1/status")
		if err == nil {
			resp.Body.Close()
			c.CloseIdleConnections()
			return c, sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("local api did not come up: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling for the listener, with a deadline
	}
}

func post(t *testing.T, c *http.Client, ct string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://agent/v1/telemetry", bytes.NewReader(body))
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

func TestTelemetryAccepts(t *testing.T) {
	sink := &recordingSink{}
	c := serve(t, sink, NewHub())
	code, body := post(t, c, "application/json", []byte(`{"temp": 21.5}`))
	if code != http.StatusAccepted || !strings.Contains(body, `"accepted":1`) {
		t.Fatalf("%d %s", code, body)
	}
	code, body = post(t, c, "application/json; charset=utf-8", []byte(` [ {"a":1}, {"b": [1, 2]} ] `))
	if code != http.StatusAccepted || !strings.Contains(body, `"accepted":2`) {
		t.Fatalf("%d %s", code, body)
	}
	if sink.count() != 3 || string(sink.got[2]) != `{"b":[1,2]}` {
		t.Fatalf("sink got %q", sink.got)
	}
}

func TestTelemetryRejectsAndWritesNothing(t *testing.T) {
	many := "[" + strings.Repeat(`{"a":1},`, MaxBatch) + `{"a":1}]`
	cases := []struct {
		name, ct, body string
		code           int
		reason         string
	}{
		{"not json", "application/json", `{"a":`, 400, "not valid JSON"},
		{"scalar", "application/json", `42`, 400, "object"},
		{"string", "application/json", `"hi"`, 400, "object"},
		{"empty", "application/json", ``, 400, "empty body"},
		{"empty array", "application/json", `[]`, 400, "empty array"},
		{"array with scalar", "application/json", `[{"a":1}, 2]`, 400, "element 1"},
		{"trailing garbage", "application/json", `{"a":1} x`, 400, "not valid JSON"},
		{"too many", "application/json", many, 400, "at most"},
		{"oversized", "application/json", `{"a":"` + strings.Repeat("x", MaxBodyBytes) + `"}`, 413, "split"},
		{"wrong content type", "text/plain", `{"a":1}`, 415, "application/json"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sink := &recordingSink{}
			c := serve(t, sink, NewHub())
			code, body := post(t, c, tc.ct, []byte(tc.body))
			if code != tc.code || !strings.Contains(body, tc.reason) {
				t.Fatalf("got %d %s, want %d containing %q", code, body, tc.code, tc.reason)
			}
			if sink.count() != 0 {
				t.Fatalf("rejected request reached the sink")
			}
		})
	}
}

func TestTelemetrySinkFailure(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		code       int
		retryAfter string
	}{
		{"disk full", fmt.Errorf("spool mqtt: %w: write: %w", spool.ErrWrite, &os.PathError{Op: "write", Path: "x.seg", Err: syscall.ENOSPC}), 507, "10"},
		{"quota", fmt.Errorf("%w: %w", spool.ErrWrite, syscall.EDQUOT), 507, "10"},
		{"I/O error", fmt.Errorf("%w: fsync: %w", spool.ErrWrite, syscall.EIO), 503, "10"},
		{"shutting down", fmt.Errorf("spool https: %w", spool.ErrClosed), 503, "5"},
		{"no uplink", errors.New("no uplink configured (set mqtt.url or https.url)"), 503, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, &recordingSink{fail: tc.err}, NewHub())
			req, _ := http.NewRequest("POST", "http://agent/v1/telemetry", strings.NewReader(`[{"a":1},{"a":2}]`))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			if resp.StatusCode != tc.code || resp.Header.Get("Retry-After") != tc.retryAfter {
				t.Fatalf("%d Retry-After %q, want %d %q", resp.StatusCode, resp.Header.Get("Retry-After"), tc.code, tc.retryAfter)
			}
			if !strings.Contains(b.String(), "none of the 2 messages was stored") || !strings.Contains(b.String(), tc.err.Error()) {
				t.Fatalf("body %s", b.String())
			}
		})
	}
}

func TestCommandsStream(t *testing.T) {
	hub := NewHub()
	c := serve(t, &recordingSink{}, hub)
	resp, err := c.Get("http://agent/v1/commands")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The subscription exists once the handler flushed its headers.
	hub.Publish(Command{Topic: "devices/d1/commands", Payload: json.RawMessage(`{"reboot":true}`)})
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var got Command
	if err := json.Unmarshal([]byte(line), &got); err != nil || got.Topic != "devices/d1/commands" || string(got.Payload) != `{"reboot":true}` {
		t.Fatalf("got %q (%v)", line, err)
	}
}

func TestHubDropsForSlowSubscriber(t *testing.T) {
	h := NewHub()
	_, cancel := h.Subscribe()
	defer cancel()
	for i := 0; i < 100; i++ {
		h.Publish(Command{Topic: "t"})
	}
	if h.Dropped() != 36 {
		t.Fatalf("dropped %d, want 36 (100 minus a 64-command buffer)", h.Dropped())
	}
}

func TestStaleSocketReplacedLiveOneRefused(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := removeStaleSocket(sock); err == nil {
		t.Fatal("took over a live socket")
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if err := removeStaleSocket(sock); err != nil {
		t.Fatalf("stale socket: %v", err)
	}
}

func FuzzParseMessages(f *testing.F) {
	f.Add([]byte(`{"a":1}`))
	f.Add([]byte(`[{"a":1},{"b":{"c":[1,2,3]}}]`))
	f.Add([]byte(`[1]`))
	f.Fuzz(func(t *testing.T, in []byte) {
		msgs, err := ParseMessages(in)
		if err != nil {
			return
		}
		for _, m := range msgs {
			var v map[string]any
			if err := json.Unmarshal(m, &v); err != nil {
				t.Fatalf("accepted a message that is not an object: %q", m)
			}
		}
	})
}

// TestLocalUsersCannotHoldTheAPI: a local process that opens connections
// and sends nothing neither keeps them (the server closes them) nor gets
// more than MaxConns served at once, and a good client is served once one
// of them is gone.
func TestLocalUsersCannotHoldTheAPI(t *testing.T) {
	t.Run("idle connections are closed", func(t *testing.T) {
		c, sock := serveWith(t, &recordingSink{}, NewHub(), Limits{MaxConns: 8, HeaderTimeout: 100 * time.Millisecond,
			ReadTimeout: time.Second, IdleTimeout: 100 * time.Millisecond})
		conns := make([]net.Conn, 100)
		for i := range conns {
			cn, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer cn.Close()
			conns[i] = cn
		}
		// Served 8 at a time, each closed after its header timeout: all
		// are gone well within the deadline (it bounds a hang, not speed).
		for i, cn := range conns {
			_ = cn.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.Copy(io.Discard, cn); err != nil {
				t.Fatalf("idle connection %d was not closed by the server: %v", i, err)
			}
		}
		resp, err := c.Get("http://agent/v1/status")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("good client after the idle ones: %v %v", resp, err)
		}
		resp.Body.Close()
	})
	t.Run("at most MaxConns at once", func(t *testing.T) {
		_, sock := serveWith(t, &recordingSink{}, NewHub(), Limits{MaxConns: 2, HeaderTimeout: time.Minute,
			ReadTimeout: time.Minute, IdleTimeout: time.Minute})
		var held []net.Conn
		for range 2 {
			cn, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer cn.Close()
			held = append(held, cn)
		}
		good, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer good.Close()
		if _, err := io.WriteString(good, "GET /v1/status HTTP/1.1\r\nHost: agent\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// While two connections are held, the third waits in the backlog.
		_ = good.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := good.Read(make([]byte, 1)); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a third connection was served while two were held: n=%d err=%v", n, err)
		}
		held[0].Close()
		_ = good.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := bufio.NewReader(good).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
			t.Fatalf("after one was closed: %q %v", line, err)
		}
	})
}

// TestCommandsStreamOutlivesReadTimeout: the limits bound sending a
// request, not how long a command stream stays open (a WriteTimeout would).
func TestCommandsStreamOutlivesReadTimeout(t *testing.T) {
	hub := NewHub()
	l := DefaultLimits()
	l.ReadTimeout = 100 * time.Millisecond
	c, _ := serveWith(t, &recordingSink{}, hub, l)
	resp, err := c.Get("http://agent/v1/commands")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	time.Sleep(5 * l.ReadTimeout) // well past every request deadline
	hub.Publish(Command{Topic: "t", Payload: json.RawMessage(`{}`)})
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatalf("stream ended after ReadTimeout: %q %v", line, err)
	}
}
