package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/lifecycle"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// Clock is the renewer's time: the agent's (corrected) now, and timers
// that fire after a duration of it. A test supplies one it advances.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a Clock's timer.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// systemClock is Clock on the corrected wall clock and real timers: the
// corrected clock advances on the monotonic clock, so a timer of a
// duration of it fires when that much of it has passed.
type systemClock struct{ now func() time.Time }

func (c systemClock) Now() time.Time { return c.now() }
func (c systemClock) NewTimer(d time.Duration) Timer {
	return realTimer{time.NewTimer(d)}
}

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// ExpiredPolicy says what an expired identity does.
type ExpiredPolicy string

const (
	// ExpiredRebootstrap enrolls again with the enrollment token.
	ExpiredRebootstrap ExpiredPolicy = "rebootstrap"
	// ExpiredWait keeps retrying the renewal and waits for the operator.
	ExpiredWait ExpiredPolicy = "wait"
)

// RenewPolicy is when and how the renewer renews (renew.* of the config).
type RenewPolicy struct {
	// Fraction of the lifetime after which to renew, Jitter of the
	// lifetime around it.
	Fraction, Jitter float64
	// RetryMin and RetryMax bound the backoff after a failure.
	RetryMin, RetryMax time.Duration
	Expired            ExpiredPolicy
	Rekey              bool
	// InfoInterval is how often the CA's renewal-info is asked whether
	// to renew before the schedule (renew-now); 0: never.
	InfoInterval time.Duration
}

// PolicyOf reads renew.* (validated by config.Validate).
func PolicyOf(c config.Renew) RenewPolicy {
	return RenewPolicy{Fraction: c.Fraction, Jitter: c.Jitter, RetryMin: c.RetryMin, RetryMax: c.RetryMax,
		Expired: ExpiredPolicy(c.ExpiredPolicy), Rekey: c.Rekey, InfoInterval: c.RenewalInfoInterval}
}

// renewerParts are what a renewer works with.
type renewerParts struct {
	clock Clock
	rand  func() float64
	log   *slog.Logger
	// policy returns the running policy (a reload may change it; see
	// Reschedule).
	policy func() RenewPolicy
	// renew renews id over EST; rebootstrap enrolls again after expiry.
	renew       func(ctx context.Context, id *Identity, p RenewPolicy) (*Identity, error)
	rebootstrap func(ctx context.Context, id *Identity) (*Identity, error)
	// clockReady makes sure the clock can be trusted to schedule id (it
	// asks the CA when the system clock is implausible); nil: always.
	clockReady func(ctx context.Context, id *Identity) error
	// install makes a new identity live (TLS holder, uplink reconnects).
	install func(context.Context, *Identity)
	// renewalInfo asks the CA's renewal-info for id (the suggested
	// window, and how soon to ask again); nil: never asked.
	renewalInfo func(ctx context.Context, id *Identity) (est.RenewalInfo, time.Duration, error)
}

// renewer owns the renewal state machine: it schedules the renewal of the
// current identity, retries failures with capped, jittered backoff until
// expiry, follows the expired policy after it, renews on demand
// (coalesced), and installs each new identity. It owns the current
// identity and its renewal record; nothing else writes them.
type renewer struct {
	renewerParts

	demand     chan *renewCall
	reschedule chan struct{}

	mu    sync.Mutex
	id    *Identity
	state renewalState
	call  *renewCall // the renewal on demand being made, shared by every asker
}

// renewalState is the renewer's record, for status.
type renewalState struct {
	Next       time.Time
	LastResult string
	LastError  string
	LastAt     time.Time
	Renewals   map[string]uint64 // by result
	// Due is the scheduled renewal point of the current certificate; Next
	// is when the loop acts (Due, or a retry after a failure).
	Due time.Time
	// Expired, when set, says the certificate expired and what the
	// expired policy is doing about it.
	Expired string
	// Revoked, when set, says the CA revoked the device: terminal until
	// a new enrollment.
	Revoked string
}

// renewCall is one renewal on demand and its result.
type renewCall struct {
	done chan struct{}
	err  error
	// waiters counts the asks that joined it (status, tests).
	waiters int
	// abandoned: its asker gave up before the renewer took it, so no
	// renewal was made (set before done is closed).
	abandoned bool
}

