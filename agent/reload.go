package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/edgeagent/edgeagent/agent/collector"
	"github.com/edgeagent/edgeagent/agent/config"
	uhttps "github.com/edgeagent/edgeagent/uplink/https"
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

// uplinks returns the running uplinks (nil when not configured).
func (d *Daemon) uplinks() (*uhttps.Sender, Uplink) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.https, d.mqtt
}

// supervise runs cur until ctx ends, replacing it with each runner that
// arrives on restart (a reload): the old one is stopped first, its spool
// rewound so what it had in flight is sent again by the new one (at least
// once), then set records the new one. A nil runner is a disabled
// component.
func (d *Daemon) supervise(ctx context.Context, name string, restart <-chan runner, cur runner, set func(runner)) error {
	for {
		rctx, cancel := context.WithCancel(ctx)
		var errc chan error
		if cur != nil {
			errc = make(chan error, 1)
			r := cur
			go func() { errc <- r.Run(rctx) }()
		}
		select {
		case err := <-errc:
			cancel()
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("agent: %s: %w", name, err)
			}
			return err
		case <-ctx.Done():
			cancel()
			if errc != nil {
				return <-errc
			}
			return nil
		case next := <-restart:
			cancel()
			if errc != nil {
				if err := <-errc; err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
					d.log.Warn("stopping for reload", "component", name, "err", err)
				}
			}
			if sp, ok := d.spools[name]; ok {
				sp.Rewind()
			}
			cur = next
			if set != nil && next != nil {
				set(next)
			}
			d.log.Info("restarted with the reloaded config", "component", name)
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
		return col.Run(ctx, c.Interval, func(s collector.Sample) error {
			b, err := json.Marshal(map[string]any{"system": s})
			if err != nil {
				return err
			}
			ids, err := d.Submit(ctx, []json.RawMessage{b})
			if err != nil {
				d.log.Warn("collector: queue sample", "err", err)
				return nil
			}
			d.log.Debug("collector: sample queued", "id", ids[0])
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

// Reload applies what of n can change while running: renew.* and
// shutdown.* at once, enroll.* for the next re-enrollment, collector.*,
// mqtt.* and https.* by restarting that component (log.level is the
// caller's: it owns the logger). Keys that need a restart are named in a
// warning and keep their running values. An invalid n, or one whose
// uplinks cannot be built (say, an unreadable CA bundle), is refused as a
// whole and logged at error level: the running configuration stays.
func (d *Daemon) Reload(ctx context.Context, n config.Config) {
	if err := n.Validate(); err != nil {
		d.log.Error("reload refused: the new config is invalid; the running config stays", "err", err)
		return
	}
	old := d.config()
	next := old
	var applied, needRestart []string
	for _, k := range []struct {
		key      string
		old, new any
	}{
		{"device_id", old.DeviceID, n.DeviceID}, {"state_dir", old.StateDir, n.StateDir}, {"keystore", old.Keystore, n.Keystore},
		{"key_algorithm", old.KeyAlgorithm, n.KeyAlgorithm}, {"tpm", old.TPM, n.TPM}, {"api", old.API, n.API},
		{"metrics", old.Metrics, n.Metrics}, {"spool", old.Spool, n.Spool}, {"log.format", old.Log.Format, n.Log.Format},
	} {
		if !reflect.DeepEqual(k.old, k.new) {
			needRestart = append(needRestart, k.key)
		}
	}
	type restart struct {
		ch chan runner
		r  runner
	}
	var restarts []restart
	if !reflect.DeepEqual(old.MQTT, n.MQTT) {
		if (old.MQTT.URL == "") != (n.MQTT.URL == "") {
			needRestart = append(needRestart, "mqtt.url (enabling or disabling an uplink)")
		} else {
			up, err := d.newMQTT(n.MQTT, d.spools["mqtt"])
			if err != nil {
				d.log.Error("reload refused: mqtt; the running config stays", "err", err)
				return
			}
			next.MQTT = n.MQTT
			restarts = append(restarts, restart{d.restartMQTT, up})
			applied = append(applied, "mqtt")
		}
	}
	if !reflect.DeepEqual(old.HTTPS, n.HTTPS) {
		if (old.HTTPS.URL == "") != (n.HTTPS.URL == "") {
			needRestart = append(needRestart, "https.url (enabling or disabling an uplink)")
		} else {
			up, err := d.newHTTPS(n.HTTPS, d.spools["https"])
			if err != nil {
				d.log.Error("reload refused: https; the running config stays", "err", err)
				return
			}
			next.HTTPS = n.HTTPS
			restarts = append(restarts, restart{d.restartHTTPS, up})
			applied = append(applied, "https")
		}
	}
	if !reflect.DeepEqual(old.Collector, n.Collector) {
		next.Collector = n.Collector
		restarts = append(restarts, restart{d.restartCollector, d.newCollector(n.Collector)})
		applied = append(applied, "collector")
	}
	if old.Renew != n.Renew {
		next.Renew = n.Renew
		applied = append(applied, "renew")
	}
	if old.Shutdown != n.Shutdown {
		next.Shutdown = n.Shutdown
		applied = append(applied, "shutdown")
	}
	if old.Enroll != n.Enroll {
		next.Enroll = n.Enroll
		applied = append(applied, "enroll")
	}
	if old.Log.Level != n.Log.Level {
		next.Log.Level = n.Log.Level
		applied = append(applied, "log.level")
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
	if len(needRestart) > 0 {
		d.log.Warn("reload: these keys changed but apply only after a restart; their running values stay", "keys", needRestart)
	}
	if d.o.Reloaded != nil {
		d.o.Reloaded(next)
	}
	d.log.Info("config reloaded", "applied", applied)
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
