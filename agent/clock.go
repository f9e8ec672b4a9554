package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/edgeagent/edgeagent/agent/lifecycle"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// clockFloor gives the earliest plausible times: the build time, the
// current certificate's NotBefore, and when this device obtained it
// (identity.json's enrolled_at or renewed_at, by the clock then). The last
// one is what keeps the floor up to date: a certificate valid for a year
// says little about today, its renewal yesterday says more.
//
// The floor is all that bounds a time reported by an EST server whose
// certificate chain verifies: a server certificate that was once valid is
// trusted for any time inside its validity that is not before the floor,
// so its key, even long after it expired, could set the clock back as far
// as the floor allows (see enroll.ServerTime).
func (d *Daemon) clockFloor(id *Identity) (build, notBefore, obtained time.Time) {
	return floorTimes(d.o.BuildTime, id)
}

// floorTimes is clockFloor for an agent built at build; id may be nil.
func floorTimes(build time.Time, id *Identity) (_, notBefore, obtained time.Time) {
	if id != nil {
		notBefore, obtained = id.NotBefore(), id.Obtained()
		if !obtained.IsZero() {
			obtained = obtained.Add(-obtainedSlack)
		}
	}
	return build, notBefore, obtained
}

// obtainedSlack is how much earlier than the recorded obtained time the
// clock may still be: that time was read from a clock that may itself have
// been corrected from a Date header (one-second resolution, a correction
// tolerance of lifecycle.ResidualTolerance), and a restart right after a
// renewal must not find the CA's answer "before" it.
const obtainedSlack = time.Minute

// floor is the latest of clockFloor's times.
func (d *Daemon) floor(id *Identity) time.Time {
	return latest(d.clockFloor(id))
}

// clockProblem says why the system clock is implausible, or "".
func (d *Daemon) clockProblem(id *Identity) string {
	b, nb, ob := d.clockFloor(id)
	return lifecycle.ClockImplausible(d.clock.System(), b, nb, ob)
}

// clockUsable reports whether the corrected clock is plausible: the system
// clock is, or a correction from the CA is in effect.
func (d *Daemon) clockUsable(id *Identity) bool {
	b, nb, ob := d.clockFloor(id)
	return lifecycle.ClockImplausible(d.clock.Now(), b, nb, ob) == ""
}

// observeDate is the EST clients' OnResponse hook: every EST answer's Date
// header measures the skew, and corrects the clock when it needs it. A
// sample passes the checks enroll.ServerTime makes before it counts (see
// dateSampleProblem): a bad one is logged and changes nothing.
func (d *Daemon) observeDate(r enroll.Response) {
	t, err := http.ParseTime(r.Date)
	if err != nil {
		return
	}
	id := d.current()
	if why := dateSampleProblem(t, d.floor(id), r.Chain); why != "" {
		d.log.Warn("ignoring the CA's Date header for the clock", "date", t.UTC().Format(time.RFC3339), "reason", why)
		return
	}
	problem := d.clockProblem(id)
	if d.clock.Observe(r.Sent, r.Received, t, problem != "") {
		d.log.Warn("clock corrected from the CA's Date header", "system_clock", d.clock.System().UTC().Format(time.RFC3339),
			"corrected", d.clock.Now().UTC().Format(time.RFC3339), "offset", d.clock.Offset().Round(time.Second).String(), "reason", problem)
	}
}

// dateSampleProblem says why a server's Date header seen on an EST answer
// must not set the clock, or "": the checks enroll.ServerTime makes. The
// date must be no earlier than floor, and the server chain verified in the
// handshake (leaf first; its signatures, host name and key usage were
// checked then) must be valid at the date, that is inside every
// certificate's validity. Without a verified chain there is nothing to
// trust the date with.
func dateSampleProblem(date, floor time.Time, chain []*x509.Certificate) string {
	if !floor.IsZero() && date.Before(floor) {
		return fmt.Sprintf("it is before %s, the earliest plausible time", floor.UTC().Format(time.RFC3339))
	}
	if len(chain) == 0 {
		return "no verified server certificate chain"
	}
	for _, c := range chain {
		if date.Before(c.NotBefore) || date.After(c.NotAfter) {
			return fmt.Sprintf("the server's chain is not valid then (%q is valid %s to %s)", c.Subject.CommonName,
				c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return ""
}

// latest returns the latest of a, b and c.
func latest(a, b, c time.Time) time.Time {
	for _, t := range []time.Time{b, c} {
		if t.After(a) {
			a = t
		}
	}
	return a
}

// calibrateClock learns the time from the EST server when the clock is
// implausible and no correction is in effect yet. Either roots (an
// identity's EST trust anchors) or pin (first contact) authenticates the
// server; see enroll.ServerTime for how this stays verified.
func (d *Daemon) calibrateClock(ctx context.Context, id *Identity, server, label string, roots *x509.CertPool, pin token.Pin) error {
	if d.clockUsable(id) {
		return nil
	}
	problem := d.clockProblem(id)
	err := calibrateFromCA(ctx, d.clock, d.log, problem, enroll.TimeOptions{Server: server, Label: label, Roots: roots, Pin: pin, NotBefore: d.floor(id)})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// calibrateFromCA reads the EST server's time (enroll.ServerTime, which
// verifies the server and the time against o.NotBefore) and corrects clock
// with it, for a system clock that is implausible for the reason problem.
func calibrateFromCA(ctx context.Context, clock *lifecycle.Clock, log *slog.Logger, problem string, o enroll.TimeOptions) error {
	log.Warn("system clock is implausible; asking the CA for the time", "reason", problem, "server", o.Server)
	o.Now = clock.Now
	s, err := enroll.ServerTime(ctx, o)
	if err != nil {
		return fmt.Errorf("the system clock is implausible (%s) and the CA's time could not be read: %w", problem, err)
	}
	clock.Observe(s.Sent, s.Received, s.Date, true)
	log.Warn("clock corrected from the CA's Date header", "system_clock", clock.System().UTC().Format(time.RFC3339),
		"corrected", clock.Now().UTC().Format(time.RFC3339), "offset", clock.Offset().Round(time.Second).String(), "reason", problem)
	return nil
}

// clockStatus describes the clock for status.
func (d *Daemon) clockStatus(id *Identity) string {
	problem := d.clockProblem(id)
	switch {
	case d.clock.Calibrated() && problem != "":
		return "corrected from the CA's time: system " + problem
	case d.clock.Calibrated():
		return "corrected from the CA's time"
	case problem != "":
		return "implausible, not corrected yet: " + problem
	}
	return "ok"
}
