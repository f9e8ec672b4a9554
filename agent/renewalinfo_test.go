package agent

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

func TestRenewEarly(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	due := t0.Add(16 * time.Hour)
	cases := []struct {
		name string
		w    est.Window
		now  time.Time
		want bool
	}{
		{"renew-now window started", est.Window{Start: t0.Add(time.Hour), End: t0.Add(2 * time.Hour)}, t0.Add(90 * time.Minute), true},
		{"renew-now window started, end passed", est.Window{Start: t0.Add(time.Hour), End: t0.Add(2 * time.Hour)}, t0.Add(3 * time.Hour), true},
		{"window not started yet", est.Window{Start: t0.Add(time.Hour), End: t0.Add(2 * time.Hour)}, t0.Add(30 * time.Minute), false},
		{"normal window after due: keep the schedule", est.Window{Start: due.Add(time.Minute), End: due.Add(time.Hour)}, due.Add(2 * time.Minute), false},
		{"window at due", est.Window{Start: due, End: due.Add(time.Hour)}, due, false},
		// The CA's usual window (two thirds to three quarters) around an
		// agent due inside it: the agent's jitter stands, no herd at 2/3.
		{"normal window around due: keep the schedule", est.Window{Start: due.Add(-time.Hour), End: due.Add(time.Hour)}, due.Add(-30 * time.Minute), false},
		{"window ending before due, started", est.Window{Start: due.Add(-3 * time.Hour), End: due.Add(-2 * time.Hour)}, due.Add(-150 * time.Minute), true},
		{"window without an end, started before due", est.Window{Start: due.Add(-time.Hour)}, due.Add(-30 * time.Minute), true},
		{"no window", est.Window{}, t0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := RenewEarly(c.w, c.now, due); got != c.want {
				t.Fatalf("RenewEarly = %v, want %v", got, c.want)
			}
		})
	}
}

func TestInfoDelay(t *testing.T) {
	cases := []struct {
		r    float64
		want time.Duration
	}{{0, 54 * time.Minute}, {0.5, time.Hour}, {1, 66 * time.Minute}}
	for _, c := range cases {
		if got := InfoDelay(time.Hour, c.r); got != c.want {
			t.Errorf("InfoDelay(1h, %v) = %v, want %v", c.r, got, c.want)
		}
	}
}