func newRenewer(p renewerParts, id *Identity) *renewer {
	if p.rand == nil {
		p.rand = func() float64 { return 0.5 }
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	r := &renewer{renewerParts: p, id: id, demand: make(chan *renewCall), reschedule: make(chan struct{}, 1)}
	r.state.Renewals = map[string]uint64{}
	return r
}

// Current is the working identity.
func (r *renewer) Current() *Identity {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.id
}

// snapshot returns the identity and a copy of the renewal record.
func (r *renewer) snapshot() (*Identity, renewalState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.state
	st.Renewals = make(map[string]uint64, len(r.state.Renewals))
	for k, v := range r.state.Renewals {
		st.Renewals[k] = v
	}
	return r.id, st
}

// Reschedule has the loop recompute its schedule (new renew.* settings);
// it does not renew because of it: a fleet-wide config push must not send
// every device to the CA at once.
func (r *renewer) Reschedule() {
	select {
	case r.reschedule <- struct{}{}:
	default:
	}
}

// RenewNow renews at once and returns the result. Asks that arrive while
// one is being made share it: a burst of POST /v1/renew is one renewal.
func (r *renewer) RenewNow(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.mu.Lock()
		c := r.call
		mine := c == nil
		if mine {
			c = &renewCall{done: make(chan struct{})}
			r.call = c
		} else {
			c.waiters++
		}
		r.mu.Unlock()
		if mine {
			select {
			case r.demand <- c:
			case <-ctx.Done():
				// Nobody took it: end it for whoever joined, who
				// then asks again.
				c.abandoned = true
				r.finish(c, ctx.Err())
				return ctx.Err()
			}
		}
		select {
		case <-c.done:
			if !mine && c.abandoned && ctx.Err() == nil {
				continue // the asker it was made for gave up before it started
			}
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// finish records c's result and lets the next ask start a new renewal.
func (r *renewer) finish(c *renewCall, err error) {
	r.mu.Lock()
	if r.call == c {
		r.call = nil
	}
	r.mu.Unlock()
	c.err = err
	close(c.done)
}

// wake says why wait returned.
type wake int

const (
	wakeDone       wake = iota // ctx ended
	wakeDue                    // the timer fired
	wakeDemand                 // a renewal on demand
	wakeReschedule             // new settings: recompute, do not renew
)

// wait waits until at, a renewal on demand, or a reschedule.
func (r *renewer) wait(ctx context.Context, at time.Time) (*renewCall, wake) {
	t := r.clock.NewTimer(max(at.Sub(r.clock.Now()), 0))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, wakeDone
	case c := <-r.demand:
		return c, wakeDemand
	case <-r.reschedule:
		return nil, wakeReschedule
	case <-t.C():
		return nil, wakeDue
	}
}

// outcome sorts a renewal attempt's result, as spire's rotator does.
type outcome int

const (
	renewedOK      outcome = iota
	notExtended            // renewed, but the CA did not move NotAfter forward: wait the longest backoff
	revokedOutcome         // the CA revoked the device: terminal, no retry can succeed
	failedInTime           // failed, the certificate still valid: retry with backoff
	failedExpired          // failed, and the certificate has expired: the expired policy
	stoppedOutcome         // ctx ended
)

// classify is the pure decision on one attempt's result.
func classify(err error, ctxErr error, now, notAfter time.Time) outcome {
	switch {
	case err == nil:
		return renewedOK
	case enroll.IsNotExtended(err):
		return notExtended
	case enroll.IsDeviceRevoked(err):
		return revokedOutcome
	case ctxErr != nil:
		return stoppedOutcome
	case !now.Before(notAfter):
		return failedExpired
	}
	return failedInTime
}

// Run renews until ctx ends.
func (r *renewer) Run(ctx context.Context) error {
	attempt := 0
	var retryAt, due time.Time
	var dueFor *Identity
	var duePolicy RenewPolicy
	var infoAt time.Time // next renewal-info check; zero: to be drawn
	for {
		id := r.Current()
		leaf := id.Leaf()
		if r.clockReady != nil {
			if err := r.clockReady(ctx, id); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.log.Error("cannot correct the clock; renewal waits for it", "err", err)
				// The clock cannot say when the certificate is due:
				// retry on the backoff alone.
				p := r.policy()
				c, why := r.wait(ctx, r.clock.Now().Add(lifecycle.Backoff(attempt, p.RetryMin, p.RetryMax, r.rand())))
				attempt++
				if why == wakeDone {
					return nil
				}
				if c != nil {
					r.finish(c, err)
				}
				continue
			}
		}
		p := r.policy()
		// The jitter is drawn once per certificate (and policy), so
		// retries and status agree on when it was due.
		if dueFor != id || duePolicy != p {
			due = lifecycle.Schedule(leaf.NotBefore, leaf.NotAfter, id.Obtained(), p.Fraction, p.Jitter, r.rand())
			dueFor, duePolicy = id, p
		}
		next := due
		if !retryAt.IsZero() {
			next = retryAt
		}
		r.mu.Lock()
		r.state.Next, r.state.Due = next, due
		r.mu.Unlock()
		// Between renewals the CA may be asked whether it wants one
		// sooner; a pending retry has its own schedule.
		checkInfo := false
		if r.renewalInfo != nil && p.InfoInterval > 0 && retryAt.IsZero() {
			if infoAt.IsZero() {
				infoAt = r.clock.Now().Add(InfoDelay(p.InfoInterval, r.rand()))
			}
			checkInfo = infoAt.Before(next)
		}
		waitUntil := next
		if checkInfo {
			waitUntil = infoAt
		}
		c, why := r.wait(ctx, waitUntil)
		switch why {
		case wakeDone:
			return nil
		case wakeReschedule:
			continue
		}
		if why == wakeDue && checkInfo {
			infoAt = time.Time{}
			ri, again, err := r.renewalInfo(ctx, id)
			now := r.clock.Now()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				// Asked again after the interval, or, from a CA that has no
				// renewal-info at all, once a day: not a handshake every
				// interval for an answer that will not come.
				if errors.Is(err, enroll.ErrNoRenewalInfo) && p.InfoInterval < noRenewalInfoRetry {
					infoAt = now.Add(InfoDelay(noRenewalInfoRetry, r.rand()))
				}
				r.log.Debug("renewal-info check failed; keeping the schedule", "err", err)
				continue
			}
			if again > p.InfoInterval {
				infoAt = now.Add(InfoDelay(again, r.rand()))
			}
			if !RenewEarly(ri.SuggestedWindow, now, due) {
				continue
			}
			r.log.Info("the CA asks for a renewal now (renewal-info)", "window_start", ri.SuggestedWindow.Start, "due", due)
		}
		err := r.attempt(ctx, id, p)
		if c != nil {
			r.finish(c, err)
		}
		now := r.clock.Now()
		switch classify(err, ctx.Err(), now, leaf.NotAfter) {
		case renewedOK:
			attempt, retryAt = 0, time.Time{}
			r.setExpired("")
			continue
		case notExtended:
			// The new certificate is in use, but a CA that caps at its own
			// expiry answers the same until it is renewed itself: renewing
			// again on the schedule (due at once) would loop tens of
			// milliseconds apart.
			r.setExpired("")
			retryAt = lifecycle.NextRetry(now, r.Current().NotAfter(), lifecycle.Backoff(0, p.RetryMax, p.RetryMax, r.rand()))
			r.log.Warn("renewal did not extend the certificate; waiting the longest backoff", "err", err, "retry_at", retryAt)
			continue
		case stoppedOutcome:
			return nil
		case revokedOutcome:
			return r.revoked(ctx, id, err)
		case failedExpired:
			if r.onExpired(ctx, id, p, err) {
				attempt, retryAt = 0, time.Time{}
				continue
			}
		}
		retryAt = lifecycle.NextRetry(now, leaf.NotAfter, lifecycle.Backoff(attempt, p.RetryMin, p.RetryMax, r.rand()))
		attempt++
		if at := now.Add(enroll.RetryAfter(err)); at.After(retryAt) {
			retryAt = at // a CA shedding load said when to come back
		}
		r.log.Warn("renewal failed", "err", err, "retry_at", retryAt, "retryable", enroll.Retryable(err))
	}
}

