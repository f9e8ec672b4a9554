package agent

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/poll"
)

// fakeCA issues identities on the fake clock: lifetime long, refusing
// while down, and refusing to renew an expired identity (over mTLS an
// expired certificate does not authenticate).
type fakeCA struct {
	clock    *fakeClock
	lifetime time.Duration

	mu       sync.Mutex
	down     bool
	serial   int64
	attempts []time.Time // every renewal attempt, by the fake clock
	reboots  int
}

var errCADown = errors.New("fake CA: connection refused")

func (ca *fakeCA) issue(deviceID string) *Identity {
	ca.serial++
	now := ca.clock.Now()
	leaf := &x509.Certificate{SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: deviceID},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(ca.lifetime)}
	return &Identity{Meta: Meta{DeviceID: deviceID, Server: "https://ca", EnrolledAt: now, RenewedAt: now}, Chain: []*x509.Certificate{leaf}}
}

func (ca *fakeCA) renew(_ context.Context, id *Identity, _ RenewPolicy) (*Identity, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.clock.Now()
	ca.attempts = append(ca.attempts, now)
	switch {
	case ca.down:
		return nil, errCADown
	case !now.Before(id.NotAfter()):
		return nil, errors.New("fake CA: 401 client_cert_required: certificate expired")
	}
	return ca.issue(id.DeviceID), nil
}

func (ca *fakeCA) rebootstrap(_ context.Context, id *Identity) (*Identity, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.down {
		return nil, errCADown
	}
	ca.reboots++
	return ca.issue(id.DeviceID), nil
}

func (ca *fakeCA) setDown(down bool) {
	ca.mu.Lock()
	ca.down = down
	ca.mu.Unlock()
}

// startRenewer runs a renewer on the fake clock and CA until the test
// ends.
func startRenewer(t *testing.T, ca *fakeCA, p RenewPolicy) *renewer {
	t.Helper()
	src := rand.New(rand.NewPCG(1, 2))
	r := newRenewer(renewerParts{clock: ca.clock, rand: src.Float64, policy: func() RenewPolicy { return p },
		renew: ca.renew, rebootstrap: ca.rebootstrap}, ca.issue("dev-1"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("renewer: %v", err)
		}
	})
	return r
}

var testPolicy = RenewPolicy{Fraction: 0.66, Jitter: 0.05, RetryMin: 10 * time.Second, RetryMax: 30 * time.Minute, Expired: ExpiredWait}

// TestRenewerAYearOfRenewals: a year of 24-hour certificates on the fake
// clock: every renewal comes at 0.66 +- 0.05 of the lifetime, and the
// identity never expires.
func TestRenewerAYearOfRenewals(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := &fakeCA{clock: newFakeClock(start), lifetime: 24 * time.Hour}
	r := startRenewer(t, ca, testPolicy)
	end := start.AddDate(1, 0, 0)
	prev := r.Current()
	renewals := 0
	tm := ca.clock.next(t)
	for ca.clock.Now().Before(end) {
		if share := float64(tm.at.Sub(prev.Obtained())) / float64(ca.lifetime); share < 0.61-1e-9 || share > 0.71+1e-9 {
			t.Fatalf("renewal %d due at %.3f of the lifetime", renewals, share)
		}
		ca.clock.fire(tm)
		if !ca.clock.Now().Before(prev.NotAfter()) {
			t.Fatalf("renewal %d at %s, after the certificate expired at %s", renewals, ca.clock.Now(), prev.NotAfter())
		}
		// The loop renews, then arms the next timer: after that the
		// identity is the new one.
		tm = ca.clock.next(t)
		cur := r.Current()
		if cur == prev {
			t.Fatalf("renewal %d did not replace the identity", renewals)
		}
		prev = cur
		renewals++
	}
	_, st := r.snapshot()
	if min := 365 * 100 / 71; renewals < min || st.Renewals["ok"] != uint64(renewals) || st.Renewals["error"] != 0 || st.Expired != "" {
		t.Fatalf("%d renewals in a year (want at least %d), record %+v", renewals, min, st)
	}
}

