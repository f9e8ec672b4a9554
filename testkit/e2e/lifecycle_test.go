package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/syncbuf"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// daemon is `edgeagent run` as a process whose exit status the test reads.
type daemon struct {
	t      testing.TB
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // set before done closes
	logs   *syncbuf.Buffer
	sock   string
	client *http.Client
}

func startDaemon(t testing.TB, cfgFile, sock string, env ...string) *daemon {
	t.Helper()
	cmd := exec.Command(built.agent, "run", "--config", cfgFile)
	cmd.Env = append(os.Environ(), env...)
	d := &daemon{t: t, cmd: cmd, done: make(chan struct{}), logs: &syncbuf.Buffer{}, sock: sock, client: localapi.Client(sock, 30*time.Second)}
	cmd.Stdout, cmd.Stderr = d.logs, d.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("agent log:\n%s", d.logs.String())
		}
	})
	poll.Until(t, 30*time.Second, "the agent's API", func() bool {
		select {
		case <-d.done:
			t.Fatalf("agent exited: %v\n%s", d.err, d.logs.String())
		default:
		}
		_, err := d.status()
		return err == nil
	})
	return d
}

// status reads GET /v1/status as a loose map.
func (d *daemon) status() (map[string]any, error) {
	resp, err := d.client.Get("http://agent/v1/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st map[string]any
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// send posts one message and returns its id ("" with the error if the
// agent did not accept it).
func (d *daemon) send(body string) (string, error) {
	resp, err := d.client.Post("http://agent/v1/telemetry", "application/json", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct{ IDs []string }
	if resp.StatusCode != http.StatusAccepted || json.NewDecoder(resp.Body).Decode(&out) != nil || len(out.IDs) != 1 {
		return "", fmt.Errorf("send: %s", resp.Status)
	}
	return out.IDs[0], nil
}

// waitLog waits until the agent's log contains s.
func (d *daemon) waitLog(timeout time.Duration, s string) {
	d.t.Helper()
	poll.Until(d.t, timeout, fmt.Sprintf("%q in the agent log", s), func() bool { return strings.Contains(d.logs.String(), s) })
}

// wait waits for the process to exit and returns its exit code.
func (d *daemon) wait(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.t.Fatalf("agent did not exit within %v", timeout)
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode()
	}
	if d.err != nil {
		d.t.Fatalf("agent: %v", d.err)
	}
	return 0
}

// backend is a real mosquitto that requires client certificates from
// edgeca's CA (caDir), and a subscriber on devices/# recording message ids.
type backend struct {
	broker *mosquitto.Broker
	caFile string // what the agent trusts for the broker (mqtt.ca_bundle)
	seen   *idSet
	sub    paho.Client
}

func startBackend(t testing.TB, caDir string, extra ...func(*mosquitto.Options)) *backend {
	t.Helper()
	pki := testpki.New(t, "backend-ca")
	srv := pki.Server(t)
	var trust bytes.Buffer
	for _, f := range []string{filepath.Join(caDir, "intermediate.pem"), filepath.Join(caDir, "root.pem"), pki.CAFile(t)} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		trust.Write(b)
	}
	cafile := filepath.Join(t.TempDir(), "mosquitto-ca.pem")
	if err := os.WriteFile(cafile, trust.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	o := mosquitto.Options{CAFile: cafile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Readers: []string{"admin"}}
	for _, f := range extra {
		f(&o)
	}
	b := &backend{broker: mosquitto.Start(t, o), caFile: pki.CAFile(t), seen: newIDSet()}
	admin := pki.Client(t, "admin")
	b.sub = paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + b.broker.Addr).SetClientID("admin-" + strings.ReplaceAll(t.Name(), "/", "-")).
		SetTLSConfig(&tls.Config{RootCAs: pki.Pool(), Certificates: []tls.Certificate{*admin.TLS}, MinVersion: tls.VersionTLS12}).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectRetryInterval(100 * time.Millisecond).
		SetOnConnectHandler(func(c paho.Client) {
			c.Subscribe("devices/+/telemetry", 1, func(_ paho.Client, m paho.Message) { b.seen.add(envelopeID(m.Payload())) }).Wait()
		}))
	if tk := b.sub.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscriber: %v", tk.Error())
	}
	t.Cleanup(func() { b.sub.Disconnect(0) })
	return b
}

// has reports whether every id arrived.
func (b *backend) has(ids []string) bool {
	missing, _ := b.seen.check(ids)
	return missing == 0
}

// freePort returns a loopback address nothing listens on right now.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// agentConfig is the YAML of an agent for these tests.
type agentConfig struct {
	DeviceID, StateDir, Socket, Metrics, MQTTURL, MQTTCA string
	Collector, Drain, RetryMin, RetryMax                 string
	Level, Policy                                        string
	// Extra is appended to the YAML as is (top-level keys the template
	// does not write).
	Extra string
}

