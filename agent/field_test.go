package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/keystore/file"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/syncbuf"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// packagedConfig loads packaging/edgeagent.yaml, the config the package
// installs, with the environment overrides an operator would set.
func packagedConfig(t *testing.T, env map[string]string) config.Config {
	t.Helper()
	var list []string
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	cfg, err := config.Load(filepath.Join("..", "packaging", "edgeagent.yaml"), list)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startDaemon runs the daemon until the test ends and returns its API
// client once it is ready.
func startDaemon(t *testing.T, o Options) *http.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	o.Ready = func() { close(ready) }
	go func() { done <- Run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		done <- nil
		t.Fatalf("daemon stopped: %v", err)
	}
	api := localapi.Client(o.Config.API.Socket, 0)
	poll.Until(t, 30*time.Second, "the local API", func() bool {
		resp, err := api.Get("http://agent/v1/status")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return api
}

func postTelemetry(t *testing.T, api *http.Client, n int) []string {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i := 0; i < n; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"reading":%d}`, i)
	}
	buf.WriteByte(']')
	resp, err := api.Post("http://agent/v1/telemetry", "application/json", &buf)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ IDs []string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("post: %d %v", resp.StatusCode, err)
	}
	return out.IDs
}

// TestPackageFlowPublishesAsEnrolledDevice follows the README's package
// flow: `edgeagent enroll --device-id sensor-0001`, then `edgeagent run`
// with the packaged config, which does not set device_id. The agent must
// publish as sensor-0001 (the certificate's id), which a real mosquitto
// with a per-device ACL lets through; the messages are counted at a
// subscriber, not at PUBACK (MQTT 3.1.1 acknowledges a denied publish).
func TestPackageFlowPublishesAsEnrolledDevice(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	broker := startTestBroker(t, c)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	ks, err := file.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Token(t, "sensor-0001")
	if _, err := Enroll(context.Background(), EnrollOptions{StateDir: state, DeviceID: "sensor-0001", Keystore: ks, Token: &tok}); err != nil {
		t.Fatal(err)
	}
	_ = ks.Close()
	cfg := packagedConfig(t, map[string]string{
		"EDGEAGENT_STATE_DIR": state, "EDGEAGENT_API_SOCKET": filepath.Join(dir, "api.sock"), "EDGEAGENT_METRICS_LISTEN": "",
		"EDGEAGENT_COLLECTOR_INTERVAL": "0", "EDGEAGENT_MQTT_URL": broker.URL(), "EDGEAGENT_MQTT_CA_BUNDLE": broker.caFile,
		"EDGEAGENT_SPOOL_SYNC": "never",
	})
	if cfg.DeviceID != "" {
		t.Fatalf("the packaged config sets device_id %q; this test is about a config that does not", cfg.DeviceID)
	}
	var logs syncbuf.Buffer
	// No grace for the status echo: "not dropping" then means the
	// agent's own retained status came back through the broker.
	api := startDaemon(t, Options{Config: cfg, Logger: newTestLogger(&logs), EchoGrace: time.Nanosecond})
	ids := postTelemetry(t, api, 20)
	poll.Until(t, 30*time.Second, "every message at the subscriber", func() bool { return broker.has(ids...) })
	poll.Until(t, 30*time.Second, "the status echo and a healthy agent", func() bool {
		st := fetchStatus(t, api)
		return st.Healthy && !st.Uplinks["mqtt"].Dropping
	})
	if st := fetchStatus(t, api); st.DeviceID != "sensor-0001" {
		t.Fatalf("status device %q", st.DeviceID)
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "sensor-0001-") {
			t.Fatalf("message id %q is not the enrolled device's", id)
		}
	}
	if !strings.Contains(logs.String(), `msg="agent running" device_id=sensor-0001`) {
		t.Fatalf("log does not say it runs as sensor-0001:\n%s", logs.String())
	}
}

// TestBrokerDroppingPublishesIsLoud: a broker whose ACL denies the
// device's topics still acknowledges every publish (MQTT 3.1.1), so the
// acked count climbs while nothing arrives. The agent notices that its own
// retained status never comes back and says so in status, health and
// metrics.
func TestBrokerDroppingPublishesIsLoud(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	broker := startTestBroker(t, c)
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, "denied-1").String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(dir, "denied-1")
	cfg.Enroll.TokenFile = tokFile
	cfg.MQTT.URL, cfg.MQTT.CABundle = broker.URL(), broker.caFile
	// The broker's ACL allows devices/<CN>/# only.
	cfg.MQTT.TelemetryTopic, cfg.MQTT.StatusTopic = "elsewhere/{device_id}/telemetry", "elsewhere/{device_id}/status"
	cfg.Spool.Sync = "never"
	cfg.Metrics.Listen = freeAddr(t)
	api := startDaemon(t, Options{Config: cfg, EchoGrace: time.Nanosecond})
	ids := postTelemetry(t, api, 5)
	var st Status
	poll.Until(t, 30*time.Second, "the broker's acks and the dropping noticed", func() bool {
		st = fetchStatus(t, api)
		u := st.Uplinks["mqtt"]
		return u.Acked >= uint64(len(ids)) && u.Dropping && !st.Healthy
	})
	if broker.has(ids[0]) {
		t.Fatal("the broker delivered a message its ACL denies: this test proves nothing")
	}
	if len(st.Problems) == 0 || !strings.Contains(st.Problems[0], "does not deliver") {
		t.Fatalf("problems %q", st.Problems)
	}
	resp, err := http.Get("http://" + cfg.Metrics.Listen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `edgeagent_uplink_broker_dropping{uplink="mqtt"} 1`) {
		t.Fatalf("metrics:\n%s", body)
	}
	var text bytes.Buffer
	if err := WriteStatus(&text, st, st.Now); err != nil || !strings.Contains(text.String(), "THE BROKER DROPS") {
		t.Fatalf("status text: %v\n%s", err, text.String())
	}
}

// TestStoredIdentityDecidesTheDeviceID: a config whose device_id
// contradicts the stored identity is refused with both names, and the
// refusal needs the operator (systemd does not restart it).
func TestStoredIdentityDecidesTheDeviceID(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	dir, ks, _ := enrolled(t, c, "dev-a")
	_ = ks.Close()
	for _, tc := range []struct {
		configured string
		wantErr    bool
	}{{"", false}, {"dev-a", false}, {"dev-b", true}} {
		t.Run("device_id="+tc.configured, func(t *testing.T) {
			cfg := testDaemonConfig(t.TempDir(), tc.configured)
			cfg.StateDir = dir
			if !tc.wantErr {
				if st := fetchStatus(t, startDaemon(t, Options{Config: cfg})); st.DeviceID != "dev-a" {
					t.Fatalf("runs as %q", st.DeviceID)
				}
				return
			}
			err := Run(context.Background(), Options{Config: cfg, Ready: func() { t.Error("started") }})
			var mm *DeviceIDMismatchError
			if !errors.As(err, &mm) || !errors.Is(err, ErrNeedsOperator) || !strings.Contains(err.Error(), `"dev-a"`) || !strings.Contains(err.Error(), `"dev-b"`) {
				t.Fatalf("Run: %v, want a mismatch naming dev-a and dev-b", err)
			}
		})
	}
}

// TestDamagedIdentityNeverReenrolls: with part of an identity missing or
// broken next to a working key, the daemon refuses to start with what is
// wrong and `enroll --force` as the way out, although its token could
// enroll again; the CA issues nothing. enroll --force then recovers under
// the same device id.
func TestDamagedIdentityNeverReenrolls(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	for _, tc := range []struct {
		name   string
		damage func(dir string) error
		want   string
	}{
		{"cert.pem missing", func(dir string) error { return os.Remove(filepath.Join(dir, CertFile)) }, "cert.pem is missing"},
		{"cert.pem garbage", func(dir string) error { return os.WriteFile(filepath.Join(dir, CertFile), []byte("garbage"), 0o644) }, "no certificates"},
		{"identity.json missing", func(dir string) error { return os.Remove(filepath.Join(dir, IdentityFile)) }, "identity.json is missing"},
		{"identity.json garbage", func(dir string) error { return os.WriteFile(filepath.Join(dir, IdentityFile), []byte("{"), 0o644) }, "identity.json"},
		{"ca.pem missing", func(dir string) error { return os.Remove(filepath.Join(dir, CAFile)) }, "ca.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "dmg-" + strings.NewReplacer(" ", "-", ".", "-").Replace(tc.name)
			dir, ks, _ := enrolled(t, c, id)
			_ = ks.Close()
			if err := tc.damage(dir); err != nil {
				t.Fatal(err)
			}
			// A token with uses left, bound to this device: it could
			// enroll again, and must not be used.
			tok, _, err := c.CreateToken(context.Background(), ca.TokenOptions{URL: c.URL, Device: id, Uses: 5})
			if err != nil {
				t.Fatal(err)
			}
			tokFile := filepath.Join(t.TempDir(), "token")
			if err := os.WriteFile(tokFile, []byte(tok.String()), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := testDaemonConfig(t.TempDir(), "")
			cfg.StateDir, cfg.Enroll.TokenFile = dir, tokFile
			before := readAll(t, dir)
			err = Run(context.Background(), Options{Config: cfg, Ready: func() { t.Error("started") }})
			if !errors.Is(err, ErrDamagedIdentity) || !errors.Is(err, ErrNeedsOperator) || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), "edgeagent enroll --force") {
				t.Fatalf("Run: %v, want a damaged identity error about %q with the way out", err, tc.want)
			}
			if after := readAll(t, dir); after != before {
				t.Fatal("the state dir changed")
			}
			// Enroll without --force refuses too; with it, it recovers the
			// device id from identity.json when that is readable.
			ks2, err := file.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer ks2.Close()
			opts, err := PlanEnrollment(cfg, Secrets{})
			if err != nil {
				t.Fatal(err)
			}
			opts.Keystore = ks2
			if _, err := Enroll(context.Background(), opts); !errors.Is(err, ErrIdentityExists) {
				t.Fatalf("enroll without --force over a damaged identity: %v", err)
			}
			if !strings.Contains(tc.name, "identity.json") && opts.DeviceID != id {
				t.Fatalf("enroll --force would ask for %q, not the device's %q", opts.DeviceID, id)
			}
			opts.Force = true
			opts.DeviceID = id
			nid, err := Enroll(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := LoadIdentity(dir, ks2); err != nil || nid.DeviceID != id {
				t.Fatalf("after enroll --force: %v, device %q", err, nid.DeviceID)
			}
		})
	}
}

// TestRefusedEnrollmentNeedsTheOperator: the README flow with a token file
// bound to sensor-0001 and no device_id in the config asks for the host
// name; the CA answers device_not_allowed, which no retry changes. Run
// fails at once with what to set, marked ErrNeedsOperator (exit 78, which
// the unit does not restart on), and the token stays unused.
func TestRefusedEnrollmentNeedsTheOperator(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	host, _ := os.Hostname()
	if host == "sensor-0001" {
		t.Fatal("this test needs a host name other than sensor-0001")
	}
	tok := c.Token(t, "sensor-0001")
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(tok.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(dir, "")
	cfg.Enroll.TokenFile = tokFile
	err := Run(context.Background(), Options{Config: cfg})
	if !errors.Is(err, ErrNeedsOperator) || !strings.Contains(err.Error(), "device_not_allowed") ||
		!strings.Contains(err.Error(), "device_id is not set") || !strings.Contains(err.Error(), fmt.Sprintf("%q", host)) {
		t.Fatalf("Run: %v", err)
	}
	// With device_id set as the error says, the same token enrolls.
	cfg.DeviceID = "sensor-0001"
	if st := fetchStatus(t, startDaemon(t, Options{Config: cfg})); st.DeviceID != "sensor-0001" {
		t.Fatalf("runs as %q", st.DeviceID)
	}
}

// TestPlanEnrollment table-tests the identity source's rules.
func TestPlanEnrollment(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	good := testTokenString()
	if err := os.WriteFile(tokFile, []byte(good+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose")
	if err := os.WriteFile(loose, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("secret-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pin := "sha256:" + strings.Repeat("ab", 32)
	base := func(f func(c *config.Config)) config.Config {
		c := config.Default()
		c.StateDir = filepath.Join(dir, "state")
		c.DeviceID = "dev-1"
		f(&c)
		return c
	}
	cases := []struct {
		name    string
		cfg     config.Config
		sec     Secrets
		wantKey string // "" for success
		check   func(o EnrollOptions) bool
	}{
		{"token file", base(func(c *config.Config) { c.Enroll.TokenFile = tokFile }), Secrets{}, "",
			func(o EnrollOptions) bool { return o.Token != nil && o.DeviceID == "dev-1" }},
		{"token from env", base(func(c *config.Config) {}), Secrets{Token: good, TokenFrom: "EDGEAGENT_TOKEN"}, "",
			func(o EnrollOptions) bool { return o.Token != nil }},
		{"token twice", base(func(c *config.Config) { c.Enroll.TokenFile = tokFile }), Secrets{Token: good}, "enroll.token_file", nil},
		{"loose token file", base(func(c *config.Config) { c.Enroll.TokenFile = loose }), Secrets{}, "enroll.token_file", nil},
		{"token and server", base(func(c *config.Config) { c.Enroll.Server = "https://ca" }), Secrets{Token: good}, "enroll.server", nil},
		{"bad token", base(func(c *config.Config) {}), Secrets{Token: "edgetok1.xx"}, "enroll.token", nil},
		{"nothing", base(func(c *config.Config) {}), Secrets{}, "enroll.token_file", nil},
		{"server without trust", base(func(c *config.Config) { c.Enroll.Server, c.Enroll.Username = "https://ca", "u" }), Secrets{Password: "p"}, "enroll.ca_pin", nil},
		{"server", base(func(c *config.Config) {
			c.Enroll.Server, c.Enroll.CAPin, c.Enroll.Username, c.Enroll.PasswordFile = "https://ca", pin, "u", pw
		}), Secrets{}, "", func(o EnrollOptions) bool {
			return o.Password == "secret-password" && o.Server == "https://ca" && !o.CAPin.IsZero()
		}},
		{"server no user", base(func(c *config.Config) { c.Enroll.Server, c.Enroll.CAPin = "https://ca", pin }), Secrets{Password: "p"}, "enroll.username", nil},
		{"server no password", base(func(c *config.Config) { c.Enroll.Server, c.Enroll.CAPin, c.Enroll.Username = "https://ca", pin, "u" }), Secrets{}, "enroll.password_file", nil},
		{"http server", base(func(c *config.Config) { c.Enroll.Server, c.Enroll.CAPin = "http://ca", pin }), Secrets{}, "enroll.server", nil},
		{"bad bundle", base(func(c *config.Config) { c.Enroll.CABundle = pw }), Secrets{Token: good}, "enroll.ca_bundle", nil},
		{"bad device id", base(func(c *config.Config) { c.DeviceID = "a b" }), Secrets{Token: good}, "device_id", nil},
		{"bad key algorithm", base(func(c *config.Config) { c.KeyAlgorithm = "dsa" }), Secrets{Token: good}, "key_algorithm", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := PlanEnrollment(tc.cfg, tc.sec)
			if tc.wantKey == "" {
				if err != nil || !tc.check(o) {
					t.Fatalf("PlanEnrollment: %v, %+v", err, o)
				}
				return
			}
			var fe *config.FieldError
			if !errors.As(err, &fe) || fe.Key != tc.wantKey || !errors.Is(err, ErrNeedsOperator) {
				t.Fatalf("PlanEnrollment: %v, want an error about %s", err, tc.wantKey)
			}
		})
	}
}

// TestFirstDeviceID: configured, else the earlier identity's, else the
// host name.
func TestFirstDeviceID(t *testing.T) {
	dir := t.TempDir()
	host, _ := os.Hostname()
	if got, _ := FirstDeviceID("", dir); got != host {
		t.Fatalf("empty state: %q, want the host name %q", got, host)
	}
	if err := os.WriteFile(filepath.Join(dir, IdentityFile), []byte(`{"device_id":"earlier","server":"https://ca"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := FirstDeviceID("", dir); got != "earlier" {
		t.Fatalf("with identity.json: %q", got)
	}
	if got, _ := FirstDeviceID("set", dir); got != "set" {
		t.Fatalf("configured: %q", got)
	}
}

// testTokenString is a well-formed token (no CA behind it).
func testTokenString() string {
	return token.Token{URL: "https://ca.example:8443", Pin: token.Pin{1, 2, 3}, ID: "tok-1", Secret: strings.Repeat("s", 30)}.String()
}

// TestDamagedIdentityPolicyReenroll: with enroll.damaged_identity:
// reenroll the daemon moves the damaged files aside (nothing is deleted)
// and enrolls again with its token under the device's id, keeping the key.
func TestDamagedIdentityPolicyReenroll(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	dir, ks, old := enrolled(t, c, "dmg-policy")
	_ = ks.Close()
	if err := os.Remove(filepath.Join(dir, CertFile)); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, "dmg-policy").String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(t.TempDir(), "")
	cfg.StateDir, cfg.Enroll.TokenFile, cfg.Enroll.DamagedIdentity = dir, tokFile, "reenroll"
	st := fetchStatus(t, startDaemon(t, Options{Config: cfg}))
	if st.DeviceID != "dmg-policy" || st.Serial == old.Serial() {
		t.Fatalf("after re-enrolling: device %q serial %s (was %s)", st.DeviceID, st.Serial, old.Serial())
	}
	aside, _ := filepath.Glob(filepath.Join(dir, "damaged-*", IdentityFile))
	if len(aside) != 1 {
		t.Fatalf("the damaged identity was not kept aside: %v", aside)
	}
	ks2, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ks2.Close()
	if k, err := ks2.Current(); err != nil || !samePublic(k.Public(), old.Key.Public()) {
		t.Fatalf("the key changed: %v", err)
	}
}

// TestFirstEnrollmentWaitsOutACAOutage: a device that first starts while
// its CA is down retries in the process with backoff (no exit, no
// restart loop) and enrolls once the CA is back.
func TestFirstEnrollmentWaitsOutACAOutage(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{})
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, "outage-1").String()), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Stop()
	cfg := testDaemonConfig(dir, "outage-1")
	cfg.Enroll.TokenFile = tokFile
	cfg.Renew.RetryMin, cfg.Renew.RetryMax = 50*time.Millisecond, 200*time.Millisecond
	var logs syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, Logger: newTestLogger(&logs), Ready: func() { close(ready) }})
	}()
	poll.Until(t, 30*time.Second, "two failed attempts", func() bool { return strings.Count(logs.String(), "enrollment failed; retrying") >= 2 })
	select {
	case err := <-done:
		t.Fatalf("Run gave up while the CA was down: %v", err)
	default:
	}
	c.Resume()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v\n%s", err, logs.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Stopped while retrying: Run returns nil (SIGTERM during enrollment).
	c.Stop()
	cfg2 := testDaemonConfig(t.TempDir(), "outage-2")
	cfg2.Enroll.TokenFile = tokFile
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	var logs2 syncbuf.Buffer
	go func() { done2 <- Run(ctx2, Options{Config: cfg2, Logger: newTestLogger(&logs2)}) }()
	poll.Until(t, 30*time.Second, "a failed attempt", func() bool { return strings.Contains(logs2.String(), "enrollment failed; retrying") })
	cancel2()
	if err := <-done2; err != nil {
		t.Fatalf("Run stopped while enrolling: %v", err)
	}
}

// TestAttestWithoutAnythingNeedsTheOperator: enroll.attest: tpm with no
// token, no server and no earlier identity to recover is an operator's
// problem (exit 78), not something to retry.
func TestAttestWithoutAnythingNeedsTheOperator(t *testing.T) {
	dir := t.TempDir()
	ks, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	_, err = Enroll(t.Context(), EnrollOptions{StateDir: dir, DeviceID: "att-1", Keystore: ks, Attest: true})
	if !errors.Is(err, ErrNeedsOperator) || !strings.Contains(err.Error(), "not enrolled") {
		t.Fatalf("attested enrollment with nothing to go on: %v, want a needs-the-operator error", err)
	}
}
