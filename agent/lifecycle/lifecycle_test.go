package lifecycle

import (
	"math/rand"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestRenewAt(t *testing.T) {
	day := 24 * time.Hour
	cases := []struct {
		name       string
		life       time.Duration
		frac, jit  float64
		r          float64
		wantOffset time.Duration
	}{
		{"two thirds, no jitter", 3 * day, 2.0 / 3, 0, 0.5, 2 * day},
		{"jitter low end", 100 * time.Second, 0.5, 0.1, 0, 40 * time.Second},
		{"jitter high end", 100 * time.Second, 0.5, 0.1, 1, 60 * time.Second},
		{"clamped to 90%", 100 * time.Second, 0.95, 0.1, 1, 90 * time.Second},
		{"clamped to start", 100 * time.Second, 0.05, 0.1, 0, 0},
		{"20s cert", 20 * time.Second, 0.66, 0.05, 0.5, 13200 * time.Millisecond},
	}
	for _, c := range cases {
		got := RenewAt(t0, t0.Add(c.life), c.frac, c.jit, c.r)
		if d := got.Sub(t0); d != c.wantOffset {
			t.Errorf("%s: renew at +%v, want +%v", c.name, d, c.wantOffset)
		}
	}
	if got := RenewAt(t0, t0.Add(-time.Hour), 0.66, 0, 0.5); !got.Equal(t0) {
		t.Errorf("inverted validity: %v", got)
	}
}

func TestPhaseAndRetry(t *testing.T) {
	renew, exp := t0.Add(time.Hour), t0.Add(2*time.Hour)
	for _, c := range []struct {
		now  time.Time
		want Phase
	}{{t0, Valid}, {renew, Renewing}, {exp.Add(-time.Nanosecond), Renewing}, {exp, Expired}} {
		if got := PhaseAt(c.now, renew, exp); got != c.want {
			t.Errorf("at %v: %v, want %v", c.now.Sub(t0), got, c.want)
		}
	}
	if got := NextRetry(exp.Add(-10*time.Second), exp, time.Minute); !got.Equal(exp.Add(-time.Second)) {
		t.Errorf("retry past expiry not pulled in: %v", got.Sub(t0))
	}
	if got := NextRetry(t0, exp, time.Minute); !got.Equal(t0.Add(time.Minute)) {
		t.Errorf("normal retry moved: %v", got.Sub(t0))
	}
}

// TestAYearOfRenewals simulates a year of 24h certificates renewed at 2/3
// with jitter, where one renewal in five fails and is retried with backoff:
// every renewal lands inside the certificate's validity.
func TestAYearOfRenewals(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	now := t0
	nb, na := now.Add(-5*time.Minute), now.Add(24*time.Hour)
	renewals, failures := 0, 0
	for now.Before(t0.AddDate(1, 0, 0)) {
		at := RenewAt(nb, na, 0.66, 0.05, rng.Float64())
		if at.Before(now) {
			at = now
		}
		now = at
		for attempt := 0; ; attempt++ {
			if PhaseAt(now, at, na) == Expired {
				t.Fatalf("certificate expired at %v before renewal", na)
			}
			if rng.Intn(5) == 0 {
				failures++
				now = NextRetry(now, na, Backoff(attempt, 10*time.Second, 30*time.Minute, rng.Float64()))
				continue
			}
			break
		}
		if !now.Before(na) || now.Before(nb) {
			t.Fatalf("renewed at %v outside [%v, %v)", now, nb, na)
		}
		renewals++
		nb, na = now.Add(-5*time.Minute), now.Add(24*time.Hour)
	}
	if renewals < 500 || failures == 0 {
		t.Fatalf("%d renewals, %d failures: simulation did not exercise the schedule", renewals, failures)
	}
}

func TestClockImplausible(t *testing.T) {
	build := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	epoch := time.Unix(0, 0)
	cases := []struct {
		name    string
		now, nb time.Time
		wantMsg bool
	}{
		{"1970", epoch, time.Time{}, true},
		{"before cert", build.Add(time.Hour), build.Add(2 * time.Hour), true},
		{"fine", build.Add(48 * time.Hour), build.Add(time.Hour), false},
		{"no cert yet", build.Add(time.Hour), time.Time{}, false},
	}
	for _, c := range cases {
		if got := ClockImplausible(c.now, build, c.nb); (got != "") != c.wantMsg {
			t.Errorf("%s: %q", c.name, got)
		}
	}
}

func TestEstimateOffsetAndClock(t *testing.T) {
	epoch := time.Unix(0, 0)
	server := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	off := EstimateOffset(epoch, epoch.Add(200*time.Millisecond), server)
	want := server.Sub(epoch) + 400*time.Millisecond
	if off != want {
		t.Fatalf("offset %v, want %v", off, want)
	}
	c := NewClock(func() time.Time { return epoch.Add(time.Second) })
	c.SetOffset(off)
	if got := c.Now(); got.Sub(server) != 1400*time.Millisecond {
		t.Fatalf("corrected clock %v", got)
	}
	if c.Offset() != off {
		t.Fatal("offset not reported")
	}
}