func (c agentConfig) write(t testing.TB, path string) {
	t.Helper()
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	y := fmt.Sprintf(`device_id: %s
state_dir: %s
api:
  socket: %s
metrics:
  listen: %q
collector:
  interval: %s
mqtt:
  url: %s
  ca_bundle: %s
renew:
  retry_min: %s
  retry_max: %s
  expired_policy: %s
spool:
  sync: never
shutdown:
  drain_timeout: %s
log:
  level: %s
`, c.DeviceID, c.StateDir, c.Socket, c.Metrics, def(c.Collector, "0s"), c.MQTTURL, c.MQTTCA,
		def(c.RetryMin, "10s"), def(c.RetryMax, "30m"), def(c.Policy, "rebootstrap"), def(c.Drain, "10s"), def(c.Level, "info"))
	y += c.Extra
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSIGTERMDrainsAndExitsZero: with the broker down, SIGTERM makes the
// agent stop taking messages at once and keep trying to send what it
// spooled until shutdown.drain_timeout. Past the deadline it exits 0 and
// the messages stay spooled; the next time, the broker comes back during
// the drain and the agent sends everything (both batches) before exiting 0.
func TestSIGTERMDrainsAndExitsZero(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	mosquitto.Binary(t)
	caDir, caURL := startCA(t, "--cert-ttl", "1h")
	tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", caDir, "--url", caURL, "--device", "drain-dev"))
	be := startBackend(t, caDir)
	work := t.TempDir()
	sock := filepath.Join(work, "api.sock")
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	cfg := agentConfig{DeviceID: "drain-dev", StateDir: filepath.Join(work, "state"), Socket: sock, MQTTURL: be.broker.URL(), MQTTCA: be.caFile, Drain: "2s"}
	cfg.write(t, cfgFile)

	a := startDaemon(t, cfgFile, sock, "EDGEAGENT_TOKEN="+tok)
	poll.Until(t, 30*time.Second, "mqtt connected", func() bool {
		st, err := a.status()
		return err == nil && st["uplinks"].(map[string]any)["mqtt"].(map[string]any)["connected"] == true
	})
	be.broker.Stop()
	var ids []string
	for i := 0; i < 50; i++ {
		id, err := a.send(fmt.Sprintf(`{"batch":1,"n":%d}`, i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	a.waitLog(10*time.Second, "the local API no longer accepts messages")
	if code := a.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code %d after the drain deadline, want 0", code)
	}
	if !strings.Contains(a.logs.String(), "drain deadline passed") {
		t.Fatalf("no drain-deadline log:\n%s", a.logs.String())
	}
	if _, err := a.send(`{"late":true}`); err == nil {
		t.Fatal("the stopped agent still accepts messages")
	}

	// Again, now with a long deadline: the broker returns while the agent
	// drains, and both batches arrive before it exits.
	cfg.Drain = "60s"
	cfg.write(t, cfgFile)
	a = startDaemon(t, cfgFile, sock)
	for i := 0; i < 50; i++ {
		id, err := a.send(fmt.Sprintf(`{"batch":2,"n":%d}`, i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := a.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	a.waitLog(10*time.Second, "the local API no longer accepts messages")
	if _, err := a.send(`{"during":"drain"}`); err == nil {
		t.Fatal("the draining agent still accepts messages")
	}
	be.broker.Start()
	if code := a.wait(60 * time.Second); code != 0 {
		t.Fatalf("exit code %d after draining, want 0", code)
	}
	if !strings.Contains(a.logs.String(), "drained: every spooled message was acknowledged") {
		t.Fatalf("no drained log:\n%s", a.logs.String())
	}
	poll.Until(t, 30*time.Second, "both batches at the subscriber", func() bool { return be.has(ids) })
}

// TestSIGHUPReloadsConfig: SIGHUP applies a new log level, turns the
// collector on and moves the MQTT uplink to another broker, live; a bad
// config is logged at error level and the running one keeps working.
func TestSIGHUPReloadsConfig(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	mosquitto.Binary(t)
	caDir, caURL := startCA(t, "--cert-ttl", "1h")
	tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", caDir, "--url", caURL, "--device", "hup-dev"))
	be1, be2 := startBackend(t, caDir), startBackend(t, caDir)
	work := t.TempDir()
	sock := filepath.Join(work, "api.sock")
	cfgFile := filepath.Join(work, "edgeagent.yaml")
	cfg := agentConfig{DeviceID: "hup-dev", StateDir: filepath.Join(work, "state"), Socket: sock, MQTTURL: be1.broker.URL(), MQTTCA: be1.caFile, Level: "info"}
	cfg.write(t, cfgFile)
	a := startDaemon(t, cfgFile, sock, "EDGEAGENT_TOKEN="+tok)
	id1, err := a.send(`{"to":"broker 1"}`)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "a message at broker 1", func() bool { return be1.has([]string{id1}) })

	hup := func() {
		t.Helper()
		if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	// A bad config: refused at error level, the agent keeps running.
	if err := os.WriteFile(cfgFile, []byte("mqtt:\n  url: http://nope\nrenew:\n  fraction: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hup()
	a.waitLog(10*time.Second, "level=ERROR msg=\"SIGHUP: config not reloaded; the running config stays\"")
	if !strings.Contains(a.logs.String(), "mqtt.url") || !strings.Contains(a.logs.String(), "renew.fraction") {
		t.Fatalf("the refusal does not name the bad keys:\n%s", a.logs.String())
	}
	id2, err := a.send(`{"to":"broker 1, after a bad reload"}`)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "a message at broker 1 after a bad reload", func() bool { return be1.has([]string{id2}) })

	// A good one: debug logging, the collector every second, broker 2.
	cfg.Level, cfg.Collector, cfg.MQTTURL, cfg.MQTTCA = "debug", "1s", be2.broker.URL(), be2.caFile
	cfg.write(t, cfgFile)
	hup()
	a.waitLog(10*time.Second, "msg=\"config reloaded\" applied=\"[mqtt collector log.level]\"")
	id3, err := a.send(`{"to":"broker 2"}`)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "a message at broker 2", func() bool { return be2.has([]string{id3}) })
	poll.Until(t, 30*time.Second, "collector samples at broker 2", func() bool {
		be2.seen.mu.Lock()
		defer be2.seen.mu.Unlock()
		return len(be2.seen.seen) >= 3 // id3 and at least two samples
	})
	a.waitLog(10*time.Second, "level=DEBUG")
	if be1.has([]string{id3}) {
		t.Fatal("a message after the reload went to the old broker")
	}
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