// noRenewalInfoRetry is how often a CA without renewal-info is asked again
// (it may be upgraded).
const noRenewalInfoRetry = 24 * time.Hour

// RenewEarly is the pure decision on a renewal-info answer: renew now when
// the CA's suggested window has started and ends before the renewer's own
// due time (the CA wants it done sooner than the schedule would). A window
// that reaches past due leaves the jittered schedule alone, so the CA's
// usual window does not gather a fleet at its start; a window after due
// never delays a renewal.
func RenewEarly(w est.Window, now, due time.Time) bool {
	end := w.End
	if end.IsZero() {
		end = w.Start
	}
	return !w.Start.IsZero() && !now.Before(w.Start) && end.Before(due)
}

// InfoDelay is the jittered wait before the next renewal-info check:
// interval ± 10%, so a fleet started together does not ask together.
func InfoDelay(interval time.Duration, r float64) time.Duration {
	return interval - interval/10 + time.Duration(r*float64(interval/5))
}

// attempt renews id once and records the result.
func (r *renewer) attempt(ctx context.Context, id *Identity, p RenewPolicy) error {
	nid, err := r.renew(ctx, id, p)
	if err == nil {
		r.log.Info("certificate renewed", "serial", nid.Serial(), "not_before", nid.NotBefore(), "not_after", nid.NotAfter(), "rekey", p.Rekey)
		// Stored and in use (after a rekey it holds the new key), but a
		// CA that caps at its own expiry may not have extended it.
		r.set(ctx, nid)
		err = enroll.CheckExtended(id.Leaf(), nid.Chain)
	}
	res, msg := "ok", ""
	switch {
	case enroll.IsNotExtended(err):
		res, msg = "not_extended", err.Error()
	case enroll.IsDeviceRevoked(err):
		res, msg = "revoked", err.Error()
	case err != nil:
		res, msg = "error", err.Error()
	}
	r.mu.Lock()
	r.state.LastAt = r.clock.Now()
	r.state.LastResult, r.state.LastError = res, msg
	r.state.Renewals[res]++
	r.mu.Unlock()
	return err
}

