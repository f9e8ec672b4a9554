package agent

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/lifecycle"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/agent/sdnotify"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/uplink"
	uhttps "github.com/edgeagent/edgeagent/uplink/https"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// Options configure a daemon run.
type Options struct {
	Config config.Config
	// Getenv reads EDGEAGENT_TOKEN; nil means os.Getenv.
	Getenv func(string) string
	Logger *slog.Logger
	// Now is the system clock; nil means time.Now. The daemon corrects it
	// for skew (lifecycle.Clock).
	Now func() time.Time
	// Rand returns floats in [0,1) for jitter; nil means math/rand/v2.
	Rand func() float64
	// BuildTime is the earliest plausible time for the clock check.
	BuildTime time.Time
	// Ready, if set, is called once every component has started.
	Ready func()
	// Reload delivers new configurations to apply while running (SIGHUP);
	// see Daemon.Reload.
	Reload <-chan config.Config
	// Reloaded, if set, is called with the configuration now running
	// after a reload was applied (the caller applies log.level).
	Reloaded func(config.Config)
}

// Daemon is a running agent.
type Daemon struct {
	o Options
	// boot is the configuration the daemon started with, never changed:
	// restart-only keys (device_id, state_dir, keystore, key_algorithm,
	// api, metrics, spool) are read from it without the lock, from any
	// goroutine.
	boot config.Config
	// cfg is the running configuration; Reload replaces it under mu, so
	// read it through config() or renewSettings().
	cfg   config.Config
	log   *slog.Logger
	clock *lifecycle.Clock
	ks    keystore.Keystore

	mu       sync.Mutex
	ident    *Identity
	renewal  renewalState
	holder   *uplink.Identity
	renewNow chan chan error
	// reschedule wakes the renewal loop after a reload changed renew.*.
	reschedule chan struct{}
	// restart* hand reloaded components to their supervisors.
	restartHTTPS, restartMQTT, restartCollector chan runner

	spools   map[string]*spool.Spool
	intake   *spool.Group // appends to every spool or none (intake.go)
	https    *uhttps.Sender
	mqtt     Uplink
	hub      *localapi.Hub
	idPrefix string
	seq      atomic.Uint64
}

// Uplink is a backend connection the daemon runs.
type Uplink interface {
	Run(ctx context.Context) error
	// Reconnect re-establishes the connection with the current identity.
	Reconnect()
}

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
}

// Run starts the agent and blocks until ctx ends or a component fails.
func Run(ctx context.Context, o Options) error {
	d, err := newDaemon(ctx, o)
	if err != nil {
		return err
	}
	defer d.close()
	return d.run(ctx)
}

func newDaemon(ctx context.Context, o Options) (*Daemon, error) {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Rand == nil {
		o.Rand = mrand.Float64
	}
	cfg := o.Config
	var nonce [6]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("agent: random message id prefix: %w", err)
	}
	d := &Daemon{
		o: o, boot: cfg, cfg: cfg, log: o.Logger, clock: lifecycle.NewClock(o.Now),
		renewNow:     make(chan chan error),
		reschedule:   make(chan struct{}, 1),
		restartHTTPS: make(chan runner), restartMQTT: make(chan runner), restartCollector: make(chan runner),
		spools:   map[string]*spool.Spool{},
		hub:      localapi.NewHub(),
		idPrefix: cfg.DeviceID + "-" + hex.EncodeToString(nonce[:]) + "-",
	}
	d.renewal.Renewals = map[string]uint64{}
	ks, err := OpenKeystore(cfg)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	d.ks = ks
	id, err := d.loadOrEnroll(ctx)
	if err != nil {
		d.close()
		return nil, err
	}
	d.ident = id
	// A restart without an RTC: learn the time before the uplinks need it
	// to check their servers' certificates. If the CA is unreachable the
	// renewal loop keeps trying.
	if err := d.calibrateClock(ctx, id, id.Server, id.Label, id.ESTPool(), token.Pin{}); err != nil {
		d.log.Error("clock", "err", err)
	}
	d.holder = uplink.NewIdentity(id.TLSCertificate())
	if err := d.openUplinks(); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) close() {
	for name, sp := range d.spools {
		if err := sp.Close(); err != nil {
			d.log.Error("close spool", "uplink", name, "err", err)
		}
	}
	if d.ks != nil {
		_ = d.ks.Close()
	}
}

