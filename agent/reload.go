package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/agent/collector"
	"github.com/edgeagent/edgeagent/agent/config"
)

// runner is a component the daemon can stop and replace on reload.
type runner interface {
	Run(ctx context.Context) error
}

type runnerFunc func(ctx context.Context) error

func (f runnerFunc) Run(ctx context.Context) error { return f(ctx) }

// config returns the running configuration (SIGHUP may change parts of it).
func (d *Daemon) config() config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// supervise runs p's instance until ctx ends, replacing it with each one
// that arrives on p.restart (a reload): the old one is stopped first, the
// spool rewound so what it had in flight is sent again by the new one (at
// least once). A nil instance is a disabled component.
func (d *Daemon) supervise(ctx context.Context, p *part) error {
	for {
		cur := p.current()
		rctx, cancel := context.WithCancel(ctx)
		var errc chan error
		if cur != nil {
			errc = make(chan error, 1)
			go func() { errc <- cur.Run(rctx) }()
		}
		select {
		case err := <-errc:
			cancel()
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("agent: %s: %w", p.name, err)
			}
			return err
		case <-ctx.Done():
			cancel()
			if errc != nil {
				return <-errc
			}
			return nil
		case next := <-p.restart:
			cancel()
			if errc != nil {
				if err := <-errc; err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
					d.log.Warn("stopping for reload", "component", p.name, "err", err)
				}
			}
			if p.spool != nil {
				p.spool.Rewind()
			}
			p.set(next)
			d.log.Info("restarted with the reloaded config", "component", p.name)
		}
	}
}

// newCollector builds the system-metrics collector; nil when disabled.
func (d *Daemon) newCollector(c config.Collector) runner {
	if c.Interval <= 0 {
		return nil
	}
	col := collector.New(collector.Options{Disks: c.Disks, Now: d.clock.Now})
	return runnerFunc(func(ctx context.Context) error {
		q := &sampleQueue{submit: d.intake.Submit, log: d.log}
		return col.Run(ctx, c.Interval, func(s collector.Sample) error {
			b, err := json.Marshal(map[string]any{"system": s})
			if err != nil {
				return err
			}
			q.add(ctx, b)
			return nil
		})
	})
}

// reloadLoop applies each configuration from Options.Reload.
func (d *Daemon) reloadLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case n := <-d.o.Reload:
			d.Reload(ctx, n)
		}
	}
}

// reloadAction is how a changed key takes effect on reload.
type reloadAction int

const (
	// reloadNeedsRestart: the key keeps its running value until the agent
	// restarts, and the reload names it in a warning. Every key not
	// listed below is such, so a new key is never silently ignored.
	reloadNeedsRestart reloadAction = iota
	// reloadLive: the new value applies at once.
	reloadLive
	// reloadComponent: the component owning the key restarts with it.
	reloadComponent
)

// reloadRule says how a change of key from old to n applies, and for
// reloadComponent which component restarts. It is decided per key, from
// the config's own key list (config.Diff), so a key added to the config
// is covered without a change here.
func reloadRule(key string, old, n config.Config) (reloadAction, string) {
	section, _, _ := strings.Cut(key, ".")
	switch {
	case key == "log.level", section == "renew", section == "shutdown", section == "enroll":
		return reloadLive, ""
	case key == "mqtt.url" && (old.MQTT.URL == "") != (n.MQTT.URL == ""),
		key == "https.url" && (old.HTTPS.URL == "") != (n.HTTPS.URL == ""):
		// Enabling or disabling an uplink opens or closes a spool.
		return reloadNeedsRestart, ""
	case section == "mqtt", section == "https", section == "collector":
		return reloadComponent, section
	}
	return reloadNeedsRestart, ""
}

// reloadPlan is what a reload from old to n does.
type reloadPlan struct {
	apply       []string // keys whose new value the running config takes
	live        []string // sections applied at once
	restart     []string // components to restart, in key order
	needRestart []string // keys that keep their running value
}

