package webhook

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
)

// leaseOutbox hands out its events once and records what was done.
type leaseOutbox struct {
	mu     sync.Mutex
	evs    []store.OutboxEvent
	acked  []string
	retrie []string
}

func (o *leaseOutbox) ClaimEvents(context.Context, string, time.Time, time.Duration, int) ([]store.OutboxEvent, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	evs := o.evs
	o.evs = nil
	return evs, nil
}
func (o *leaseOutbox) AckEvent(_ context.Context, id, _ string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.acked = append(o.acked, id)
	return nil
}
func (o *leaseOutbox) RetryEvent(_ context.Context, id, _ string, _ time.Time) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.retrie = append(o.retrie, id)
	return nil
}
func (o *leaseOutbox) OutboxDropped(context.Context) (int64, error) { return 0, nil }

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestRoundStopsBeforeTheLeaseEnds: a receiver slow enough to use half the
// lease on one event makes the round stop there; the events not tried are
// neither acknowledged nor counted as failed (they go back when the lease
// ends), so no replica posts them while this one still might.
func TestRoundStopsBeforeTheLeaseEnds(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	out := &leaseOutbox{evs: []store.OutboxEvent{{ID: "e1", Body: []byte("{}")}, {ID: "e2", Body: []byte("{}")}, {ID: "e3", Body: []byte("{}")}}}
	slow := roundTrip(func(*http.Request) (*http.Response, error) {
		mu.Lock()
		now = now.Add(31 * time.Second) // more than half of the 1-minute lease
		mu.Unlock()
		return &http.Response{StatusCode: 200, Status: "200 OK", Body: io.NopCloser(strings.NewReader(""))}, nil
	})
	d, err := New(out, Config{URLs: []string{"https://hooks.example/in"}, Secret: []byte("0123456789abcdef0123"),
		Client: &http.Client{Transport: slow, Timeout: time.Second}, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if d.cfg.Lease != time.Minute {
		t.Fatalf("lease %v for one URL with a 1 s timeout, want the 1-minute floor", d.cfg.Lease)
	}
	if n, err := d.round(context.Background()); err != nil || n != 3 {
		t.Fatalf("round = %d, %v", n, err)
	}
	if len(out.acked) != 1 || out.acked[0] != "e1" || len(out.retrie) != 0 {
		t.Fatalf("acked %v, released %v: want only e1 delivered, nothing counted as failed", out.acked, out.retrie)
	}
	// Many slow URLs: the lease grows to outlast a few events' worth of timeouts.
	urls := make([]string, 8)
	for i := range urls {
		urls[i] = "https://hooks.example/in"
	}
	d, err = New(out, Config{URLs: urls, Secret: []byte("0123456789abcdef0123"), Client: &http.Client{Timeout: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if d.cfg.Lease < 4*8*10*time.Second {
		t.Fatalf("lease %v for 8 URLs with a 10 s timeout", d.cfg.Lease)
	}
}