// revoked is the terminal state after the CA revoked the device: no retry
// can succeed, so the renewer stops asking the CA and answers every
// renewal on demand with err until ctx ends. Only a new enrollment
// (edgeagent enroll --force with a new token, then a restart) recovers.
func (r *renewer) revoked(ctx context.Context, id *Identity, err error) error {
	r.mu.Lock()
	r.state.Revoked = "the CA revoked this device: renewal stopped; enroll it again with a new token (edgeagent enroll --force --token-file ...)"
	r.mu.Unlock()
	r.log.Error("the CA revoked this device: renewal stopped until it is enrolled again", "device_id", id.DeviceID, "err", err)
	for {
		select {
		case <-ctx.Done():
			return nil
		case c := <-r.demand:
			r.finish(c, err)
		case <-r.reschedule:
		}
	}
}

// onExpired follows the expired policy after a renewal failed on an
// expired certificate; true when a new identity is in place.
func (r *renewer) onExpired(ctx context.Context, id *Identity, p RenewPolicy, err error) bool {
	r.log.Error("certificate expired before it could be renewed", "device_id", id.DeviceID, "not_after", id.NotAfter(), "policy", p.Expired, "err", err)
	if p.Expired != ExpiredRebootstrap || r.rebootstrap == nil {
		r.setExpired(fmt.Sprintf("waiting for the operator or the CA; renewal retried with backoff (renew.expired_policy: %s)", p.Expired))
		return false
	}
	r.setExpired("re-enrolling with the enrollment token (renew.expired_policy: rebootstrap)")
	nid, berr := r.rebootstrap(ctx, id)
	if berr != nil {
		r.log.Error("re-enrollment after expiry failed; will retry", "err", berr)
		r.setExpired("re-enrollment failed, retrying with backoff (renew.expired_policy: rebootstrap): " + berr.Error())
		return false
	}
	r.log.Info("re-enrolled after expiry", "serial", nid.Serial(), "not_after", nid.NotAfter())
	r.mu.Lock()
	r.state.Renewals["rebootstrap"]++
	r.mu.Unlock()
	r.set(ctx, nid)
	r.setExpired("")
	return true
}

// set makes nid the working identity and installs it.
func (r *renewer) set(ctx context.Context, nid *Identity) {
	r.mu.Lock()
	r.id = nid
	r.mu.Unlock()
	if r.install != nil {
		r.install(ctx, nid)
	}
}

func (r *renewer) setExpired(msg string) {
	r.mu.Lock()
	r.state.Expired = msg
	r.mu.Unlock()
}

// AskRenewalInfo asks the CA that issued cur when it suggests renewing
// (GET renewal-info with cur as the client certificate), at server when
// it is set (renew.server: a CA that moved), else where cur enrolled.
func AskRenewalInfo(ctx context.Context, cur *Identity, server string, now func() time.Time, postQuantum bool) (est.RenewalInfo, time.Duration, error) {
	tlsCert := cur.TLSCertificate()
	if server == "" {
		server = cur.Server
	}
	client, err := enroll.New(enroll.Options{
		Server:         server,
		Label:          cur.Label,
		Roots:          cur.ESTPool(),
		Intermediates:  cur.CABundle,
		Certificate:    func() *tls.Certificate { return tlsCert },
		Time:           now,
		PostQuantumTLS: postQuantum,
	})
	if err != nil {
		return est.RenewalInfo{}, 0, fmt.Errorf("renewal-info: %w", err)
	}
	defer client.CloseIdleConnections()
	return client.RenewalInfo(ctx)
}
