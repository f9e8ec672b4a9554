package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/lifecycle"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/syncbuf"
	"github.com/edgeagent/edgeagent/testkit/testpki"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// TestReloadRefusesWhatCannotRun: a config that validates but whose
// uplink cannot be built (an unreadable CA bundle) is refused as a whole at
// error level, and the running uplink keeps delivering; keys that need a
// restart are named and keep their values; renew.* applies at once and
// reschedules the renewal without renewing.
func TestReloadRefusesWhatCannotRun(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	broker := startTestBroker(t, c)
	dir := t.TempDir()
	cfg := testDaemonConfig(dir, "reload-1")
	cfg.MQTT.URL = broker.URL()
	cfg.MQTT.CABundle = broker.caFile
	cfg.Spool.Sync = "never"
	tok := c.Token(t, "reload-1").String()
	var logs syncbuf.Buffer
	reload := make(chan config.Config)
	var running []config.Config
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, Logger: newTestLogger(&logs), Ready: func() { close(ready) }, Reload: reload,
			Reloaded: func(c config.Config) { running = append(running, c) },
			Getenv:   func(k string) string { return map[string]string{"EDGEAGENT_TOKEN": tok}[k] }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon stopped: %v", err)
	}
	api := localapi.Client(cfg.API.Socket, 0)
	send := func(what string) {
		t.Helper()
		var id string
		poll.Until(t, 30*time.Second, "the API to take "+what, func() bool {
			resp, err := api.Post("http://agent/v1/telemetry", "application/json", strings.NewReader(`{"what":"`+what+`"}`))
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var out struct{ IDs []string }
			if json.NewDecoder(resp.Body).Decode(&out) != nil || len(out.IDs) != 1 {
				return false
			}
			id = out.IDs[0]
			return true
		})
		poll.Until(t, 30*time.Second, what+" at the broker", func() bool { return broker.has(id) })
	}
	send("before")

	bad := cfg
	bad.MQTT.CABundle = filepath.Join(dir, "missing.pem")
	bad.Renew.Fraction = 0.5
	reload <- bad
	poll.Until(t, 30*time.Second, "the refusal", func() bool {
		return strings.Contains(logs.String(), `level=ERROR msg="reload refused: mqtt; the running config stays"`)
	})
	if !strings.Contains(logs.String(), "missing.pem") || len(running) != 0 {
		t.Fatalf("refusal does not name the file, or something was applied (%d):\n%s", len(running), logs.String())
	}
	send("after a refused reload")

	status := func() Status { return fetchStatus(t, api) }
	var before Status
	poll.Until(t, 30*time.Second, "the renewal scheduled", func() bool { before = status(); return !before.NextRenew.IsZero() })

	next := cfg
	next.StateDir = filepath.Join(dir, "elsewhere")
	next.Renew.Fraction, next.Renew.RetryMax = 0.5, time.Minute
	reload <- next
	poll.Until(t, 30*time.Second, "the reload", func() bool { return strings.Contains(logs.String(), `msg="config reloaded" applied=[renew]`) })
	if !strings.Contains(logs.String(), "keys=[state_dir]") {
		t.Fatalf("the restart-only key is not named:\n%s", logs.String())
	}
	if len(running) != 1 || running[0].StateDir != cfg.StateDir || running[0].Renew.Fraction != 0.5 {
		t.Fatalf("running config after reload: %+v", running)
	}
	// The new renew.* reschedules (fraction 0.5±0.05 of the lifetime,
	// before the default 0.66±0.05) without renewing: a fleet-wide config
	// push must not send every device to the CA at once.
	var after Status
	poll.Until(t, 30*time.Second, "the renewal rescheduled with renew.fraction 0.5", func() bool {
		after = status()
		return after.Serial != before.Serial || after.NextRenew.Before(before.NextRenew)
	})
	if after.Serial != before.Serial || after.LastRenew.Result != "" || len(after.LastRenew.Counts) != 0 {
		t.Fatalf("the reload renewed the certificate: serial %s -> %s, last renewal %+v", before.Serial, after.Serial, after.LastRenew)
	}
	send("after a good reload")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSubmitDuringReload: local apps keep submitting while reloads replace
