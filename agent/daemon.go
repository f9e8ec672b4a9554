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
	"github.com/edgeagent/edgeagent/enroll/est"
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
	// EchoGrace is how long the MQTT uplink's own retained status may
	// take to come back before the broker is said to drop its publishes;
	// 0 means 15s.
	EchoGrace time.Duration
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
	// read it through config() or renewSettings(). mu guards nothing
	// else: each part owns its own state.
	mu    sync.Mutex
	cfg   config.Config
	log   *slog.Logger
	clock *lifecycle.Clock
	ks    keystore.Keystore
	// lock makes this daemon the state dir's one writer until close.
	lock *StateLock

	// ren owns the identity and its renewal; health what the agent says
	// about itself.
	ren     *renewer
	health  *health
	started time.Time
	holder  *uplink.Identity
	// uplinkBundle is the CA bundle the uplinks were built to trust.
	bundleMu     sync.Mutex
	uplinkBundle []*x509.Certificate

	// uplinks are the configured uplinks (mqtt first), parts every
	// component a reload can replace, by name; both are fixed at start.
	uplinks []*part
	parts   map[string]*part

	spools map[string]*spool.Spool
	hub    *localapi.Hub
	// deviceID is the enrolled identity's (its certificate's CN), fixed
	// for the run: renewals keep it, a re-enrollment asks for it again.
	deviceID string
	// intake owns the path from local apps and the collector to the
	// spools.
	intake *intake
}

// Run starts the agent and blocks until ctx ends or a component fails.
func Run(ctx context.Context, o Options) error {
	d, err := newDaemon(ctx, o)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return nil // stopped while enrolling
		}
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
		parts: map[string]*part{}, started: time.Now(),
		spools: map[string]*spool.Spool{},
		hub:    localapi.NewHub(),
	}
	lock, err := LockStateDir(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	d.lock = lock
	ks, err := OpenKeystore(cfg)
	if err != nil {
		_ = lock.Unlock()
		return nil, fmt.Errorf("agent: %w", err)
	}
	d.ks = ks
	id, err := d.loadOrEnroll(ctx)
	if err != nil {
		d.close()
		return nil, err
	}
	d.ren = d.newRenewer(id)
	d.health = newHealth(d.clock.Now, cfg.Health.StallAfter, d.Status, d.log)
	d.deviceID = id.DeviceID
	d.intake = &intake{now: d.clock.Now, deviceID: id.DeviceID, idPrefix: id.DeviceID + "-" + hex.EncodeToString(nonce[:]) + "-", spools: d.spools}
	// A restart without an RTC: learn the time before the uplinks need it
	// to check their servers' certificates. If the CA is unreachable the
	// renewal loop keeps trying.
	if err := d.calibrateClock(ctx, id, id.Server, id.Label, id.ESTPool(), token.Pin{}); err != nil {
		d.log.Error("clock", "err", err)
	}
	d.holder = uplink.NewIdentity(id.TLSCertificate())
	d.uplinkBundle = id.CABundle
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
	_ = d.lock.Unlock()
}

