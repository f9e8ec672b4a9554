package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/agent/localapi"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/syncbuf"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// testBroker is a real mosquitto that requires client certificates from
// the device CA, with a subscriber (CN admin, from a backend test CA) that
// records the message ids it receives on devices/#.
type testBroker struct {
	*mosquitto.Broker
	caFile string // the broker's CA, for the agent's mqtt.ca_bundle
	mu     sync.Mutex
	seen   map[string]int
}

func startTestBroker(t *testing.T, devCA *testpki.EdgeCA) *testBroker {
	t.Helper()
	pki := testpki.New(t, "backend-ca")
	srv := pki.Server(t)
	var trust bytes.Buffer
	for _, p := range []string{"root.pem", "intermediate.pem"} {
		b, err := os.ReadFile(filepath.Join(devCA.Dir, p))
		if err != nil {
			t.Fatal(err)
		}
		trust.Write(b)
	}
	backend, err := os.ReadFile(pki.CAFile(t))
	if err != nil {
		t.Fatal(err)
	}
	trust.Write(backend)
	cafile := filepath.Join(t.TempDir(), "broker-trust.pem")
	if err := os.WriteFile(cafile, trust.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &testBroker{Broker: mosquitto.Start(t, mosquitto.Options{CAFile: cafile, CertFile: srv.CertFile, KeyFile: srv.KeyFile, Readers: []string{"admin"}}),
		caFile: pki.CAFile(t), seen: map[string]int{}}
	admin := pki.Client(t, "admin")
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + b.Addr).SetClientID("admin-" + t.Name()).
		SetTLSConfig(&tls.Config{RootCAs: pki.Pool(), Certificates: []tls.Certificate{*admin.TLS}, MinVersion: tls.VersionTLS12}).
		SetCleanSession(false).SetAutoReconnect(true).
		SetOnConnectHandler(func(c paho.Client) {
			c.Subscribe("devices/+/telemetry", 1, func(_ paho.Client, m paho.Message) {
				var env struct{ ID string }
				_ = json.Unmarshal(m.Payload(), &env)
				b.mu.Lock()
				b.seen[env.ID]++
				b.mu.Unlock()
			}).Wait()
		}))
	if tk := sub.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscriber: %v", tk.Error())
	}
	t.Cleanup(func() { sub.Disconnect(0) })
	return b
}

func (b *testBroker) has(ids ...string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, id := range ids {
		if b.seen[id] == 0 {
			return false
		}
	}
	return true
}

