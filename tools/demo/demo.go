// Package demo is `make demo`: in one process it starts an edgeca with a
// fresh CA, an MQTT broker and an HTTPS sink that both require a client
// certificate from that CA, creates an enrollment token, and runs an agent
// that enrolls with it, streams system telemetry to both backends and
// renews its minute-long certificate live, while a terminal view (or, when
// the output is not a terminal, log lines) shows what happens. It is a
// newcomer's tour, not shipped in any package.
package demo

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/edgeagent/edgeagent/agent"
	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/ca"
)

// Options configure a demo run.
type Options struct {
	Dir      string        // work directory: CA, device state, log, API socket
	Duration time.Duration // bounded mode: stop after this long and check; 0 runs until stopped
	CertTTL  time.Duration // device certificate lifetime
	Interval time.Duration // collector interval
	DeviceID string
	Out      io.Writer
	// Terminal selects the full-screen view (ANSI clear and redraw);
	// otherwise the demo prints log lines.
	Terminal bool
	// KeysFD, when >= 0, is a terminal to read single-key commands from.
	KeysFD int
	// Width returns the terminal's width, so lines are cut rather than
	// wrapped (which would scroll the view); nil or 0 means no limit.
	Width func() int
}

// Step indexes.
const (
	stepCA = iota
	stepEST
	stepBroker
	stepSink
	stepToken
	stepPinned
	stepIssued
	stepStored
	stepRunning
)

// demo is one run's shared state.
type demo struct {
	o       Options
	started time.Time
	log     *slog.Logger // the demo's own messages (to the log file)

	mu      sync.Mutex
	steps   []Step
	status  *agent.Status
	errText string
	note    string

	outMu sync.Mutex // plain mode: one writer at a time
	ev    *events
	mqtt  *tally
	https *tally
}

// Result is the outcome of a bounded run.
type Result struct {
	Checks []Check
}

// Failed counts the failed checks.
func (r Result) Failed() int {
	n := 0
	for _, c := range r.Checks {
		if !c.OK {
			n++
		}
	}
	return n
}

// Check is one assertion of a bounded run.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// Run runs the demo until ctx ends, the duration passes or the person
// quits, stops everything, and in bounded mode returns the checks.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.CertTTL == 0 {
		o.CertTTL = time.Minute
	}
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.DeviceID == "" {
		o.DeviceID = "demo-device-1"
	}
	d := &demo{o: o, started: time.Now(), mqtt: newTally(), https: newTally()}
	d.steps = []Step{
		stepCA:      {Text: "edgeca: fresh root and issuing CA"},
		stepEST:     {Text: "edgeca: EST server (RFC 7030) listening"},
		stepBroker:  {Text: "MQTT broker, client certificates required"},
		stepSink:    {Text: "HTTPS sink, client certificates required"},
		stepToken:   {Text: "enrollment token created (single use)"},
		stepPinned:  {Text: "agent: CA authenticated by the token's pin"},
		stepIssued:  {Text: "agent: key made on the device, CSR sent"},
		stepStored:  {Text: "agent: enrolled, identity stored"},
		stepRunning: {Text: "agent: running, telemetry every " + o.Interval.String()},
	}
	paths, err := prepare(o.Dir)
	if err != nil {
		return Result{}, err
	}
	logFile, err := os.OpenFile(paths.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return Result{}, fmt.Errorf("demo: open log: %w", err)
	}
	defer logFile.Close()
	file := slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug})
	d.ev = newEvents(6, d.onEvent)
	logger := func(source string, min slog.Level) *slog.Logger {
		return slog.New(&teeHandler{file: file.WithAttrs([]slog.Attr{slog.String("component", source)}), ev: d.ev, source: source, min: min})
	}
	d.log = slog.New(file).With("component", "demo")

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	res, runErr := d.run(ctx, gctx, cancel, g, paths, logger)
	return res, runErr
}

type workPaths struct {
	ca, device, log, socket string
}

// prepare makes a fresh work directory (keeping a built binary in bin/)
// and refuses to when another demo is using it.
func prepare(dir string) (workPaths, error) {
	p := workPaths{ca: filepath.Join(dir, "ca"), device: filepath.Join(dir, "device"), log: filepath.Join(dir, "demo.log"), socket: filepath.Join(dir, "api.sock")}
	if c, err := net.DialTimeout("unix", p.socket, time.Second); err == nil {
		c.Close()
		return p, fmt.Errorf("demo: another demo is running in %s (its agent answers on %s): stop it first", dir, p.socket)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, fmt.Errorf("demo: create %s: %w", dir, err)
	}
	for _, x := range []string{p.ca, p.device, p.log, p.socket} {
		if err := os.RemoveAll(x); err != nil {
			return p, fmt.Errorf("demo: clean %s: %w", x, err)
		}
	}
	return p, nil
}