// the running configuration. Run with -race (CGO_ENABLED=1): Submit reads
// the device id the identity fixed at start, not anything Reload replaces.
func TestSubmitDuringReload(t *testing.T) {
	cfg := config.Default()
	cfg.DeviceID = "reload-race"
	sp, err := spool.Open(t.TempDir(), spool.Options{Sync: spool.SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	d := &Daemon{boot: cfg, cfg: cfg, log: slog.New(slog.DiscardHandler), clock: lifecycle.NewClock(nil),
		ren:    newRenewer(renewerParts{}, nil),
		intake: &intake{now: time.Now, deviceID: "reload-race", idPrefix: "p-", spools: map[string]*spool.Spool{"mqtt": sp}}}
	done := make(chan error, 1)
	go func() {
		for i := 0; i < 200; i++ {
			if _, err := d.intake.Submit(context.Background(), []json.RawMessage{json.RawMessage(`{"i":1}`)}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := 0; i < 200; i++ {
		n := cfg
		n.Renew.Fraction = 0.5 + float64(i%2)/10
		d.Reload(context.Background(), n)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	recs, err := sp.Next(context.Background(), 1)
	if err != nil || len(recs) != 1 || !strings.Contains(string(recs[0].Payload), `"device_id":"reload-race"`) {
		t.Fatalf("first record %v, %v", recs, err)
	}
}

// TestPlanReloadWalksEveryKey changes each key of the config on its own
// (config.Walk, so a key added later is walked too) and checks the plan
// puts it in exactly one place: applied live, applied by restarting its
// component, or named as needing a restart. None is silently ignored.
func TestPlanReloadWalksEveryKey(t *testing.T) {
	base := config.Default()
	base.MQTT.URL, base.HTTPS.URL = "mqtts://broker:8883", "https://sink/ingest"
	live := map[string]bool{"renew": true, "shutdown": true, "enroll": true, "log": true}
	components := map[string]bool{"mqtt": true, "https": true, "collector": true}
	keys := config.Keys()
	if len(keys) < 30 {
		t.Fatalf("only %d keys", len(keys))
	}
	for _, key := range keys {
		n := base
		// Copy the slices so changing n leaves base alone.
		n.Collector.Disks = append([]string(nil), base.Collector.Disks...)
		changed := false
		config.Walk(&n, func(k string, f reflect.Value) {
			if k != key {
				return
			}
			changed = true
			switch f.Kind() {
			case reflect.String:
				f.SetString(f.String() + "x")
			case reflect.Bool:
				f.SetBool(!f.Bool())
			case reflect.Int, reflect.Int64:
				f.SetInt(f.Int() + 1)
			case reflect.Uint32:
				f.SetUint(f.Uint() + 1)
			case reflect.Float64:
				f.SetFloat(f.Float() + 0.01)
			case reflect.Slice:
				f.Set(reflect.Append(f, reflect.ValueOf("/data")))
			default:
				t.Fatalf("%s: no way to change a %s", k, f.Type())
			}
		})
		if !changed {
			t.Fatalf("%s: not walked", key)
		}
		p := planReload(base, n)
		if d := config.Diff(base, n); len(d) != 1 || d[0] != key {
			t.Fatalf("%s: Diff says %v", key, d)
		}
		in := 0
		section, _, _ := strings.Cut(key, ".")
		liveName := section
		if section == "log" {
			liveName = key
		}
		for _, k := range p.needRestart {
			if k == key {
				in++
			}
		}
		for _, k := range p.apply {
			if k == key {
				in++
				if !(live[section] && len(p.live) == 1 && p.live[0] == liveName || components[section] && len(p.restart) == 1 && p.restart[0] == section) {
					t.Errorf("%s: applied, but live %v restart %v", key, p.live, p.restart)
				}
				if got := withKeys(base, n, p.apply); len(config.Diff(got, n)) != 0 {
					t.Errorf("%s: the running config does not take the new value", key)
				}
			}
		}
		if in != 1 {
			t.Errorf("%s: in %d places of the plan %+v, want exactly one", key, in, p)
		}
		t.Logf("%-28s apply=%v live=%v restart=%v needs-restart=%v", key, p.apply, p.live, p.restart, p.needRestart)
	}
	// Enabling or disabling an uplink needs a restart.
	n := base
	n.MQTT.URL = ""
	if p := planReload(base, n); len(p.needRestart) != 1 || p.needRestart[0] != "mqtt.url" || len(p.apply) != 0 {
		t.Fatalf("disabling mqtt: %+v", p)
	}
}