// loadOrEnroll returns the stored identity, enrolling with the configured
// token first if there is none.
func (d *Daemon) loadOrEnroll(ctx context.Context) (*Identity, error) {
	id, err := LoadIdentity(d.boot.StateDir, d.ks)
	if err == nil {
		d.log.Info("identity loaded", "device_id", id.DeviceID, "serial", id.Serial(), "not_after", id.Leaf().NotAfter)
		return id, nil
	}
	if !errors.Is(err, ErrNoIdentity) {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return d.bootstrap(ctx)
}

// bootstrap enrolls with the token from enroll.token_file or
// EDGEAGENT_TOKEN (never logged), or with plain credentials.
func (d *Daemon) bootstrap(ctx context.Context) (*Identity, error) {
	ec := d.config().Enroll
	opts := EnrollOptions{StateDir: d.boot.StateDir, DeviceID: d.boot.DeviceID, Keystore: d.ks, Label: ec.Label,
		Now: d.clock.Now, Logger: d.log, Force: true, PostQuantumTLS: ec.PostQuantumTLS}
	alg, err := keystore.ParseAlgorithm(d.boot.KeyAlgorithm)
	if err != nil {
		return nil, err
	}
	opts.KeyAlg = alg
	tokText := d.o.Getenv("EDGEAGENT_TOKEN")
	if ec.TokenFile != "" {
		b, err := ReadSecretFile(ec.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("agent: enroll.token_file: %w", err)
		}
		tokText = string(b)
	}
	switch {
	case tokText != "":
		tok, err := token.Parse(tokText)
		if err != nil {
			return nil, fmt.Errorf("agent: enrollment token: %w", err)
		}
		opts.Token = &tok
	case ec.Server != "":
		opts.Server, opts.Username = ec.Server, ec.Username
		if ec.CAPin != "" {
			if opts.CAPin, err = token.ParsePin(ec.CAPin); err != nil {
				return nil, fmt.Errorf("agent: enroll.ca_pin: %w", err)
			}
		}
		if ec.PasswordFile != "" {
			b, err := ReadSecretFile(ec.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("agent: enroll.password_file: %w", err)
			}
			opts.Password = strings.TrimRight(string(b), "\r\n")
		}
	default:
		return nil, errors.New("agent: this device is not enrolled: set enroll.token_file or EDGEAGENT_TOKEN, or run 'edgeagent enroll'")
	}
	if ec.CABundle != "" {
		b, err := os.ReadFile(ec.CABundle)
		if err != nil {
			return nil, fmt.Errorf("agent: enroll.ca_bundle: %w", err)
		}
		if opts.CABundle, err = ParseCertsPEM(b); err != nil {
			return nil, fmt.Errorf("agent: enroll.ca_bundle: %w", err)
		}
		if opts.Token != nil {
			opts.Token.Pin = token.Pin{}
		}
	}
	opts.OnResponse = d.observeDate
	server, pin := opts.Server, opts.CAPin
	if opts.Token != nil {
		server, pin = opts.Token.URL, opts.Token.Pin
	}
	var roots *x509.CertPool
	if len(opts.CABundle) > 0 {
		roots = x509.NewCertPool()
		for _, c := range opts.CABundle {
			roots.AddCert(c)
		}
		pin = token.Pin{}
	}
	// A device that boots in 1970 cannot check the EST server's
	// certificate until it knows the time.
	if err := d.calibrateClock(ctx, nil, server, opts.Label, roots, pin); err != nil {
		return nil, err
	}
	id, err := Enroll(ctx, opts)
	if err != nil {
		return nil, err
	}
	d.log.Info("enrolled", "device_id", id.DeviceID, "serial", id.Serial(), "not_after", id.Leaf().NotAfter)
	return id, nil
}

func (d *Daemon) backendRoots(bundleFile string) (*x509.CertPool, error) {
	if bundleFile == "" {
		return d.current().CAPool(), nil
	}
	b, err := os.ReadFile(bundleFile)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertsPEM(b)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p, nil
}

func (d *Daemon) openSpool(name string) (*spool.Spool, error) {
	pol, err := spool.ParseSyncPolicy(d.boot.Spool.Sync)
	if err != nil {
		return nil, err
	}
	sp, err := spool.Open(filepath.Join(d.boot.StateDir, "spool", name), spool.Options{MaxBytes: int64(d.boot.Spool.MaxBytes), Sync: pol, Logger: d.log.With("spool", name)})
	if err != nil {
		return nil, err
	}
	d.spools[name] = sp
	return sp, nil
}

func (d *Daemon) openUplinks() error {
	cfg := d.config()
	if cfg.HTTPS.URL != "" {
		sp, err := d.openSpool("https")
		if err != nil {
			return err
		}
		if d.https, err = d.newHTTPS(cfg.HTTPS, sp); err != nil {
			return err
		}
	}
	if cfg.MQTT.URL != "" {
		sp, err := d.openSpool("mqtt")
		if err != nil {
			return err
		}
		if d.mqtt, err = d.newMQTT(cfg.MQTT, sp); err != nil {
			return err
		}
	}
	d.intake = spoolGroup(d.spools)
	return nil
}

// newHTTPS builds the HTTPS uplink from its config.
func (d *Daemon) newHTTPS(c config.HTTPS, sp *spool.Spool) (*uhttps.Sender, error) {
	roots, err := d.backendRoots(c.CABundle)
	if err != nil {
		return nil, fmt.Errorf("agent: https.ca_bundle: %w", err)
	}
	return uhttps.New(uhttps.Options{URL: c.URL, Spool: sp, BatchMax: c.BatchMax, Logger: d.log.With("uplink", "https"),
		TLS: uplink.ClientTLSConfig(uplink.TLSOptions{RootCAs: roots, Identity: d.holder, Time: d.clock.Now})})
}

// Submit wraps each message in an envelope with a unique id and appends it
// to every uplink's spool; it returns once they are stored.
func (d *Daemon) Submit(_ context.Context, msgs []json.RawMessage) ([]string, error) {
	if len(d.spools) == 0 {
		return nil, errors.New("no uplink configured (set mqtt.url or https.url)")
	}
	now := d.clock.Now().UTC().Format(time.RFC3339Nano)
	ids := make([]string, len(msgs))
	payloads := make([][]byte, len(msgs))
	for i, m := range msgs {
		ids[i] = d.idPrefix + strconv.FormatUint(d.seq.Add(1), 10)
		payloads[i] = appendEnvelope(nil, ids[i], d.boot.DeviceID, now, m)
	}
	g := d.intake
	if g == nil { // a Daemon built without openUplinks (tests)
		g = spoolGroup(d.spools)
	}
	if err := g.Append(payloads); err != nil {
		return nil, err
	}
	return ids, nil
}

// appendEnvelope appends the envelope of one message: what
// json.Marshal(envelope{...}) gives (but for its HTML escaping of <, > and &
// in data), without re-validating data on the hot path: the local API
// already validated and compacted it, and id, device id and time contain no
// characters JSON would escape.
func appendEnvelope(b []byte, id, deviceID, time string, data []byte) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","device_id":"`...)
	b = append(b, deviceID...)
	b = append(b, `","time":"`...)
	b = append(b, time...)
	b = append(b, `","data":`...)
	b = append(b, data...)
	return append(b, '}')
}

