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
		name              string
		now, nb, obtained time.Time
		wantMsg           bool
	}{
		{"1970", epoch, time.Time{}, time.Time{}, true},
		{"before cert", build.Add(time.Hour), build.Add(2 * time.Hour), time.Time{}, true},
		{"fine", build.Add(48 * time.Hour), build.Add(time.Hour), build.Add(2 * time.Hour), false},
		{"no cert yet", build.Add(time.Hour), time.Time{}, time.Time{}, false},
		// A certificate valid since last year, renewed yesterday: a clock
		// inside its validity but before the renewal is still wrong.
		{"before it was obtained", build.Add(48 * time.Hour), build.Add(time.Hour), build.Add(72 * time.Hour), true},
		{"when it was obtained", build.Add(72 * time.Hour), build.Add(time.Hour), build.Add(72 * time.Hour), false},
	}
	for _, c := range cases {
		if got := ClockImplausible(c.now, build, c.nb, c.obtained); (got != "") != c.wantMsg {
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
	c.mono = func() time.Duration { return 0 }
	c.SetOffset(off)
	if got := c.Now(); got.Sub(server) != 1400*time.Millisecond {
		t.Fatalf("corrected clock %v", got)
	}
	if c.Offset() != off {
		t.Fatal("offset not reported")
	}
}

// TestSchedule: the renewal point counts from the later of NotBefore and
// when the certificate was obtained, so a heavily back-dated certificate
// is not renewed right after issuance.
func TestSchedule(t *testing.T) {
	h := time.Hour
	cases := []struct {
		name      string
		nb, na    time.Duration // from t0 (the moment of issuance)
		obtained  time.Duration // from t0; -1 means unknown
		frac, jit float64
		r         float64
		want      time.Duration // from t0
	}{
		{"normal 5m back-date", -5 * time.Minute, 24 * h, 0, 2.0 / 3, 0, 0.5, 16 * h},
		{"back-dated by half the lifetime", -12 * h, 12 * h, 0, 0.66, 0, 0.5, 7*h + 55*time.Minute + 12*time.Second},
		// Counting from NotBefore would renew 4h before issuance.
		{"back-dated by 20h", -20 * h, 4 * h, 0, 0.66, 0, 0.5, 2*h + 38*time.Minute + 24*time.Second},
		{"unknown obtained time falls back to NotBefore", -5 * time.Minute, 24 * h, -1, 0.5, 0, 0.5, 11*h + 57*time.Minute + 30*time.Second},
		{"obtained after expiry (bad clock then) ignored", 0, 10 * h, 20 * h, 0.5, 0, 0.5, 5 * h},
		{"low fraction and jitter floor at the minimum gap", -20 * h, 4 * h, 0, 0.11, 0.2, 0, 24 * time.Minute},
		{"20s certificate, 5s back-date", -5 * time.Second, 15 * time.Second, 0, 0.66, 0.05, 0.5, 9900 * time.Millisecond},
	}
	for _, c := range cases {
		obtained := t0.Add(c.obtained)
		if c.obtained < 0 {
			obtained = time.Time{}
		}
		got := Schedule(t0.Add(c.nb), t0.Add(c.na), obtained, c.frac, c.jit, c.r)
		if d := got.Sub(t0); d != c.want {
			t.Errorf("%s: renew at %v after issuance, want %v", c.name, d, c.want)
		}
		if c.obtained >= 0 && c.obtained < c.na && !got.After(obtained) {
			t.Errorf("%s: renewal at %v not after obtaining the certificate", c.name, got.Sub(t0))
		}
	}
}

// TestNoRenewalStormWithHeavyBackdate renews, for a simulated day, 1-hour
// certificates a CA back-dates by 55 minutes: counted from NotBefore the
// renewal point would always be in the past at issuance (one renewal per
// loop turn); counted from issuance, renewals are at least a tenth of the
// usable lifetime apart.
func TestNoRenewalStormWithHeavyBackdate(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	now, renewals := t0, 0
	for now.Before(t0.Add(24 * time.Hour)) {
		nb, na := now.Add(-55*time.Minute), now.Add(time.Hour)
		at := Schedule(nb, na, now, 0.66, 0.05, rng.Float64())
		if gap := at.Sub(now); gap < 6*time.Minute {
			t.Fatalf("renewal %v after issuance", gap)
		}
		now = at
		renewals++
	}
	if renewals > 40 {
		t.Fatalf("%d renewals of 1-hour certificates in a day", renewals)
	}
}

// TestCorrect: when the clock is corrected from a server sample.
func TestCorrect(t *testing.T) {
	y := 56 * 365 * 24 * time.Hour
	for _, c := range []struct {
		name                    string
		current                 time.Duration
		calibrated, implausible bool
		residual, want          time.Duration
		apply                   bool
	}{
		{"plausible clock, skew only reported", 0, false, false, 3 * time.Minute, 0, false},
		{"1970 clock corrected", 0, false, true, y, y, true},
		{"corrected clock within tolerance kept", y, true, true, time.Second, y, false},
		{"corrected clock drifted, refined", y, true, true, 5 * time.Second, y + 5*time.Second, true},
		{"system clock fixed by NTP later: follows the server", y, true, false, -y, 0, true},
	} {
		got, apply := Correct(c.current, c.calibrated, c.implausible, c.residual)
		if got != c.want || apply != c.apply {
			t.Errorf("%s: (%v, %v), want (%v, %v)", c.name, got, apply, c.want, c.apply)
		}
	}
}

// TestClockSurvivesWallClockStep: once calibrated, the clock advances by
// the monotonic reading, so NTP setting the wall clock later neither
// doubles the correction nor undoes it.
func TestClockSurvivesWallClockStep(t *testing.T) {
	wall := t0
	var mono time.Duration
	c := NewClock(func() time.Time { return wall })
	c.mono = func() time.Duration { return mono }
	c.SetOffset(time.Hour)
	if got := c.Now(); !got.Equal(t0.Add(time.Hour)) {
		t.Fatalf("calibrated clock reads %v", got)
	}
	wall, mono = wall.Add(time.Second), time.Second
	before := c.Now()
	if got := before; !got.Equal(t0.Add(time.Hour + time.Second)) {
		t.Fatalf("a second later the clock reads %v", got)
	}
	wall = wall.Add(24 * time.Hour) // the wall clock steps a day
	if after := c.Now(); !after.Equal(before) {
		t.Fatalf("corrected clock moved %v when the wall clock stepped", after.Sub(before))
	}
	if off := c.Offset(); off != -23*time.Hour {
		t.Fatalf("offset after the step %v, want -23h", off)
	}
	if !c.Calibrated() {
		t.Fatal("not calibrated")
	}
}