// The renewer asks renewal-info at its interval and keeps its schedule
// while the window is the normal one; once the CA answers a window that
// started (renew-now), it renews at that check, long before it was due.
func TestRenewerHonoursRenewNowAtNextCheck(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := &fakeCA{clock: newFakeClock(start), lifetime: 24 * time.Hour}
	var mu sync.Mutex
	var asks []time.Time
	renewNowAt := start.Add(3*time.Hour + 10*time.Minute)
	info := func(_ context.Context, id *Identity) (est.RenewalInfo, time.Duration, error) {
		mu.Lock()
		defer mu.Unlock()
		now := ca.clock.Now()
		asks = append(asks, now)
		if now.After(renewNowAt) {
			return est.RenewalInfo{SuggestedWindow: est.Window{Start: renewNowAt, End: now.Add(time.Hour)}}, time.Hour, nil
		}
		life := id.NotAfter().Sub(id.Leaf().NotBefore)
		return est.RenewalInfo{SuggestedWindow: est.Window{Start: id.Leaf().NotBefore.Add(life * 2 / 3), End: id.Leaf().NotBefore.Add(life * 3 / 4)}}, time.Hour, nil
	}
	p := testPolicy
	p.InfoInterval = time.Hour
	src := rand.New(rand.NewPCG(1, 2))
	r := newRenewer(renewerParts{clock: ca.clock, rand: src.Float64, policy: func() RenewPolicy { return p },
		renew: ca.renew, rebootstrap: ca.rebootstrap, renewalInfo: info}, ca.issue("dev-1"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	first := r.Current()
	for i := 0; ; i++ {
		if i > 10 {
			t.Fatal("no renewal after 10 renewal-info checks")
		}
		// Every timer before the renewal is a check, an interval apart.
		tm := ca.clock.next(t)
		if r.Current() != first {
			break // the loop renewed and armed its next timer
		}
		if d := tm.at.Sub(ca.clock.Now()); d < 54*time.Minute || d > 66*time.Minute {
			t.Fatalf("timer %d armed %v ahead, want the 1h interval ±10%%", i, d)
		}
		ca.clock.fire(tm)
	}
	ca.mu.Lock()
	attempts := append([]time.Time(nil), ca.attempts...)
	ca.mu.Unlock()
	if len(attempts) != 1 || attempts[0].Before(renewNowAt) || attempts[0].After(renewNowAt.Add(70*time.Minute)) {
		t.Fatalf("renewal attempts %v, want one at the first check after %v", attempts, renewNowAt)
	}
	if due := first.Leaf().NotBefore.Add(15 * time.Hour); !attempts[0].Before(due) {
		t.Fatalf("renewed at %v, not before the schedule", attempts[0])
	}
}

// The agent's own renewal-info call against a real edgeca: the normal
// window, then, after `edgeca device renew-now`, one that has started so
// RenewEarly says renew; after the renewal the mark is gone.
func TestAskRenewalInfoFromEdgeca(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{CertTTL: 24 * time.Hour})
	dir, ks, ident := enrolled(t, c, "dev-ri")
	ctx := context.Background()
	ri, again, err := AskRenewalInfo(ctx, ident, "", time.Now, false)
	if err != nil {
		t.Fatal(err)
	}
	leaf := ident.Leaf()
	due := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 66 / 100)
	if again != time.Hour || RenewEarly(ri.SuggestedWindow, time.Now(), due) {
		t.Fatalf("normal answer %+v (again %v) asks for an early renewal", ri, again)
	}
	at := time.Now().Add(-time.Second)
	if n, err := c.Fleet().RequestRenewal(ctx, []string{"dev-ri"}, at); err != nil || n != 1 {
		t.Fatalf("RequestRenewal = %d, %v", n, err)
	}
	if ri, _, err = AskRenewalInfo(ctx, ident, "", time.Now, false); err != nil || !RenewEarly(ri.SuggestedWindow, time.Now(), due) {
		t.Fatalf("after renew-now: %+v, %v", ri, err)
	}
	nid, err := Renew(ctx, RenewOptions{StateDir: dir, Keystore: ks, Current: ident, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if ri, _, err = AskRenewalInfo(ctx, nid, "", time.Now, false); err != nil || RenewEarly(ri.SuggestedWindow, time.Now(), nid.NotAfter()) {
		t.Fatalf("after the renewal: %+v, %v", ri, err)
	}
}

// A CA without renewal-info (404) is asked again once a day, not at every
// interval: each ask costs a mutual-TLS handshake for an answer that will
// not come.
func TestRenewerBacksOffFromACAWithoutRenewalInfo(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := &fakeCA{clock: newFakeClock(start), lifetime: 96 * time.Hour}
	info := func(context.Context, *Identity) (est.RenewalInfo, time.Duration, error) {
		return est.RenewalInfo{}, 0, enroll.ErrNoRenewalInfo
	}
	p := testPolicy
	p.InfoInterval = time.Hour
	src := rand.New(rand.NewPCG(3, 4))
	r := newRenewer(renewerParts{clock: ca.clock, rand: src.Float64, policy: func() RenewPolicy { return p },
		renew: ca.renew, rebootstrap: ca.rebootstrap, renewalInfo: info}, ca.issue("dev-1"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	tm := ca.clock.next(t)
	if d := tm.at.Sub(ca.clock.Now()); d < 54*time.Minute || d > 66*time.Minute {
		t.Fatalf("first check armed %v ahead, want the 1h interval ±10%%", d)
	}
	ca.clock.fire(tm)
	tm = ca.clock.next(t)
	if d := tm.at.Sub(ca.clock.Now()); d < 21*time.Hour || d > 27*time.Hour {
		t.Fatalf("after a 404 the next check is %v ahead, want about a day", d)
	}
}
