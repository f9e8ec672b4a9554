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
// built, or before the current certificate became valid.
func ClockImplausible(now, buildTime, certNotBefore time.Time) string {
	if !buildTime.IsZero() && now.Before(buildTime) {
		return fmt.Sprintf("clock %s is before this agent was built (%s)", now.UTC().Format(time.RFC3339), buildTime.UTC().Format(time.RFC3339))
	}
	if !certNotBefore.IsZero() && now.Before(certNotBefore) {
		return fmt.Sprintf("clock %s is before the certificate became valid (%s)", now.UTC().Format(time.RFC3339), certNotBefore.UTC().Format(time.RFC3339))
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

// Clock is the agent's corrected clock: the system clock plus an offset
// learned from the CA when the system clock is implausible. Safe for
// concurrent use; its Now fits tls.Config.Time.
type Clock struct {
	base   func() time.Time
	offset atomic.Int64
}

// NewClock wraps base (time.Now when nil).
func NewClock(base func() time.Time) *Clock {
	if base == nil {
		base = time.Now
	}
	return &Clock{base: base}
}

// Now returns the corrected time.
func (c *Clock) Now() time.Time { return c.base().Add(time.Duration(c.offset.Load())) }

// SetOffset sets the correction added to the system clock.
func (c *Clock) SetOffset(d time.Duration) { c.offset.Store(int64(d)) }

// Offset returns the current correction (the skew reported in status).
func (c *Clock) Offset() time.Duration { return time.Duration(c.offset.Load()) }
