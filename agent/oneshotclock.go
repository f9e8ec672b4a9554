package agent

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"github.com/edgeagent/edgeagent/agent/lifecycle"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// oneShotClock is the clock of a one-shot enroll or renew (edgeagent enroll
// and renew, typically a first-boot script on a board without an RTC): the
// system clock system when it is plausible, else that clock corrected from
// the EST server's time, read and checked as the daemon does; id, the
// identity being renewed or replaced (nil for none), raises the floor as
// the daemon's does (see
// Daemon.calibrateClock and enroll.ServerTime). Without it the first
// handshake on a device that booted in 1970 fails with a certificate that
// is "not yet valid", and the identity would record 1970 as its time.
func oneShotClock(ctx context.Context, system func() time.Time, log *slog.Logger, server, label string, roots *x509.CertPool, pin token.Pin,
	timeout time.Duration, build time.Time, id *Identity) (func() time.Time, error) {
	clock := lifecycle.NewClock(system)
	b, nb, ob := floorTimes(build, id)
	why := lifecycle.ClockImplausible(clock.System(), b, nb, ob)
	if why == "" {
		return clock.Now, nil
	}
	err := calibrateFromCA(ctx, clock, log, why, enroll.TimeOptions{Server: server, Label: label, Roots: roots, Pin: pin,
		NotBefore: latest(b, nb, ob), Timeout: timeout})
	if err != nil {
		return nil, err
	}
	log.Warn("running on the CA's time: set the system clock (NTP) before the daemon starts, or it will correct it the same way")
	return clock.Now, nil
}