func (d *demo) done(i int, detail string) {
	d.mu.Lock()
	d.steps[i].Done, d.steps[i].Detail = true, detail
	text := d.steps[i].Text
	d.mu.Unlock()
	if !d.o.Terminal {
		d.printf("step: %s %s", text, detail)
	}
}

func (d *demo) setNote(s string) {
	d.mu.Lock()
	d.note = s
	d.mu.Unlock()
	if !d.o.Terminal {
		d.printf("%s", s)
	}
}

// printf writes one line in plain mode.
func (d *demo) printf(format string, args ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.o.Out, time.Now().Format("15:04:05")+" "+format+"\n", args...)
}

// onEvent advances the enrollment steps from what the agent and the CA log,
// and prints the event in plain mode.
func (d *demo) onEvent(e Event) {
	switch {
	case e.Source == "agent" && e.Msg == "EST server authenticated":
		d.done(stepPinned, e.Attrs["server"])
	case e.Source == "edgeca" && e.Msg == "certificate issued" && e.Attrs["op"] == "simpleenroll":
		d.done(stepIssued, "certificate issued, serial "+short(e.Attrs["serial"]))
	case e.Source == "agent" && e.Msg == "enrolled":
		d.done(stepStored, "in "+filepath.Join(d.o.Dir, "device"))
	case e.Source == "agent" && e.Msg == "agent running":
		d.done(stepRunning, "")
	}
	if !d.o.Terminal {
		d.printf("%s", e.Text())
	}
}