// TestRenewerCAOutageAndExpiry: the CA goes down just before the renewal
// is due and stays down past expiry. The renewer retries with capped
// backoff, makes a last attempt just before expiry, says the identity
// expired and what the policy does; when the CA is back, rebootstrap
// enrolls again and wait keeps waiting for the operator.
func TestRenewerCAOutageAndExpiry(t *testing.T) {
	for _, tc := range []struct {
		policy      ExpiredPolicy
		recovers    bool
		wantExpired string
	}{
		{ExpiredWait, false, "renew.expired_policy: wait"},
		{ExpiredRebootstrap, true, "renew.expired_policy: rebootstrap"},
	} {
		t.Run(string(tc.policy), func(t *testing.T) {
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			ca := &fakeCA{clock: newFakeClock(start), lifetime: 24 * time.Hour}
			p := testPolicy
			p.Expired = tc.policy
			r := startRenewer(t, ca, p)
			first := r.Current()
			ca.setDown(true)
			tm := ca.clock.next(t)
			for ca.clock.Now().Before(first.NotAfter().Add(6 * time.Hour)) {
				before := ca.clock.Now()
				if wait := tm.at.Sub(before); wait > p.RetryMax && len(ca.attempts) > 0 {
					t.Fatalf("retry %d waits %s, over renew.retry_max %s", len(ca.attempts), wait, p.RetryMax)
				}
				ca.clock.fire(tm)
				tm = ca.clock.next(t)
			}
			if r.Current() != first {
				t.Fatal("the identity changed while the CA was down")
			}
			lastChance := false
			for _, at := range ca.attempts {
				lastChance = lastChance || !at.Before(first.NotAfter().Add(-time.Second)) && at.Before(first.NotAfter())
			}
			_, st := r.snapshot()
			if !lastChance || !strings.Contains(st.Expired, tc.wantExpired) || st.Renewals["error"] == 0 || st.LastResult != "error" {
				t.Fatalf("last attempt before expiry %v, record %+v", lastChance, st)
			}
			ca.setDown(false)
			ca.clock.fire(tm)
			ca.clock.next(t)
			_, st = r.snapshot()
			if got := r.Current() != first; got != tc.recovers {
				t.Fatalf("new identity after the outage: %v, want %v (record %+v)", got, tc.recovers, st)
			}
			if tc.recovers && (ca.reboots != 1 || st.Expired != "" || st.Renewals["rebootstrap"] != 1) {
				t.Fatalf("after re-enrolling: %d re-enrollments, record %+v", ca.reboots, st)
			}
			if !tc.recovers && (ca.reboots != 0 || !strings.Contains(st.Expired, tc.wantExpired)) {
				t.Fatalf("wait policy: %d re-enrollments, record %+v", ca.reboots, st)
			}
		})
	}
}

// TestRenewerRenewNowIsCoalesced: asks that arrive while a renewal on
// demand is under way share it: one EST exchange, one result for all.
func TestRenewerRenewNowIsCoalesced(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := &fakeCA{clock: newFakeClock(start), lifetime: 24 * time.Hour}
	started, release := make(chan struct{}), make(chan struct{})
	var calls int
	var mu sync.Mutex
	var once sync.Once
	r := newRenewer(renewerParts{clock: ca.clock, policy: func() RenewPolicy { return testPolicy },
		renew: func(ctx context.Context, id *Identity, p RenewPolicy) (*Identity, error) {
			mu.Lock()
			calls++
			mu.Unlock()
			once.Do(func() { close(started) })
			<-release
			return ca.renew(ctx, id, p)
		}}, ca.issue("dev-1"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	ca.clock.next(t)
	const asks = 8
	errs := make(chan error, asks)
	go func() { errs <- r.RenewNow(context.Background()) }()
	<-started
	for i := 1; i < asks; i++ {
		go func() { errs <- r.RenewNow(context.Background()) }()
	}
	poll.Until(t, 30*time.Second, "every ask joined the renewal under way", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.call != nil && r.call.waiters == asks-1
	})
	close(release)
	for i := 0; i < asks; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if calls != 1 {
		t.Fatalf("%d renewals for %d asks", calls, asks)
	}
	// A cancelled ask returns its context's error and leaves the loop
	// able to serve the next one.
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if err := r.RenewNow(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ask: %v", err)
	}
}

// TestRenewerRescheduleDoesNotRenew: new renewal settings move the
// renewal time; they do not renew.
func TestRenewerRescheduleDoesNotRenew(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := &fakeCA{clock: newFakeClock(start), lifetime: 24 * time.Hour}
	var mu sync.Mutex
	p := testPolicy
	p.Jitter = 0
	r := newRenewer(renewerParts{clock: ca.clock, policy: func() RenewPolicy { mu.Lock(); defer mu.Unlock(); return p }, renew: ca.renew}, ca.issue("dev-1"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	first := ca.clock.next(t)
	mu.Lock()
	p.Fraction = 0.5
	mu.Unlock()
	r.Reschedule()
	second := ca.clock.next(t)
	if !second.at.Before(first.at) || len(ca.attempts) != 0 {
		t.Fatalf("after reschedule: due %s (was %s), %d renewals", second.at, first.at, len(ca.attempts))
	}
}

// TestClassify table-tests the one decision on an attempt's result.
func TestClassify(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	fail := errors.New("x")
	for _, c := range []struct {
		err, ctxErr error
		notAfter    time.Time
		want        outcome
	}{
		{nil, nil, now.Add(time.Hour), renewedOK},
		{nil, context.Canceled, now.Add(-time.Hour), renewedOK},
		{fail, context.Canceled, now.Add(time.Hour), stoppedOutcome},
		{fail, nil, now.Add(time.Hour), failedInTime},
		{fail, nil, now, failedExpired},
		{fail, nil, now.Add(-time.Hour), failedExpired},
	} {
		if got := classify(c.err, c.ctxErr, now, c.notAfter); got != c.want {
			t.Errorf("classify(%v, %v, not after %s) = %d, want %d", c.err, c.ctxErr, c.notAfter, got, c.want)
		}
	}
}