// TestClockIn1970EnrollsConnectsAndRenews runs the daemon on a device
// clock set to 1970 (no RTC) against a real CA and a real mosquitto that
// requires client certificates. Every certificate check would fail on
// that clock: the daemon must learn the time from the CA (verified, see
// enroll.ServerTime), enroll, connect over mTLS, report the skew, and renew
// on schedule on the corrected clock (uncorrected, the renewal would be 56
// years away).
func TestClockIn1970EnrollsConnectsAndRenews(t *testing.T) {
	c := testpki.StartEdgeCA(t, testpki.EdgeCAOptions{CertTTL: 20 * time.Second, MinTTL: 20 * time.Second})
	broker := startTestBroker(t, c)
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(c.Token(t, "rtc-less").String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(dir, "rtc-less")
	cfg.Enroll.TokenFile = tokFile
	cfg.MQTT.URL = broker.URL()
	cfg.MQTT.CABundle = broker.caFile
	cfg.Renew.RetryMin, cfg.Renew.RetryMax = 500*time.Millisecond, 2*time.Second
	cfg.Spool.Sync = "never"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	api := localapi.Client(cfg.API.Socket, 0)
	getStatus := func() Status { return fetchStatus(t, api) }
	// Twice: the first boot enrolls (token, CA pin), the second starts
	// from the stored identity (its trust anchors), both in 1970.
	for _, phase := range []string{"enroll", "restart"} {
		// The device booted at the epoch a moment ago; its clock runs
		// from there at the real rate.
		boot := time.Now()
		epoch := time.Unix(0, 0).Add(42 * time.Second)
		device := func() time.Time { return epoch.Add(time.Since(boot)) }
		var logs syncbuf.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Options{Config: cfg, Now: device, BuildTime: boot.Add(-24 * time.Hour), Ready: func() { close(ready) },
				Logger: newTestLogger(&logs), Getenv: func(string) string { return "" }})
		}()
		select {
		case <-ready:
		case err := <-done:
			cancel()
			t.Fatalf("%s: daemon stopped: %v\n%s", phase, err, logs.String())
		}
		poll.Until(t, 30*time.Second, "the local API", func() bool {
			resp, err := api.Get("http://agent/v1/status")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil
		})
		st := getStatus()
		// The correction is the distance from the fake epoch to now, give
		// or take the Date header's second.
		want := time.Since(device()).Seconds()
		if d := st.ClockSkewSeconds - want; d < -3 || d > 3 {
			t.Fatalf("%s: clock skew %vs, want about %vs; status %+v", phase, st.ClockSkewSeconds, want, st)
		}
		if !strings.HasPrefix(st.Clock, "corrected from the CA's time: system clock 1970-") {
			t.Fatalf("%s: status clock %q", phase, st.Clock)
		}
		if st.NotAfter.Before(time.Now().Add(-time.Minute)) || st.NotAfter.Year() < 2026 {
			t.Fatalf("%s: certificate not after %v", phase, st.NotAfter)
		}
		first := st.Serial
		poll.Until(t, 30*time.Second, "a renewal on the corrected schedule", func() bool {
			st = getStatus()
			return st.LastRenew.Counts["ok"] >= 1 && st.Serial != first
		})
		// A message sent now reaches the subscriber through mosquitto,
		// which verified the renewed certificate.
		poll.Until(t, 30*time.Second, "mqtt connected", func() bool { return getStatus().Uplinks["mqtt"].Connected })
		resp, err := api.Post("http://agent/v1/telemetry", "application/json", strings.NewReader(`{"boot":"1970"}`))
		if err != nil {
			t.Fatal(err)
		}
		var out struct{ IDs []string }
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || len(out.IDs) != 1 {
			t.Fatalf("post: %v %v", err, out)
		}
		resp.Body.Close()
		poll.Until(t, 30*time.Second, "the message at the subscriber", func() bool { return broker.has(out.IDs...) })
		if !strings.Contains(logs.String(), "system clock is implausible") || !strings.Contains(logs.String(), "clock corrected") {
			t.Fatalf("%s: log does not report the clock:\n%s", phase, logs.String())
		}
		if phase == "restart" && strings.Contains(logs.String(), "msg=enrolled") {
			t.Fatalf("the restart enrolled again instead of using the stored identity:\n%s", logs.String())
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("%s: Run: %v", phase, err)
		}
	}
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestDateSampleProblem: a Date header seen on an EST answer moves the
// clock only if it is no earlier than the floor and the verified server
// chain is valid at it, the checks enroll.ServerTime makes.
func TestDateSampleProblem(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	cert := func(cn string, from, to time.Time) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, NotBefore: from, NotAfter: to}
	}
	root := cert("root", t0.AddDate(-5, 0, 0), t0.AddDate(5, 0, 0))
	server := cert("est", t0.AddDate(0, -1, 0), t0.AddDate(0, 2, 0))
	chain := []*x509.Certificate{server, root}
	floor := t0.AddDate(0, 0, -7)
	for _, tc := range []struct {
		name  string
		date  time.Time
		floor time.Time
		chain []*x509.Certificate
		want  string // substring of the problem; "" means accepted
	}{
		{"now", t0, floor, chain, ""},
		{"an hour ahead", t0.Add(time.Hour), floor, chain, ""},
		{"a month ahead, chain still valid", t0.AddDate(0, 1, 0), floor, chain, ""},
		{"no floor", t0, time.Time{}, chain, ""},
		{"at the floor", floor, floor, chain, ""},
		{"before the floor", floor.Add(-time.Second), floor, chain, "earliest plausible time"},
		{"years back, chain valid then only for the root", t0.AddDate(-2, 0, 0), time.Time{}, chain, `"est" is valid`},
		{"after the server certificate expired", server.NotAfter.Add(time.Second), floor, chain, `"est" is valid`},
		{"after the root expired", root.NotAfter.Add(time.Hour), floor, []*x509.Certificate{cert("est", t0, root.NotAfter.AddDate(1, 0, 0)), root}, `"root" is valid`},
		{"no verified chain", t0, floor, nil, "no verified server certificate chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := dateSampleProblem(tc.date, tc.floor, tc.chain)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("dateSampleProblem(%s) = %q, want %q", tc.date.Format(time.RFC3339), got, tc.want)
			}
		})
	}
}

// TestClockFloorIncludesObtained: the floor is the latest of the build
// time, the certificate's NotBefore and when the device obtained it (less
// obtainedSlack), so a year-long certificate renewed yesterday does not let
// an EST server set the clock back to last year.
func TestClockFloorIncludesObtained(t *testing.T) {
	build := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	nb := build.AddDate(0, 1, 0)
	renewed := build.AddDate(0, 6, 0)
	for _, tc := range []struct {
		name string
		meta Meta
		want time.Time
	}{
		{"enrolled", Meta{EnrolledAt: nb.AddDate(0, 0, 1)}, nb.AddDate(0, 0, 1).Add(-obtainedSlack)},
		{"renewed", Meta{EnrolledAt: nb, RenewedAt: renewed}, renewed.Add(-obtainedSlack)},
		{"unknown", Meta{}, nb},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Daemon{o: Options{BuildTime: build}}
			id := &Identity{Meta: tc.meta, Chain: []*x509.Certificate{{NotBefore: nb, NotAfter: nb.AddDate(1, 0, 0)}}}
			if got := d.floor(id); !got.Equal(tc.want) {
				t.Fatalf("floor %s, want %s", got, tc.want)
			}
			if got := d.floor(nil); !got.Equal(build) {
				t.Fatalf("floor without an identity %s, want the build time %s", got, build)
			}
		})
	}
}