func (d *demo) run(ctx, gctx context.Context, cancel context.CancelFunc, g *errgroup.Group, p workPaths, logger func(string, slog.Level) *slog.Logger) (Result, error) {
	var res Result
	if err := ca.Init(ctx, p.ca, ca.InitOptions{Name: "edgedemo"}); err != nil {
		return res, fmt.Errorf("demo: %w", err)
	}
	c, err := ca.Open(ctx, p.ca, ca.Options{CertTTL: d.o.CertTTL, Hostnames: []string{"127.0.0.1", "localhost"}, Logger: logger("edgeca", slog.LevelInfo)})
	if err != nil {
		return res, fmt.Errorf("demo: %w", err)
	}
	defer c.Close()
	// On every return, and before the CA closes: stop whatever was
	// started and wait for it (a no-op after the normal shutdown below).
	defer func() {
		cancel()
		_ = g.Wait()
	}()
	d.done(stepCA, "root pin "+short(c.Pin().String()[len("sha256:"):])+", in "+p.ca)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, fmt.Errorf("demo: EST listener: %w", err)
	}
	estURL := "https://" + ln.Addr().String()
	g.Go(func() error { return c.Serve(gctx, ln) })
	d.done(stepEST, estURL+", certificates live "+d.o.CertTTL.String())

	// The backends present the CA's server certificate and verify clients
	// against the same CA, in the handshake.
	base, err := c.TLSConfig()
	if err != nil {
		return res, fmt.Errorf("demo: %w", err)
	}
	backendTLS := base.Clone()
	backendTLS.ClientAuth = tls.RequireAndVerifyClientCert
	br := newBroker(backendTLS, logger("broker", slog.LevelError), d.mqtt)
	if err := br.Start(); err != nil {
		return res, fmt.Errorf("demo: %w", err)
	}
	defer br.Stop()
	d.done(stepBroker, "mqtts://"+br.Addr())
	// The sink follows edgeca's revocation feed like any HTTPS backend
	// would: a revoked device is cut off within seconds.
	guard, err := followRevocations(ctx, gctx, g, c, estURL, logger("sink", slog.LevelWarn))
	if err != nil {
		return res, fmt.Errorf("demo: %w", err)
	}
	sk := newSink(backendTLS.Clone(), logger("sink", slog.LevelWarn), d.https, guard)
	if err := sk.Start(); err != nil {
		return res, fmt.Errorf("demo: %w", err)
	}
	defer sk.Stop()
	d.done(stepSink, sk.URL())

	tok, _, err := c.CreateToken(ctx, ca.TokenOptions{URL: estURL, Device: d.o.DeviceID, Uses: 1, TTL: 10 * time.Minute})
	if err != nil {
		return res, fmt.Errorf("demo: %w", err)
	}
	d.done(stepToken, "for "+d.o.DeviceID+", valid 10m")

	cfg := config.Default()
	cfg.DeviceID = d.o.DeviceID
	cfg.StateDir = p.device
	cfg.API.Socket = p.socket
	cfg.Metrics.Listen = "" // a fixed port could clash; the view reads the API
	cfg.Collector.Interval = d.o.Interval
	cfg.MQTT.URL = "mqtts://" + br.Addr()
	cfg.MQTT.KeepAlive = 10 * time.Second
	cfg.HTTPS.URL = sk.URL()
	cfg.Renew.RetryMin = 2 * time.Second
	if err := cfg.Validate(); err != nil {
		return res, fmt.Errorf("demo: agent config: %w", err)
	}
	tokText := tok.String()
	g.Go(func() error {
		err := agent.Run(gctx, agent.Options{Config: cfg, Logger: logger("agent", slog.LevelInfo),
			// Only the token: no systemd notify socket or watchdog from
			// the environment the demo happens to run in.
			Getenv: func(k string) string {
				if k == "EDGEAGENT_TOKEN" {
					return tokText
				}
				return ""
			}})
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		return nil
	})

	api := localapi.Client(p.socket, 5*time.Second)
	keys := make(chan byte)
	if d.o.KeysFD >= 0 {
		restore, err := cbreak(d.o.KeysFD)
		if err == nil {
			defer restore()
			g.Go(func() error { return readKeys(gctx, d.o.KeysFD, keys) })
		} else {
			d.o.KeysFD = -1
		}
	}
	if !d.o.Terminal {
		d.printf("output is not a terminal: log lines here, a status line every 5 s; in a terminal the live view takes keys b (stop/start the broker), s (the sink), r (renew now), q")
	}
	if d.o.Terminal {
		fmt.Fprint(d.o.Out, "\x1b[?25l\x1b[2J")
		defer fmt.Fprint(d.o.Out, "\x1b[?25h")
	}
	var deadline <-chan time.Time
	if d.o.Duration > 0 {
		t := time.NewTimer(time.Until(d.started.Add(d.o.Duration)))
		defer t.Stop()
		deadline = t.C
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	d.draw(gctx, api, false)
	reason := ""
loop:
	for {
		select {
		case <-gctx.Done():
			reason = "interrupted"
			if ctx.Err() == nil {
				reason = "a component failed"
			}
			break loop
		case <-deadline:
			reason = fmt.Sprintf("%s passed", d.o.Duration)
			break loop
		case k := <-keys:
			if k == 'q' {
				reason = "quit"
				break loop
			}
			d.key(gctx, g, k, br, sk, api)
			d.draw(gctx, api, false)
		case <-tick.C:
			d.draw(gctx, api, true)
		}
	}
	cancel()
	werr := g.Wait()
	br.Stop()
	sk.Stop()
	stopped := stoppedCheck(ln.Addr().String(), br.Addr(), sk.Addr(), p.socket)
	if d.o.Terminal {
		fmt.Fprint(d.o.Out, "\x1b[H\x1b[2J")
		width := 0
		if d.o.Width != nil {
			width = d.o.Width()
		}
		for _, l := range splitLines(Screen(d.snapshot(time.Now()))) {
			fmt.Fprintln(d.o.Out, clip(l, width))
		}
	}
	fmt.Fprintf(d.o.Out, "\ndemo stopped (%s): CA, broker, sink and agent ran in this one process (pid %d) and are gone; %s\n", reason, os.Getpid(), stopped.Detail)
	if werr != nil && !errors.Is(werr, context.Canceled) {
		return res, werr
	}
	if d.o.Duration == 0 {
		return res, nil
	}
	if reason == "interrupted" {
		return res, errors.New("demo: interrupted before its time was up")
	}
	res.Checks = append(Verify(d.snapshot(time.Now())), stopped)
	return res, nil
}

// key acts on one key press.
func (d *demo) key(ctx context.Context, g *errgroup.Group, k byte, br *broker, sk *sink, api *http.Client) {
	at := time.Now().Format("15:04:05")
	switch k {
	case 'b':
		if err := br.Toggle(); err != nil {
			d.setNote(at + " broker: " + err.Error())
		} else if d.mqtt.snapshot("").Up {
			d.setNote(at + " broker started again: the agent reconnects after its backoff (up to a minute) and drains its mqtt spool")
		} else {
			d.setNote(at + " broker stopped: the mqtt uplink goes down and its spool grows; nothing is lost")
		}
	case 's':
		if err := sk.Toggle(); err != nil {
			d.setNote(at + " sink: " + err.Error())
		} else if d.https.snapshot("").Up {
			d.setNote(at + " sink started again: the https spool drains at the next retry")
		} else {
			d.setNote(at + " sink stopped: the https spool grows; nothing is lost")
		}
	case 'r':
		d.setNote(at + " renewing now (POST /v1/renew)...")
		g.Go(func() error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/renew", nil)
			resp, err := api.Do(req)
			if err != nil {
				d.setNote(at + " renew now: " + err.Error())
				return nil
			}
			resp.Body.Close()
			d.setNote(at + " renew now: " + resp.Status)
			return nil
		})
	}
}

