package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/lifecycle"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/internal/syncbuf"
	"github.com/edgeagent/edgeagent/internal/testca"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// TestReloadRefusesWhatCannotRun: a config that validates but whose
// uplink cannot be built (an unreadable CA bundle) is refused as a whole at
// error level, and the running uplink keeps delivering; keys that need a
// restart are named and keep their values; renew.* applies at once and
// reschedules the renewal without renewing.
func TestReloadRefusesWhatCannotRun(t *testing.T) {
	c := testca.Start(t, testca.Options{})
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
		eventually(t, "the API to take "+what, func() bool {
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
		eventually(t, what+" at the broker", func() bool { return broker.has(id) })
	}
	send("before")

	bad := cfg
	bad.MQTT.CABundle = filepath.Join(dir, "missing.pem")
	bad.Renew.Fraction = 0.5
	reload <- bad
	eventually(t, "the refusal", func() bool {
		return strings.Contains(logs.String(), `level=ERROR msg="reload refused: mqtt; the running config stays"`)
	})
	if !strings.Contains(logs.String(), "missing.pem") || len(running) != 0 {
		t.Fatalf("refusal does not name the file, or something was applied (%d):\n%s", len(running), logs.String())
	}
	send("after a refused reload")

	status := func() Status { return fetchStatus(t, api) }
	var before Status
	eventually(t, "the renewal scheduled", func() bool { before = status(); return !before.NextRenew.IsZero() })

	next := cfg
	next.StateDir = filepath.Join(dir, "elsewhere")
	next.Renew.Fraction, next.Renew.RetryMax = 0.5, time.Minute
	reload <- next
	eventually(t, "the reload", func() bool { return strings.Contains(logs.String(), `msg="config reloaded" applied=[renew]`) })
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
	eventually(t, "the renewal rescheduled with renew.fraction 0.5", func() bool {
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
		spools: map[string]*spool.Spool{"mqtt": sp}, ren: newRenewer(renewerParts{}, nil), idPrefix: "p-", deviceID: "reload-race"}
	done := make(chan error, 1)
	go func() {
		for i := 0; i < 200; i++ {
			if _, err := d.Submit(context.Background(), []json.RawMessage{json.RawMessage(`{"i":1}`)}); err != nil {
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
