// Package lifecycle holds the agent's certificate-lifecycle decisions as
// pure functions of time: when to renew, how long to back off, whether the
// device clock can be believed and how far it is off. The daemon calls them
// with an injected clock, so tests can run a year of renewals in a second.
package lifecycle

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/edgeagent/edgeagent/internal/backoff"
)

// RenewAt returns when to renew a certificate valid from notBefore to
// notAfter: at fraction of its lifetime, moved by up to ±jitter of the
// lifetime (r in [0,1) picks where), so a fleet enrolled together does not
// renew together. The result is never before notBefore and leaves at least
// a tenth of the lifetime before expiry.
func RenewAt(notBefore, notAfter time.Time, fraction, jitter, r float64) time.Time {
	life := notAfter.Sub(notBefore)
	if life <= 0 {
		return notBefore
	}
	f := fraction + jitter*(2*r-1)
	f = math.Max(0, math.Min(f, 0.9))
	return notBefore.Add(time.Duration(f * float64(life)))
}

// MinRenewGap is the least share of the usable lifetime that passes
// between obtaining a certificate and renewing it, whatever the fraction and
// jitter: a renewal never follows its issuance back to back.
const MinRenewGap = 0.1

// Schedule returns when to renew a certificate valid from notBefore to
// notAfter that this device obtained at obtained (its clock, corrected).
// The lifetime counts from the later of notBefore and obtained: a CA may
// back-date NotBefore by minutes or hours for clock skew, and counting from
// NotBefore would then schedule the renewal right after issuance, and the
// next one right after that (a renewal storm). An obtained time outside the
// validity (unknown, or from a clock that was wrong then) is ignored.
func Schedule(notBefore, notAfter, obtained time.Time, fraction, jitter, r float64) time.Time {
	start := notBefore
	if obtained.After(notBefore) && obtained.Before(notAfter) {
		start = obtained
	}
	at := RenewAt(start, notAfter, fraction, jitter, r)
	if min := start.Add(time.Duration(MinRenewGap * float64(notAfter.Sub(start)))); at.Before(min) {
		at = min
	}
	return at
}

// Backoff is the wait before renewal retry number attempt; see
// backoff.Delay.
func Backoff(attempt int, min, max time.Duration, r float64) time.Duration {
	return backoff.Delay(attempt, min, max, r)
}

// Phase is where an identity is in its life.
type Phase int

// Phases, in order.
const (
	Valid    Phase = iota // before the renewal time
	Renewing              // past the renewal time, before expiry
	Expired               // past NotAfter
)