// draw refreshes the agent's status and shows it: the full screen on a
// terminal, otherwise a status line every five seconds.
func (d *demo) draw(ctx context.Context, api *http.Client, tick bool) {
	st, err := fetchStatus(ctx, api)
	d.mu.Lock()
	if err == nil {
		d.status, d.errText = &st, ""
	} else if d.status == nil {
		d.errText = "enrolling"
	}
	d.mu.Unlock()
	snap := d.snapshot(time.Now())
	if d.o.Terminal {
		var b []byte
		width := 0
		if d.o.Width != nil {
			width = d.o.Width()
		}
		b = append(b, "\x1b[H"...)
		for _, l := range splitLines(Screen(snap)) {
			b = append(b, clip(l, width)...)
			b = append(b, "\x1b[K\r\n"...)
		}
		b = append(b, "\x1b[J"...)
		_, _ = d.o.Out.Write(b)
		return
	}
	if tick && int(snap.Now.Sub(d.started).Seconds())%5 == 0 {
		d.printf("%s", Line(snap))
	}
}

// clip cuts s to at most width-1 columns (one rune is one column here).
func clip(s string, width int) string {
	if width <= 1 {
		return s
	}
	n := 0
	for i := range s {
		if n == width-1 {
			return s[:i]
		}
		n++
	}
	return s
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

func (d *demo) snapshot(now time.Time) Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Snapshot{Now: now, Started: d.started, DeviceID: d.o.DeviceID, CertTTL: d.o.CertTTL,
		Steps: append([]Step(nil), d.steps...), Agent: d.status, AgentErr: d.errText,
		Events: d.ev.Recent(), Keys: d.o.KeysFD >= 0, Note: d.note, LogFile: filepath.Join(d.o.Dir, "demo.log")}
	s.MQTT = d.mqtt.snapshot("")
	s.HTTPS = d.https.snapshot("")
	if d.o.Duration > 0 {
		s.Deadline = d.started.Add(d.o.Duration)
	}
	return s
}

func fetchStatus(ctx context.Context, api *http.Client) (agent.Status, error) {
	var st agent.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := api.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status: %s", resp.Status)
	}
	return st, json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
}

// Verify is what a bounded run asserts, from the last snapshot: the
// enrollment happened, a renewal succeeded, and both backends acknowledged
// messages (counted on their side).
func Verify(s Snapshot) []Check {
	enrolled := Check{Name: "enrolled", Detail: "no enrollment seen"}
	if s.Agent != nil && s.Agent.Serial != "" && s.Steps[stepStored].Done {
		enrolled.OK, enrolled.Detail = true, "device "+s.Agent.DeviceID+", current serial "+short(s.Agent.Serial)
	}
	ok, failed := s.renewals()
	renewed := Check{Name: "renewed", OK: ok >= 1, Detail: fmt.Sprintf("%d renewals, %d failed attempts", ok, failed)}
	checks := []Check{enrolled, renewed}
	for _, b := range []struct {
		name string
		be   Backend
	}{{"mqtt broker acked", s.MQTT}, {"https sink acked", s.HTTPS}} {
		checks = append(checks, Check{Name: b.name, OK: b.be.Unique > 0,
			Detail: fmt.Sprintf("%d messages (%d distinct ids)", b.be.Received, b.be.Unique)})
	}
	return checks
}

// stoppedCheck confirms that nothing is left listening: the EST server,
// broker and sink refuse connections and the API socket is gone.
func stoppedCheck(addrs ...string) Check {
	sock := addrs[len(addrs)-1]
	for _, a := range addrs[:len(addrs)-1] {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			return Check{Name: "nothing left running", Detail: a + " still accepts connections"}
		}
	}
	if _, err := os.Stat(sock); err == nil {
		return Check{Name: "nothing left running", Detail: sock + " still exists"}
	}
	return Check{Name: "nothing left running", OK: true, Detail: "ports " + fmt.Sprint(addrs[:len(addrs)-1]) + " closed, API socket removed"}
}
