package webhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/ca/webhook"
)

var secret = []byte("0123456789abcdef-webhook-secret")

// receiver is a real HTTP server on 127.0.0.1:0 that refuses the first
// failFirst deliveries of each event, verifies every signature, and
// records the ids it accepted (a delivery may come more than once).
type receiver struct {
	mu        sync.Mutex
	failFirst int
	tries     map[string]int
	accepted  map[string]int
	bodies    map[string]map[string]any
	badSig    int
	url       string
}

func newReceiver(t *testing.T, failFirst int) *receiver {
	r := &receiver{failFirst: failFirst, tries: map[string]int{}, accepted: map[string]int{}, bodies: map[string]map[string]any{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	r.url = "http://" + ln.Addr().String() + "/hook"
	return r
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := webhook.Verify(secret, req.Header.Get(webhook.HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
		r.badSig++
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	id := req.Header.Get(webhook.HeaderEventID)
	r.tries[id]++
	if r.tries[id] <= r.failFirst {
		http.Error(w, "not yet", http.StatusServiceUnavailable)
		return
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil || m["id"] != id {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	r.accepted[id]++
	r.bodies[id] = m
}

func (r *receiver) snapshot() (map[string]int, map[string]int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	acc, tries := map[string]int{}, map[string]int{}
	for k, v := range r.accepted {
		acc[k] = v
	}
	for k, v := range r.tries {
		tries[k] = v
	}
	return acc, tries, r.badSig
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ackCounter is the store as the dispatcher sees it, noting each
// acknowledged event.
type ackCounter struct {
	webhook.Outbox
	mu    sync.Mutex
	acked map[string]bool
}

func (a *ackCounter) AckEvent(ctx context.Context, id, owner string) error {
	err := a.Outbox.AckEvent(ctx, id, owner)
	if err == nil {
		a.mu.Lock()
		a.acked[id] = true
		a.mu.Unlock()
	}
	return err
}

func (a *ackCounter) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.acked)
}

func evs(n int) []store.OutboxEvent {
	var out []store.OutboxEvent
	for i := range n {
		id := fmt.Sprintf("evt-%d", i)
		out = append(out, store.OutboxEvent{ID: id, Kind: webhook.TypeEnrolled, Created: time.Now(),
			Body: []byte(fmt.Sprintf(`{"id":%q,"type":"device.enrolled","device":"d%d"}`, id, i))})
	}
	return out
}

func start(t *testing.T, out webhook.Outbox, urls ...string) (*webhook.Dispatcher, func()) {
	d, err := webhook.New(out, webhook.Config{URLs: urls, Secret: secret, Poll: 20 * time.Millisecond, MinDelay: 5 * time.Millisecond, MaxDelay: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	return d, func() { cancel(); <-done }
}

// Every event reaches two receivers despite their first two refusals, each
// signed, with its stable id; none is lost across a restart of the CA (the
// store closed and reopened between the queueing and the delivery).
func TestDeliveryRetriesAndSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "edgeca.db")
	st, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Enqueue(ctx, evs(20), 0); err != nil {
		t.Fatal(err)
	}
	st.Close() // "restart": the events are only in the database now
	st, err = store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, b := newReceiver(t, 2), newReceiver(t, 1)
	out := &ackCounter{Outbox: st, acked: map[string]bool{}}
	d, stop := start(t, out, a.url, b.url)
	defer stop()
	d.Wake()
	waitFor(t, "20 events at both receivers", func() bool {
		x, _, _ := a.snapshot()
		y, _, _ := b.snapshot()
		return len(x) == 20 && len(y) == 20
	})
	// Delivered events are acknowledged, so they leave the outbox (the
	// last ack may still be on its way when the receivers have them).
	waitFor(t, "20 acknowledgements", func() bool { return out.count() == 20 })
	stop()
	if left, _ := st.ClaimEvents(ctx, "check", time.Now().Add(time.Hour), time.Minute, 100); len(left) != 0 {
		t.Errorf("%d events still queued after delivery", len(left))
	}
	for _, r := range []*receiver{a, b} {
		acc, tries, bad := r.snapshot()
		if bad != 0 {
			t.Errorf("%d deliveries with a bad signature", bad)
		}
		for id, n := range acc {
			if n < 1 || tries[id] < r.failFirst+1 {
				t.Errorf("event %s: accepted %d times after %d tries", id, n, tries[id])
			}
		}
	}
	if got := a.bodies["evt-3"]["device"]; got != "d3" {
		t.Errorf("body of evt-3: device %v", got)
	}
}

func TestVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"id":"x"}`)
	good := webhook.Sign(secret, now, body)
	cases := []struct {
		name   string
		secret []byte
		header string
		body   []byte
		at     time.Time
		ok     bool
	}{
		{"good", secret, good, body, now, true},
		{"good, two v1 (secret rotation)", secret, "t=1800000000,v1=00ff," + good[len("t=1800000000,"):], body, now, true},
		{"other body", secret, good, []byte(`{"id":"y"}`), now, false},
		{"other secret", []byte("another-secret-of-16+"), good, body, now, false},
		{"too old (replay)", secret, good, body, now.Add(6 * time.Minute), false},
		{"from the future", secret, good, body, now.Add(-6 * time.Minute), false},
		{"no v1", secret, "t=1800000000", body, now, false},
		{"garbage", secret, "v1=zz,t=x", body, now, false},
		{"empty", secret, "", body, now, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := webhook.Verify(c.secret, c.header, c.body, c.at, 5*time.Minute)
			if (err == nil) != c.ok || (err != nil && !errors.Is(err, webhook.ErrBadSignature)) {
				t.Fatalf("Verify = %v, want ok %v", err, c.ok)
			}
		})
	}
}

func TestGiveUp(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	cases := []struct {
		name    string
		created time.Time
		now     time.Time
		want    bool
	}{
		{"young", t0, t0.Add(time.Hour), false},
		{"at max age", t0, t0.Add(72 * time.Hour), true},
		{"older", t0, t0.Add(100 * time.Hour), true},
		{"unknown age", time.Time{}, t0, false},
	}
	for _, c := range cases {
		if got := webhook.GiveUp(c.created, c.now, 72*time.Hour); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestNewRejects(t *testing.T) {
	cases := map[string]webhook.Config{
		"no URL":       {Secret: secret},
		"ftp URL":      {URLs: []string{"ftp://x/"}, Secret: secret},
		"short secret": {URLs: []string{"https://x/"}, Secret: []byte("short")},
	}
	for name, cfg := range cases {
		if _, err := webhook.New(nil, cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzVerify: no header or body makes Verify panic or accept a signature
// it did not make.
func FuzzVerify(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	f.Add(webhook.Sign(secret, now, []byte(`{}`)), []byte(`{}`))
	f.Add("t=1800000000,v1=00", []byte("x"))
	f.Add(",,=,t=,v1=", []byte{})
	// Hex is case-insensitive: an upper-case digit spells the same HMAC.
	f.Add(strings.ToUpper(webhook.Sign(secret, now, []byte(`{}`))), []byte(`{}`))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		err := webhook.Verify(secret, header, body, now, 5*time.Minute)
		header = strings.ToLower(header) // what Verify compares is the decoded HMAC
		if err == nil && !strings.Contains(header, webhook.Sign(secret, now, body)[len("t=1800000000,"):]) {
			// Accepted: the header must hold the real HMAC of some t in
			// the tolerance; re-sign with the t it names to check.
			ok := false
			for _, part := range strings.Split(header, ",") {
				if ts, found := strings.CutPrefix(strings.TrimSpace(part), "t="); found {
					var sec int64
					if _, err := fmt.Sscan(ts, &sec); err == nil {
						want := webhook.Sign(secret, time.Unix(sec, 0), body)
						ok = ok || strings.Contains(header, want[strings.Index(want, "v1="):])
					}
				}
			}
			if !ok {
				t.Fatalf("Verify accepted %q for %q", header, body)
			}
		}
	})
}