// envelope is what every backend receives: one JSON object per message.
type envelope struct {
	ID       string          `json:"id"`
	DeviceID string          `json:"device_id"`
	Time     string          `json:"time"`
	Data     json.RawMessage `json:"data"`
}

// run runs every component until ctx ends, then drains: the local API and
// the collector stop taking messages at once, the uplinks keep sending what
// is spooled for up to shutdown.drain_timeout, then everything stops.
func (d *Daemon) run(ctx context.Context) error {
	// hard ends the uplinks: after the drain, or when a component fails.
	hard, hardCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hardCancel()
	g, gctx := errgroup.WithContext(hard)
	// soft ends intake (API, collector, renewal, reload) on ctx's end.
	soft, softCancel := context.WithCancel(gctx)
	defer softCancel()
	stopAfter := context.AfterFunc(ctx, softCancel)
	defer stopAfter()

	// Everything that can fail comes before the first goroutine: once one
	// runs, run must wait for all of them (g.Wait) before Run closes the
	// spools under them.
	notify, err := sdnotify.New(d.o.Getenv)
	if err != nil {
		return err
	}
	wd, err := sdnotify.WatchdogInterval(d.o.Getenv, os.Getpid())
	if err != nil {
		return err
	}
	var metricsLn net.Listener
	if d.boot.Metrics.Listen != "" {
		if metricsLn, err = net.Listen("tcp", d.boot.Metrics.Listen); err != nil {
			return fmt.Errorf("agent: metrics.listen: %w", err)
		}
	}

	api := localapi.New(d, func() any { return d.Status() }, d.hub, d.log)
	api.SetRenew(d.RenewNow)
	g.Go(func() error { return api.Serve(soft, d.boot.API.Socket) })
	if d.https != nil {
		first := d.https
		g.Go(func() error {
			return d.supervise(gctx, "https", d.restartHTTPS, first, func(r runner) {
				d.mu.Lock()
				d.https = r.(*uhttps.Sender)
				d.mu.Unlock()
			})
		})
	}
	if d.mqtt != nil {
		first := d.mqtt
		g.Go(func() error {
			return d.supervise(gctx, "mqtt", d.restartMQTT, first, func(r runner) {
				d.mu.Lock()
				d.mqtt = r.(Uplink)
				d.mu.Unlock()
			})
		})
	}
	g.Go(func() error {
		return d.supervise(soft, "collector", d.restartCollector, d.newCollector(d.config().Collector), nil)
	})
	if metricsLn != nil {
		ln := metricsLn
		srv := &http.Server{Handler: d.metricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			<-gctx.Done()
			shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return srv.Shutdown(shut)
		})
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	g.Go(func() error { return d.renewLoop(soft) })
	g.Go(func() error { return d.reloadLoop(soft) })
	g.Go(func() error {
		<-soft.Done()
		defer hardCancel()
		if gctx.Err() == nil {
			d.drain(gctx)
		}
		return nil
	})
	if wd > 0 {
		g.Go(func() error {
			t := time.NewTicker(wd)
			defer t.Stop()
			for {
				select {
				case <-gctx.Done():
					return nil
				case <-t.C:
					// The renewal loop and uplinks run on their own; the
					// watchdog proves the process is scheduled and its
					// state lock is not wedged.
					st := d.Status()
					_ = notify.Notify("WATCHDOG=1\nSTATUS=" + statusLine(st))
				}
			}
		})
	}
	if err := notify.Notify("READY=1\nSTATUS=" + statusLine(d.Status())); err != nil {
		d.log.Warn("systemd notify", "err", err)
	}
	if d.o.Ready != nil {
		d.o.Ready()
	}
	d.log.Info("agent running", "device_id", d.boot.DeviceID, "mqtt", d.boot.MQTT.URL, "https", d.boot.HTTPS.URL, "api", d.boot.API.Socket)
	context.AfterFunc(soft, func() {
		if ctx.Err() != nil {
			_ = notify.Notify("STOPPING=1\nSTATUS=draining the spools")
		}
	})
	err = g.Wait()
	if ctx.Err() == nil {
		_ = notify.Notify("STOPPING=1") // a component failed
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// current returns the working identity.
func (d *Daemon) current() *Identity {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ident
}

// RenewNow renews immediately (local API POST /v1/renew) and returns the
// result.
func (d *Daemon) RenewNow(ctx context.Context) error {
	res := make(chan error, 1)
	select {
	case d.renewNow <- res:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// renewLoop renews at the scheduled time, retries with backoff until
// expiry, follows the expired policy after it, and renews on demand. While
// the clock is implausible it first asks the CA for the time.
func (d *Daemon) renewLoop(ctx context.Context) error {
	attempt := 0
	var retryAt, due time.Time
	var dueFor *Identity
	var dueSettings config.Renew
	backoff := func(now time.Time, notAfter time.Time) {
		rs := d.renewSettings()
		retryAt = lifecycle.NextRetry(now, notAfter, lifecycle.Backoff(attempt, rs.RetryMin, rs.RetryMax, d.o.Rand()))
		attempt++
	}
	for {
		id := d.current()
		leaf := id.Leaf()
		if !d.clockUsable(id) {
			if err := d.calibrateClock(ctx, id, id.Server, id.Label, id.ESTPool(), token.Pin{}); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d.log.Error("cannot correct the clock; renewal waits for it", "err", err)
				// The clock cannot say when the certificate is due, so
				// retry on the backoff alone, measured on the system clock.
				rs := d.renewSettings()
				wait := lifecycle.Backoff(attempt, rs.RetryMin, rs.RetryMax, d.o.Rand())
				attempt++
				reply, why := d.waitRenew(ctx, d.clock.Now().Add(wait))
				if why == wakeDone {
					return nil
				}
				if reply != nil {
					reply <- err
				}
				continue
			}
		}
		rs := d.renewSettings()
		// The jitter is drawn once per certificate (and renewal settings),
		// so retries and status agree on when it was due.
		if dueFor != id || dueSettings != rs {
			due = lifecycle.Schedule(leaf.NotBefore, leaf.NotAfter, id.Obtained(), rs.Fraction, rs.Jitter, d.o.Rand())
			dueFor, dueSettings = id, rs
		}
		next := due
		if !retryAt.IsZero() {
			next = retryAt
		}
		d.mu.Lock()
		d.renewal.Next, d.renewal.Due = next, due
		d.mu.Unlock()
		reply, why := d.waitRenew(ctx, next)
		switch why {
		case wakeDone:
			return nil
		case wakeReschedule:
			// New renew.* settings: recompute the schedule (dueSettings
			// differs now) and wait again. Renewing here would have a
			// fleet-wide config push send every device to the CA at once.
			continue
		}
		err := d.renewOnce(ctx, id)
		if reply != nil {
			reply <- err
		}
		if err == nil {
			attempt, retryAt = 0, time.Time{}
			d.setExpired("")
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		now := d.clock.Now()
		if lifecycle.PhaseAt(now, next, leaf.NotAfter) == lifecycle.Expired {
			rs = d.renewSettings()
			d.log.Error("certificate expired before it could be renewed", "device_id", id.DeviceID, "not_after", leaf.NotAfter, "policy", rs.ExpiredPolicy, "err", err)
			if rs.ExpiredPolicy == "rebootstrap" {
				d.setExpired("re-enrolling with the enrollment token (renew.expired_policy: rebootstrap)")
				nid, berr := d.bootstrap(ctx)
				if berr == nil {
					d.log.Info("re-enrolled after expiry", "serial", nid.Serial(), "not_after", nid.NotAfter())
					d.countRenewal("rebootstrap")
					d.setIdentity(nid)
					d.setExpired("")
					attempt, retryAt = 0, time.Time{}
					continue
				}
				d.log.Error("re-enrollment after expiry failed; will retry", "err", berr)
				d.setExpired("re-enrollment failed, retrying with backoff (renew.expired_policy: rebootstrap): " + berr.Error())
			} else {
				d.setExpired("waiting for the operator or the CA; renewal retried with backoff (renew.expired_policy: wait)")
			}
		}
		if enroll.IsNotExtended(err) {
			// The CA answers the same until it is renewed itself: wait the
			// longest backoff, not the renewal schedule (due at once).
			attempt = max(attempt, 62)
		}
		backoff(now, leaf.NotAfter)
		if at := now.Add(enroll.RetryAfter(err)); at.After(retryAt) {
			retryAt = at // a CA shedding load said when to come back
		}
		d.log.Warn("renewal failed", "err", err, "retry_at", retryAt, "retryable", enroll.Retryable(err))
	}
}

// wake says why waitRenew returned.
type wake int

const (
	// wakeDone: ctx ended.
	wakeDone wake = iota
	// wakeDue: the time came (the timer fired).
	wakeDue
	// wakeDemand: a renewal on demand (the reply channel is set).
	wakeDemand
	// wakeReschedule: a reload changed renew.*; the caller recomputes the
	// schedule and does not renew because of it.
	wakeReschedule
)

// waitRenew waits until at (on the corrected clock), a renewal on demand or
// a reload that changed the renewal settings.
func (d *Daemon) waitRenew(ctx context.Context, at time.Time) (chan error, wake) {
	wait := at.Sub(d.clock.Now())
	if wait < 0 {
		wait = 0
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, wakeDone
	case reply := <-d.renewNow:
		return reply, wakeDemand
	case <-d.reschedule:
		return nil, wakeReschedule
	case <-t.C:
		return nil, wakeDue
	}
}

// renewSettings returns renew.* of the current config (SIGHUP may change
// it).
func (d *Daemon) renewSettings() config.Renew {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.Renew
}

func (d *Daemon) setExpired(msg string) {
	d.mu.Lock()
	d.renewal.Expired = msg
	d.mu.Unlock()
}

func (d *Daemon) countRenewal(result string) {
	d.mu.Lock()
	d.renewal.Renewals[result]++
	d.mu.Unlock()
}

func (d *Daemon) renewOnce(ctx context.Context, id *Identity) error {
	rs := d.renewSettings()
	user, pass := renewCredentials(d.config().Enroll, d.log)
	nid, err := Renew(ctx, RenewOptions{StateDir: d.boot.StateDir, Keystore: d.ks, Rekey: rs.Rekey, Current: id, Now: d.clock.Now, OnResponse: d.observeDate,
		PostQuantumTLS: d.config().Enroll.PostQuantumTLS, Username: user, Password: pass})
	if err == nil {
		d.log.Info("certificate renewed", "serial", nid.Serial(), "not_before", nid.NotBefore(), "not_after", nid.NotAfter(), "rekey", rs.Rekey)
		d.setIdentity(nid)
		// Stored and in use; but a CA that caps at its own expiry answers
		// the same until it is renewed itself (renewLoop backs off).
		err = enroll.CheckExtended(id.Leaf(), nid.Chain)
	}
	res, msg := "ok", ""
	switch {
	case enroll.IsNotExtended(err):
		res, msg = "not_extended", err.Error()
	case err != nil:
		res, msg = "error", err.Error()
	}
	d.mu.Lock()
	d.renewal.LastAt = d.clock.Now()
	d.renewal.LastResult, d.renewal.LastError = res, msg
	d.renewal.Renewals[res]++
	d.mu.Unlock()
	return err
}

// setIdentity makes nid the working identity for every new handshake and
// has the uplinks reconnect with it.
func (d *Daemon) setIdentity(nid *Identity) {
	d.mu.Lock()
	d.ident = nid
	d.mu.Unlock()
	d.holder.Store(nid.TLSCertificate())
	hs, mq := d.uplinks()
	if hs != nil {
		hs.Reconnect()
	}
	if mq != nil {
		mq.Reconnect()
	}
}

// statusLine is the one-line state systemd shows in `systemctl status`.
func statusLine(st Status) string {
	line := fmt.Sprintf("serial %s, expires %s", st.Serial, st.NotAfter.UTC().Format(time.RFC3339))
	for _, name := range []string{"mqtt", "https"} {
		if u, ok := st.Uplinks[name]; ok {
			state := "down"
			if u.Connected {
				state = "up"
			}
			line += fmt.Sprintf(", %s %s (spool %d)", name, state, u.SpoolDepth)
		}
	}
	return line
}