func (p Phase) String() string {
	switch p {
	case Valid:
		return "valid"
	case Renewing:
		return "renewing"
	case Expired:
		return "expired"
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// PhaseAt classifies now against a certificate's renewal time and expiry.
func PhaseAt(now, renewAt, notAfter time.Time) Phase {
	switch {
	case !now.Before(notAfter):
		return Expired
	case !now.Before(renewAt):
		return Renewing
	}
	return Valid
}

// NextRetry is when to try a failed renewal again: after the backoff, but
// never later than just before expiry (a last attempt while the certificate
// still authenticates us).
func NextRetry(now, notAfter time.Time, wait time.Duration) time.Time {
	t := now.Add(wait)
	lastChance := notAfter.Add(-time.Second)
	if t.After(lastChance) && now.Before(lastChance) {
		return lastChance
	}
	return t
}

// ClockImplausible says why the device clock cannot be right, or "" when
// it may be. A device without an RTC boots in 1970: before the agent was
// built, before the current certificate became valid, or before the device
// obtained it (obtained, by the clock then; zero when unknown). Zero
// floors are ignored.
func ClockImplausible(now, buildTime, certNotBefore, obtained time.Time) string {
	if !buildTime.IsZero() && now.Before(buildTime) {
		return fmt.Sprintf("clock %s is before this agent was built (%s)", now.UTC().Format(time.RFC3339), buildTime.UTC().Format(time.RFC3339))
	}
	if !certNotBefore.IsZero() && now.Before(certNotBefore) {
		return fmt.Sprintf("clock %s is before the certificate became valid (%s)", now.UTC().Format(time.RFC3339), certNotBefore.UTC().Format(time.RFC3339))
	}
	if !obtained.IsZero() && now.Before(obtained) {
		return fmt.Sprintf("clock %s is before this device obtained its certificate (%s)", now.UTC().Format(time.RFC3339), obtained.UTC().Format(time.RFC3339))
	}
	return ""
}

// EstimateOffset estimates how far the server's clock is ahead of ours
// from an HTTP Date header (one-second resolution, truncated) received
// for a request sent at sent and answered at received, local time.
func EstimateOffset(sent, received, serverDate time.Time) time.Duration {
	mid := sent.Add(received.Sub(sent) / 2)
	// Date is truncated to the second: on average the true time was half a
	// second later.
	return serverDate.Add(500 * time.Millisecond).Sub(mid)
}

// Clock is the agent's corrected clock. Until it is calibrated it is the
// system clock. Calibration pins it to a time learned from the CA; from then
// on it advances by the monotonic clock, so a later step of the wall clock,
// such as NTP finally setting it, neither doubles the correction nor undoes
// it. Safe for concurrent use; its Now fits tls.Config.Time.
type Clock struct {
	base func() time.Time
	// mono is a monotonic reading: it never steps with the wall clock.
	mono func() time.Duration
	cal  atomic.Pointer[calibration]
	// measured is the last measured offset of the CA's clock from the
	// system clock; hasMeasured says whether there is one.
	measured    atomic.Int64
	hasMeasured atomic.Bool
}

// calibration says that the true time was at when mono read mono.
type calibration struct {
	at   time.Time
	mono time.Duration
}

// NewClock wraps base (time.Now when nil), the system wall clock.
func NewClock(base func() time.Time) *Clock {
	if base == nil {
		base = time.Now
	}
	start := time.Now()
	return &Clock{base: base, mono: func() time.Duration { return time.Since(start) }}
}

// Now returns the corrected time.
func (c *Clock) Now() time.Time {
	cal := c.cal.Load()
	if cal == nil {
		return c.base()
	}
	return cal.at.Add(c.mono() - cal.mono)
}

// System returns the uncorrected system clock.
func (c *Clock) System() time.Time { return c.base() }

// Calibrated reports whether a correction is in effect.
func (c *Clock) Calibrated() bool { return c.cal.Load() != nil }

// SetOffset calibrates the clock so that it reads the system clock plus d
// now, and advances by the monotonic clock from here.
func (c *Clock) SetOffset(d time.Duration) {
	c.cal.Store(&calibration{at: c.base().Round(0).Add(d), mono: c.mono()})
}

// Offset returns the correction in effect now: corrected minus system
// time (0 when not calibrated).
func (c *Clock) Offset() time.Duration {
	if c.cal.Load() == nil {
		return 0
	}
	return c.Now().Round(0).Sub(c.base().Round(0))
}

// Measured returns the CA's clock minus the system clock as last measured
// by Observe, and whether anything was measured yet.
func (c *Clock) Measured() (time.Duration, bool) {
	return time.Duration(c.measured.Load()), c.hasMeasured.Load()
}

// Observe takes one server time sample: a request sent and answered at
// sent and received on this clock (corrected), and the server's Date. It
// records the measured skew and, as Correct decides, (re)calibrates. It
// returns whether the correction changed.
func (c *Clock) Observe(sent, received, serverDate time.Time, systemImplausible bool) bool {
	residual := EstimateOffset(sent, received, serverDate)
	current := c.Offset()
	c.measured.Store(int64(current + residual))
	c.hasMeasured.Store(true)
	off, apply := Correct(current, c.Calibrated(), systemImplausible, residual)
	if apply {
		c.SetOffset(off)
	}
	return apply
}

// ResidualTolerance is how far the corrected clock may drift from a new
// server sample before the correction is updated: Date has a one-second
// resolution, so smaller residuals are noise.
const ResidualTolerance = 2 * time.Second

// Correct decides the correction after a server sample that found the
// corrected clock residual behind the server (current is the correction in
// effect). The system clock is corrected only when it is implausible, or
// once a correction is in effect (it keeps tracking the server); a
// plausible, uncorrected system clock is left alone: its skew is reported,
// not applied.
func Correct(current time.Duration, calibrated, systemImplausible bool, residual time.Duration) (time.Duration, bool) {
	if !systemImplausible && !calibrated {
		return 0, false
	}
	if calibrated && residual.Abs() < ResidualTolerance {
		return current, false
	}
	return current + residual, true
}
