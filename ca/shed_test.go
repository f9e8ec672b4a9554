package ca

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// TestGate: with every worker busy, a request is shed after MaxWait with
// 503 unavailable and a Retry-After in [1 s, 1 s + spread); with shedding
// off it waits for a worker instead; a freed worker admits the next.
func TestGate(t *testing.T) {
	g := newGate(ShedOptions{Workers: 1, MaxWait: 10 * time.Millisecond, RetrySpread: 20 * time.Second})
	release, e := g.admit(context.Background(), 0)
	if e != nil {
		t.Fatalf("first request: %v", e)
	}
	for _, tc := range []struct {
		jitter float64
		want   time.Duration
	}{{0, time.Second}, {0.5, 11 * time.Second}, {0.999, time.Second + 19980*time.Millisecond}} {
		_, e := g.admit(context.Background(), tc.jitter)
		if e == nil || e.Status != http.StatusServiceUnavailable || e.Code != est.CodeUnavailable || e.RetryAfter != tc.want {
			t.Errorf("jitter %v with the worker busy: %+v, want 503 unavailable Retry-After %s", tc.jitter, e, tc.want)
		}
	}
	if g.shed.Load() != 3 {
		t.Errorf("shed count %d, want 3", g.shed.Load())
	}
	release()
	r2, e := g.admit(context.Background(), 0)
	if e != nil {
		t.Fatalf("after the release: %v", e)
	}
	r2()

	off := newGate(ShedOptions{Workers: 1, MaxWait: time.Millisecond, Off: true})
	hold, _ := off.admit(context.Background(), 0)
	got := make(chan *Error, 1)
	go func() {
		r, e := off.admit(context.Background(), 0)
		if e == nil {
			r()
		}
		got <- e
	}()
	// Not shed however long the worker is held: it is admitted once the
	// worker is free.
	select {
	case e := <-got:
		t.Fatalf("shedding off: answered %+v while the worker was busy", e)
	case <-time.After(50 * time.Millisecond):
	}
	hold()
	if e := <-got; e != nil {
		t.Fatalf("shedding off: %+v", e)
	}
}