// planReload is the pure decision of a reload: every changed key in
// exactly one of live (with its section), a restarted component, or
// needRestart.
func planReload(old, n config.Config) reloadPlan {
	var p reloadPlan
	seen := map[string]bool{}
	for _, key := range config.Diff(old, n) {
		action, comp := reloadRule(key, old, n)
		switch action {
		case reloadNeedsRestart:
			p.needRestart = append(p.needRestart, key)
			continue
		case reloadLive:
			name, _, _ := strings.Cut(key, ".")
			if name == "log" {
				name = key // the only live key of its section
			}
			if !seen[name] {
				seen[name] = true
				p.live = append(p.live, name)
			}
		case reloadComponent:
			if !seen[comp] {
				seen[comp] = true
				p.restart = append(p.restart, comp)
			}
		}
		p.apply = append(p.apply, key)
	}
	return p
}

// withKeys returns dst with the values of keys taken from src.
func withKeys(dst, src config.Config, keys []string) config.Config {
	vals := map[string]reflect.Value{}
	config.Walk(&src, func(key string, f reflect.Value) { vals[key] = f })
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	config.Walk(&dst, func(key string, f reflect.Value) {
		if want[key] {
			f.Set(vals[key])
		}
	})
	return dst
}

// Reload applies what of n can change while running (see reloadRule):
// renew.*, shutdown.*, enroll.* and log.level at once (log.level is the
// caller's: it owns the logger), collector.*, mqtt.* and https.* by
// restarting that component. Keys that need a restart are named in a
// warning and keep their running values. An invalid n, or one whose
// components cannot be built (say, an unreadable CA bundle), is refused as
// a whole and logged at error level: the running configuration stays.
func (d *Daemon) Reload(ctx context.Context, n config.Config) {
	if err := n.Validate(); err != nil {
		d.log.Error("reload refused: the new config is invalid; the running config stays", "err", err)
		return
	}
	old := d.config()
	plan := planReload(old, n)
	next := withKeys(old, n, plan.apply)
	type restart struct {
		ch chan runner
		r  runner
	}
	var restarts []restart
	var applied []string
	for _, name := range d.partOrder(plan.restart) {
		part, ok := d.parts[name]
		if !ok {
			// Not running (disabled at start): enabling it is a
			// restart-only change, see reloadRule.
			continue
		}
		r, err := part.build(next)
		if err != nil {
			d.log.Error("reload refused: "+name+"; the running config stays", "err", err)
			return
		}
		restarts = append(restarts, restart{part.restart, r})
		applied = append(applied, name)
	}
	d.mu.Lock()
	d.cfg = next
	d.mu.Unlock()
	if next.Renew != old.Renew {
		d.ren.Reschedule()
	}
	for _, r := range restarts {
		select {
		case r.ch <- r.r:
		case <-ctx.Done():
			return
		}
	}
	if len(plan.needRestart) > 0 {
		d.log.Warn("reload: these keys changed but apply only after a restart; their running values stay", "keys", plan.needRestart)
	}
	if d.o.Reloaded != nil {
		d.o.Reloaded(next)
	}
	d.log.Info("config reloaded", "applied", append(applied, plan.live...))
}

// partOrder returns names in the order the daemon runs its parts: the
// uplinks, then the collector.
func (d *Daemon) partOrder(names []string) []string {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var out []string
	for _, p := range append(append([]*part(nil), d.uplinks...), d.parts["collector"]) {
		if p != nil && want[p.name] {
			out = append(out, p.name)
		}
	}
	return out
}

// drain waits until every spool is empty (the uplinks keep running), or
// shutdown.drain_timeout passes.
func (d *Daemon) drain(ctx context.Context) {
	timeout := d.config().Shutdown.DrainTimeout
	depth := func() int {
		n := 0
		for _, sp := range d.spools {
			n += sp.Stats().Depth
		}
		return n
	}
	left := depth()
	if left == 0 {
		d.log.Info("stopping: nothing spooled")
		return
	}
	if timeout <= 0 {
		d.log.Info("stopping without draining (shutdown.drain_timeout 0); spooled messages are sent at the next start", "messages", left)
		return
	}
	d.log.Info("stopping: the local API no longer accepts messages; sending what is spooled", "messages", left, "deadline", timeout)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			d.log.Warn("drain deadline passed; the rest stays spooled for the next start", "messages", depth(), "deadline", timeout)
			return
		case <-tick.C:
			if depth() == 0 {
				d.log.Info("drained: every spooled message was acknowledged")
				return
			}
		}
	}
}