// loadOrEnroll returns the stored identity, enrolling with the configured
// token first if there is none. A stored identity decides the device id:
// a config that names another device is refused, naming both.
func (d *Daemon) loadOrEnroll(ctx context.Context) (*Identity, error) {
	id, err := LoadIdentity(d.boot.StateDir, d.ks)
	if err == nil {
		if err := CheckDeviceID(d.boot.DeviceID, id, d.boot.StateDir); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		d.log.Info("identity loaded", "device_id", id.DeviceID, "serial", id.Serial(), "not_after", id.Leaf().NotAfter)
		return id, nil
	}
	if errors.Is(err, ErrDamagedIdentity) && d.config().Enroll.DamagedIdentity == "reenroll" {
		// The operator's policy: enroll again, under the device's id,
		// with nothing destroyed.
		deviceID, _ := FirstDeviceID(d.boot.DeviceID, d.boot.StateDir)
		aside, merr := moveIdentityAside(d.boot.StateDir, d.clock.Now())
		if merr != nil {
			return nil, fmt.Errorf("agent: %w; and moving it aside failed: %v", err, merr)
		}
		d.log.Error("the identity is damaged; enrolling again (enroll.damaged_identity: reenroll)", "err", err, "moved_to", aside, "device_id", deviceID)
		return d.bootstrap(ctx, deviceID)
	}
	if !errors.Is(err, ErrNoIdentity) {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return d.firstEnrollment(ctx)
}

// firstEnrollment enrolls, retrying what may succeed later (the CA
// unreachable, 5xx, 429) with capped, jittered backoff (renew.retry_min
// to renew.retry_max) in this process: a fleet that boots while its CA is
// down must not come back every RestartSec in lockstep. systemd is told
// why start takes long (STATUS, EXTEND_TIMEOUT_USEC). What needs the
// operator returns at once.
func (d *Daemon) firstEnrollment(ctx context.Context) (*Identity, error) {
	notify, _ := sdnotify.New(d.o.Getenv) // a bad NOTIFY_SOCKET is run's to report
	for attempt := 0; ; attempt++ {
		id, err := d.bootstrap(ctx, d.boot.DeviceID)
		if err == nil || errors.Is(err, ErrNeedsOperator) || !enroll.Retryable(err) || ctx.Err() != nil {
			return id, err
		}
		rs := d.renewSettings()
		wait := lifecycle.Backoff(attempt, rs.RetryMin, rs.RetryMax, d.o.Rand())
		d.log.Warn("enrollment failed; retrying", "err", err, "retry_in", wait.Round(time.Millisecond), "attempt", attempt+1)
		if notify != nil {
			_ = notify.Notify(fmt.Sprintf("STATUS=enrolling: retry in %s: %v\nEXTEND_TIMEOUT_USEC=%d", wait.Round(time.Second), err,
				(wait + time.Minute).Microseconds()))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// bootstrap enrolls as deviceID ("" for the first enrollment's default,
// see FirstDeviceID) with the token from enroll.token_file or
// EDGEAGENT_TOKEN (never logged), or with plain credentials.
func (d *Daemon) bootstrap(ctx context.Context, deviceID string) (*Identity, error) {
	cfg := d.config()
	cfg.DeviceID = deviceID
	opts, err := PlanEnrollment(cfg, Secrets{Token: d.o.Getenv("EDGEAGENT_TOKEN"), TokenFrom: "EDGEAGENT_TOKEN"})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	opts.Keystore, opts.Now, opts.Logger, opts.Force, opts.BuildTime = d.ks, d.clock.Now, d.log, true, d.o.BuildTime
	opts.OnResponse = d.observeDate
	server, roots, pin := opts.trust()
	// A device that boots in 1970 cannot check the EST server's
	// certificate until it knows the time.
	if err := d.calibrateClock(ctx, nil, server, opts.Label, roots, pin); err != nil {
		return nil, err
	}
	id, err := Enroll(ctx, opts)
	if err != nil {
		return nil, enrollFailure(err, opts.DeviceID, cfg.DeviceID == "")
	}
	d.log.Info("enrolled", "device_id", id.DeviceID, "serial", id.Serial(), "not_after", id.Leaf().NotAfter)
	return id, nil
}

// enrollFailure marks an enrollment the CA refused (a 4xx answer other
// than 429) as needing the operator, with what to change: retrying the
// same request gets the same answer.
func enrollFailure(err error, deviceID string, defaulted bool) error {
	var se *enroll.ServerError
	if !errors.As(err, &se) || se.Status < 400 || se.Status >= 500 || se.Status == http.StatusTooManyRequests {
		return err
	}
	switch {
	case se.Code == est.CodeDeviceNotAllowed && defaulted:
		err = fmt.Errorf("%w; the device asked for id %q because device_id is not set in the config: set device_id (or EDGEAGENT_DEVICE_ID) "+
			"to the device id the token was made for", err, deviceID)
	case se.Code == est.CodeDeviceNotAllowed:
		err = fmt.Errorf("%w; the CA does not allow device id %q with this token: set device_id to the device the token was made for, or get a token for %q",
			err, deviceID, deviceID)
	case enroll.IsTokenRejected(err):
		err = fmt.Errorf("%w; get a new token ('edgeca token create') and put it in enroll.token_file", err)
	}
	return needsOperator(err)
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

// openUplinks opens each configured uplink's spool and builds the parts:
// the uplinks (mqtt, https) and the collector.
func (d *Daemon) openUplinks() error {
	cfg := d.config()
	for _, u := range []struct {
		name  string
		on    bool
		build func(config.Config, *spool.Spool) (Uplink, error)
	}{
		{"mqtt", cfg.MQTT.URL != "", func(c config.Config, sp *spool.Spool) (Uplink, error) { return d.newMQTT(c.MQTT, sp) }},
		{"https", cfg.HTTPS.URL != "", func(c config.Config, sp *spool.Spool) (Uplink, error) { return d.newHTTPS(c.HTTPS, sp) }},
	} {
		if !u.on {
			continue
		}
		sp, err := d.openSpool(u.name)
		if err != nil {
			return err
		}
		build := u.build
		p := newPart(u.name, sp, func(c config.Config) (runner, error) { return build(c, sp) })
		first, err := p.build(cfg)
		if err != nil {
			return err
		}
		p.set(first)
		d.uplinks = append(d.uplinks, p)
		d.parts[u.name] = p
	}
	col := newPart("collector", nil, func(c config.Config) (runner, error) { return d.newCollector(c.Collector), nil })
	first, _ := col.build(cfg)
	col.set(first)
	d.parts["collector"] = col
	d.intake.group = spoolGroup(d.spools)
	return nil
}

// newHTTPS builds the HTTPS uplink from its config.
func (d *Daemon) newHTTPS(c config.HTTPS, sp *spool.Spool) (Uplink, error) {
	roots, err := d.backendRoots(c.CABundle)
	if err != nil {
		return nil, fmt.Errorf("agent: https.ca_bundle: %w", err)
	}
	s, err := uhttps.New(uhttps.Options{URL: c.URL, Spool: sp, BatchMax: c.BatchMax, Logger: d.log.With("uplink", "https"),
		TLS: uplink.ClientTLSConfig(uplink.TLSOptions{RootCAs: roots, Identity: d.holder, Time: d.clock.Now})})
	if err != nil {
		return nil, err
	}
	return httpsUplink{s}, nil
}

// intake takes messages from local apps (the local API) and the
// collector into every uplink's spool, each in an envelope with the
// device id and a unique message id. It owns the id sequence.
type intake struct {
	now      func() time.Time
	deviceID string
	// idPrefix makes ids unique across restarts: the device id and a
	// random nonce drawn at start.
	idPrefix string
	seq      atomic.Uint64
	spools   map[string]*spool.Spool
	// group writes a batch to every spool or to none (intake.go); set once
	// the uplinks are open.
	group *spool.Group
}

// Submit wraps each message in an envelope with a unique id and appends it
// to every uplink's spool; it returns once they are stored.
func (in *intake) Submit(_ context.Context, msgs []json.RawMessage) ([]string, error) {
	if len(in.spools) == 0 {
		return nil, errors.New("no uplink configured (set mqtt.url or https.url)")
	}
	now := in.now().UTC().Format(time.RFC3339Nano)
	ids := make([]string, len(msgs))
	payloads := make([][]byte, len(msgs))
	for i, m := range msgs {
		ids[i] = in.idPrefix + strconv.FormatUint(in.seq.Add(1), 10)
		// Sized once: appending to nil would grow it three or four times.
		size := len(`{"id":"","device_id":"","time":"","data":}`) + len(ids[i]) + len(in.deviceID) + len(now) + len(m)
		payloads[i] = appendEnvelope(make([]byte, 0, size), ids[i], in.deviceID, now, m)
	}
	g := in.group
	if g == nil { // an intake built without openUplinks (tests)
		g = spoolGroup(in.spools)
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

	api := localapi.New(d.intake, func() any { return d.health.Snapshot() }, d.hub, d.log)
	api.SetRenew(d.RenewNow)
	// What the agent is: its parts, each a Run that stops with its
	// context. Intake stops when ctx ends (no new messages, renewals or
	// reloads); delivery runs on through the drain.
	tasks := []task{
		{"local API", phaseIntake, func(ctx context.Context) error { return api.Serve(ctx, d.boot.API.Socket) }},
		{"collector", phaseIntake, func(ctx context.Context) error { return d.supervise(ctx, d.parts["collector"]) }},
		{"renewer", phaseIntake, d.ren.Run},
		{"reload", phaseIntake, d.reloadLoop},
		{"health", phaseDelivery, d.health.Run},
	}
	for _, p := range d.uplinks {
		tasks = append(tasks, task{"uplink " + p.name, phaseDelivery, func(ctx context.Context) error { return d.supervise(ctx, p) }})
	}
	if metricsLn != nil {
		tasks = append(tasks, task{"metrics", phaseDelivery, func(ctx context.Context) error { return d.health.serveMetrics(ctx, metricsLn, d.metricFamilies) }})
	}
	if wd > 0 {
		tasks = append(tasks, task{"watchdog", phaseDelivery, func(ctx context.Context) error { return d.health.watchdog(ctx, notify, wd) }})
	}
	for _, t := range tasks {
		tctx := gctx
		if t.phase == phaseIntake {
			tctx = soft
		}
		g.Go(func() error { return t.run(tctx) })
	}
	// The drain: once intake stopped, the uplinks send what is spooled,
	// then delivery ends.
	g.Go(func() error {
		<-soft.Done()
		defer hardCancel()
		if gctx.Err() == nil {
			d.drain(gctx)
		}
		return nil
	})
	if err := notify.Notify("READY=1\nSTATUS=" + statusLine(d.health.Snapshot())); err != nil {
		d.log.Warn("systemd notify", "err", err)
	}
	if d.o.Ready != nil {
		d.o.Ready()
	}
	d.log.Info("agent running", "device_id", d.deviceID, "mqtt", d.boot.MQTT.URL, "https", d.boot.HTTPS.URL, "api", d.boot.API.Socket)
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

// task is one part's Run and the phase it belongs to.
type task struct {
	name  string
	phase phase
	run   func(ctx context.Context) error
}

// phase says when a task stops.
type phase int

const (
	// phaseIntake stops when the agent is told to stop.
	phaseIntake phase = iota
	// phaseDelivery stops after the drain (or when a task fails).
	phaseDelivery
)

// current returns the working identity (nil before there is one).
func (d *Daemon) current() *Identity {
	if d.ren == nil {
		return nil
	}
	return d.ren.Current()
}

// RenewNow renews immediately (local API POST /v1/renew; concurrent asks
// share one renewal) and returns the result.
func (d *Daemon) RenewNow(ctx context.Context) error { return d.ren.RenewNow(ctx) }

// renewSettings returns renew.* of the current config (SIGHUP may change
// it).
func (d *Daemon) renewSettings() config.Renew {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.Renew
}

// newRenewer builds the renewer of id on the daemon's clock, keystore and
// config.
func (d *Daemon) newRenewer(id *Identity) *renewer {
	return newRenewer(renewerParts{
		clock:  systemClock{d.clock.Now},
		rand:   d.o.Rand,
		log:    d.log,
		policy: func() RenewPolicy { return PolicyOf(d.renewSettings()) },
		renew: func(ctx context.Context, id *Identity, p RenewPolicy) (*Identity, error) {
			ec := d.config().Enroll
			user, pass := renewCredentials(ec, d.log)
			return Renew(ctx, RenewOptions{StateDir: d.boot.StateDir, Keystore: d.ks, Rekey: p.Rekey, Current: id, Now: d.clock.Now,
				OnResponse: d.observeDate, PostQuantumTLS: ec.PostQuantumTLS, Username: user, Password: pass, Server: d.config().Renew.Server})
		},
		rebootstrap: func(ctx context.Context, id *Identity) (*Identity, error) { return d.bootstrap(ctx, id.DeviceID) },
		clockReady: func(ctx context.Context, id *Identity) error {
			if d.clockUsable(id) {
				return nil
			}
			return d.calibrateClock(ctx, id, id.Server, id.Label, id.ESTPool(), token.Pin{})
		},
		install: d.install,
		renewalInfo: func(ctx context.Context, id *Identity) (est.RenewalInfo, time.Duration, error) { // renewer.go
			return AskRenewalInfo(ctx, id, d.config().Renew.Server, d.clock.Now, d.config().Enroll.PostQuantumTLS)
		},
	}, id)
}

// install makes nid the working identity for every new handshake and has
// the uplinks reconnect with it. An uplink that trusts the enrolled CA
// bundle (no ca_bundle of its own) is rebuilt when the renewal brought a
// new bundle from /cacerts: a TLS config's roots are fixed, and a broker
// whose certificate comes from a rotated CA must verify without a restart.
func (d *Daemon) install(ctx context.Context, nid *Identity) {
	d.holder.Store(nid.TLSCertificate())
	d.bundleMu.Lock()
	changed := !sameCerts(d.uplinkBundle, nid.CABundle)
	d.uplinkBundle = nid.CABundle
	d.bundleMu.Unlock()
	cfg := d.config()
	for _, p := range d.uplinks {
		if changed && followsBundle(cfg, p.name) {
			if r, err := p.build(cfg); err != nil {
				d.log.Error("the CA bundle changed but the uplink could not be rebuilt with it; it keeps the old trust", "uplink", p.name, "err", err)
			} else {
				select {
				case p.restart <- r:
					d.log.Info("uplink trusts the refreshed CA bundle", "uplink", p.name, "certs", len(nid.CABundle))
					continue
				case <-ctx.Done():
					return
				}
			}
		}
		if u := p.uplink(); u != nil {
			u.Reconnect()
		}
	}
}

// followsBundle: the uplink name trusts the enrolled CA bundle.
func followsBundle(cfg config.Config, name string) bool {
	switch name {
	case "mqtt":
		return cfg.MQTT.CABundle == ""
	case "https":
		return cfg.HTTPS.CABundle == ""
	}
	return false
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// statusLine is the one-line state systemd shows in `systemctl status`.
func statusLine(st Status) string {
	line := fmt.Sprintf("serial %s, expires %s", st.Serial, st.NotAfter.UTC().Format(time.RFC3339))
	if len(st.Problems) > 0 {
		line = "UNHEALTHY: " + strings.Join(st.Problems, "; ") + "; " + line
	}
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
