package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/revocation"
	"github.com/edgeagent/edgeagent/revocation/httpsguard"
	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// revDevice is one device of the revocation scenario: an MQTT session and
// an HTTPS keep-alive connection with its edgeca certificate, publishing a
// numbered message to both every 20 ms.
type revDevice struct {
	id   string
	cert tls.Certificate
	mqtt paho.Client
	http *http.Client

	mu         sync.Mutex
	mqttAcked  []int
	httpsAcked []int
	lostAt     time.Time // the broker closed the MQTT session
}

func (d *revDevice) lost() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lostAt
}

// revScenario is the running setup: edgeca, mosquitto with the
// mosquitto-sync companion, an HTTPS backend behind httpsguard following the
// feed, a subscriber, three devices.
type revScenario struct {
	caDir, caURL string
	broker       *mosquitto.Broker
	brokerRoots  *x509.CertPool
	sinkURL      string
	guard        *httpsguard.Guard
	devices      []*revDevice
	feedSet      *revocation.Set

	mu       sync.Mutex
	mqttSeen map[string]map[int]bool
	sinkSeen map[string]map[int]bool
	stop     chan struct{}
	wg       sync.WaitGroup
}

func seen(m map[string]map[int]bool, id string, n int) {
	if m[id] == nil {
		m[id] = map[int]bool{}
	}
	m[id][n] = true
}

func startRevScenario(t testing.TB) *revScenario {
	t.Helper()
	requireTools(t, "openssl")
	mosquitto.Binary(t)
	caDir, caURL := startCA(t, "--cert-ttl", "1h")
	work := t.TempDir()
	s := &revScenario{caDir: caDir, caURL: caURL, mqttSeen: map[string]map[int]bool{}, sinkSeen: map[string]map[int]bool{}, stop: make(chan struct{})}
	t.Cleanup(func() { s.stopPublishing() })

	rootPEM, _ := os.ReadFile(filepath.Join(caDir, "root.pem"))
	interPEM, _ := os.ReadFile(filepath.Join(caDir, "intermediate.pem"))
	caRoots := x509.NewCertPool()
	caRoots.AppendCertsFromPEM(rootPEM)
	deviceCAs := x509.NewCertPool()
	deviceCAs.AppendCertsFromPEM(rootPEM)
	deviceCAs.AppendCertsFromPEM(interPEM)
	pki := testpki.New(t, "backend-ca")
	s.brokerRoots = pki.Pool()
	backendCA, _ := os.ReadFile(pki.CAFile(t))

	// Enforcer identities for the companion and the HTTPS backend.
	run(t, built.ca, "enforcer", "create", "--dir", caDir, "--out", work, "broker-1")
	run(t, built.ca, "enforcer", "create", "--dir", caDir, "--out", work, "sink-1")

	// mosquitto starts with the current CRL; the companion keeps it so.
	crlFile := filepath.Join(work, "crl.pem")
	run(t, built.ca, "crl", "--dir", caDir, "--out", crlFile)
	backendCRL := pki.CRL(t)
	initial, _ := os.ReadFile(crlFile)
	other, _ := os.ReadFile(backendCRL)
	if err := os.WriteFile(crlFile, append(append(initial, '\n'), other...), 0o644); err != nil {
		t.Fatal(err)
	}
	cafile := filepath.Join(work, "mosquitto-ca.pem")
	if err := os.WriteFile(cafile, bytes.Join([][]byte{interPEM, rootPEM, backendCA}, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	brokerCert := pki.Server(t)
	s.broker = mosquitto.Start(t, mosquitto.Options{CAFile: cafile, CertFile: brokerCert.CertFile, KeyFile: brokerCert.KeyFile, CRLFile: crlFile, Readers: []string{"admin"}})
	rootFile := filepath.Join(caDir, "root.pem")
	companion := exec.Command(built.ca, "mosquitto-sync", "--ca-url", caURL, "--cert", filepath.Join(work, "broker-1.pem"), "--key", filepath.Join(work, "broker-1-key.pem"),
		"--ca-bundle", rootFile, "--crl-file", crlFile, "--pid", strconv.Itoa(s.broker.Pid()), "--extra-crl", backendCRL, "--broker", s.broker.Addr, "--broker-ca", pki.CAFile(t))
	var clog bytes.Buffer
	companion.Stdout, companion.Stderr = &clog, &clog
	if err := companion.Start(); err != nil {
		t.Fatal(err)
	}
	cdone := make(chan struct{})
	go func() { _ = companion.Wait(); close(cdone) }()
	t.Cleanup(func() {
		_ = companion.Process.Signal(os.Interrupt)
		<-cdone
		if t.Failed() {
			t.Logf("mosquitto-sync log:\n%s\nmosquitto log:\n%s", clog.String(), s.broker.Log())
		}
	})

	// The HTTPS backend: httpsguard around its TLS config and server,
	// following the feed.
	sinkEnf, err := tls.LoadX509KeyPair(filepath.Join(work, "sink-1.pem"), filepath.Join(work, "sink-1-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	s.guard = httpsguard.New(revocation.NewSet())
	s.feedSet = s.guard.Set()
	f, err := revocation.NewFollower(revocation.FollowerOptions{CAURL: caURL, Set: s.guard.Set(), OnRevoke: s.guard.OnRevoke,
		TLS: &tls.Config{RootCAs: caRoots, Certificates: []tls.Certificate{sinkEnf}, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	fctx, fcancel := context.WithCancel(context.Background())
	fdone := make(chan struct{})
	go func() { defer close(fdone); _ = f.Run(fctx) }()
	t.Cleanup(func() { fcancel(); <-fdone })
	sinkCert := pki.Server(t)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0),
		TLSConfig: s.guard.TLSConfig(&tls.Config{Certificates: []tls.Certificate{*sinkCert.TLS}, ClientCAs: deviceCAs, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(io.LimitReader(r.Body, 1024))
			n, aerr := strconv.Atoi(string(b))
			if err != nil || aerr != nil {
				http.Error(w, "bad", 400)
				return
			}
			s.mu.Lock()
			seen(s.sinkSeen, r.TLS.PeerCertificates[0].Subject.CommonName, n)
			s.mu.Unlock()
		})}
	s.guard.Track(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { srv.Close() })
	s.sinkURL = "https://" + ln.Addr().String() + "/ingest"
	select {
	case <-f.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("the HTTPS backend did not reach the revocation feed")
	}

	// The subscriber.
	admin := pki.Client(t, "admin")
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + s.broker.Addr).SetClientID("rev-admin").
		SetTLSConfig(&tls.Config{RootCAs: pki.Pool(), Certificates: []tls.Certificate{*admin.TLS}, MinVersion: tls.VersionTLS12}).
		SetCleanSession(false).SetAutoReconnect(true).
		SetOnConnectHandler(func(c paho.Client) {
			c.Subscribe("devices/+/telemetry", 1, func(_ paho.Client, m paho.Message) {
				id := strings.Split(m.Topic(), "/")[1]
				n, _ := strconv.Atoi(string(m.Payload()))
				s.mu.Lock()
				seen(s.mqttSeen, id, n)
				s.mu.Unlock()
			}).Wait()
		}))
	if tk := sub.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscriber: %v", tk.Error())
	}
	t.Cleanup(func() { sub.Disconnect(0) })

	// Three devices enrolled by the real agent, then connected.
	for i := range 3 {
		id := fmt.Sprintf("rev-dev-%d", i)
		tok := strings.TrimSpace(run(t, built.ca, "token", "create", "--dir", caDir, "--url", caURL, "--device", id))
		state := filepath.Join(work, id)
		run(t, built.agent, "enroll", "--token", tok, "--state-dir", state, "--device-id", id)
		cert, err := tls.LoadX509KeyPair(filepath.Join(state, "cert.pem"), filepath.Join(state, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		cert.Leaf, _ = x509.ParseCertificate(cert.Certificate[0])
		d := &revDevice{id: id, cert: cert}
		d.mqtt = s.mqttClient(d.id, cert, func(paho.Client, error) {
			d.mu.Lock()
			if d.lostAt.IsZero() {
				d.lostAt = time.Now()
			}
			d.mu.Unlock()
		})
		if tk := d.mqtt.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("%s: connect: %v", id, tk.Error())
		}
		d.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1,
			TLSClientConfig: &tls.Config{RootCAs: pki.Pool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}}
		s.devices = append(s.devices, d)
	}
	for _, d := range s.devices {
		s.wg.Add(1)
		go s.publish(d)
	}
	// Every device is through on both before anything is revoked.
	poll.Until(t, 30*time.Second, "every device publishing on both", func() bool {
		for _, d := range s.devices {
			d.mu.Lock()
			ok := len(d.mqttAcked) > 0 && len(d.httpsAcked) > 0
			d.mu.Unlock()
			if !ok || s.guard.Live(revocation.SerialHex(d.cert.Leaf)) == 0 {
				return false
			}
		}
		return true
	})
	return s
}

func (s *revScenario) mqttClient(id string, cert tls.Certificate, lost func(paho.Client, error)) paho.Client {
	return paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + s.broker.Addr).SetClientID(id).
		SetTLSConfig(&tls.Config{RootCAs: s.brokerRoots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(lost))
}

// publish sends a numbered message to the broker (QoS 1) and the backend
// every 20 ms and records what each acknowledged.
func (s *revScenario) publish(d *revDevice) {
	defer s.wg.Done()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		msg := strconv.Itoa(n)
		if d.mqtt.IsConnectionOpen() {
			tk := d.mqtt.Publish("devices/"+d.id+"/telemetry", 1, false, msg)
			if tk.WaitTimeout(5*time.Second) && tk.Error() == nil {
				d.mu.Lock()
				d.mqttAcked = append(d.mqttAcked, n)
				d.mu.Unlock()
			}
		}
		if resp, err := d.http.Post(s.sinkURL, "text/plain", strings.NewReader(msg)); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				d.mu.Lock()
				d.httpsAcked = append(d.httpsAcked, n)
				d.mu.Unlock()
			}
		}
	}
}

func (s *revScenario) stopPublishing() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.wg.Wait()
}

// revoke revokes d with the edgeca command and measures the time until
// the broker and the backend have both cut it off.
func (s *revScenario) revoke(t testing.TB, d *revDevice, limit time.Duration) (mqtt, https, cli time.Duration) {
	t.Helper()
	serial := revocation.SerialHex(d.cert.Leaf)
	start := time.Now()
	run(t, built.ca, "device", "revoke", "--dir", s.caDir, d.id)
	cli = time.Since(start)
	deadline := start.Add(limit)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for mqtt == 0 || https == 0 {
		if lost := d.lost(); mqtt == 0 && !lost.IsZero() {
			mqtt = lost.Sub(start)
		}
		if https == 0 && s.guard.Live(serial) == 0 {
			https = time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not cut off within %s of its revocation: mqtt disconnected %v, https connections left %d", d.id, limit, !d.lost().IsZero(), s.guard.Live(serial))
		}
		<-tick.C
	}
	return mqtt, https, cli
}

// TestRevocationCutsDeviceOff: three devices publish to mosquitto and an
// HTTPS backend; one is revoked: within 30 seconds both have closed its
// connections and refuse it on reconnect, while the other two stay
// connected and lose no message.
func TestRevocationCutsDeviceOff(t *testing.T) {
	s := startRevScenario(t)
	victim := s.devices[1]
	mqttAfter, httpsAfter, _ := s.revoke(t, victim, 30*time.Second)
	t.Logf("revoke -> disconnected: mqtt %s, https %s", mqttAfter.Round(time.Millisecond), httpsAfter.Round(time.Millisecond))

	// Refused on reconnect, at both.
	again := s.mqttClient(victim.id, victim.cert, nil)
	if tk := again.Connect(); tk.WaitTimeout(15*time.Second) && tk.Error() == nil {
		again.Disconnect(0)
		t.Fatal("mosquitto let the revoked device connect again")
	}
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: victim.http.Transport.(*http.Transport).TLSClientConfig.Clone()}}
	if resp, err := fresh.Post(s.sinkURL, "text/plain", strings.NewReader("1")); err == nil {
		resp.Body.Close()
		t.Fatalf("the HTTPS backend let the revoked device in again: %s", resp.Status)
	}

	// The others keep publishing a while longer, then stop: every message
	// either acknowledged reached the subscriber or the backend.
	others := []*revDevice{s.devices[0], s.devices[2]}
	var before []int
	for _, d := range others {
		d.mu.Lock()
		before = append(before, len(d.mqttAcked))
		d.mu.Unlock()
	}
	poll.Until(t, 30*time.Second, "the other devices publishing after the revocation", func() bool {
		for i, d := range others {
			d.mu.Lock()
			n := len(d.mqttAcked)
			d.mu.Unlock()
			if n < before[i]+25 {
				return false
			}
		}
		return true
	})
	s.stopPublishing()
	for _, d := range others {
		if !d.lost().IsZero() {
			t.Errorf("%s lost its MQTT session at %s: the revocation touched another device", d.id, d.lost())
		}
		poll.Until(t, 30*time.Second, d.id+"'s acknowledged messages at the subscriber", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, n := range d.mqttAcked {
				if !s.mqttSeen[d.id][n] {
					return false
				}
			}
			return true
		})
		s.mu.Lock()
		var missing []int
		for _, n := range d.httpsAcked {
			if !s.sinkSeen[d.id][n] {
				missing = append(missing, n)
			}
		}
		s.mu.Unlock()
		if len(missing) > 0 {
			t.Errorf("%s: %d messages acknowledged by the backend are missing there", d.id, len(missing))
		}
		// No gap: the publishing loop sent 0..N to both, all acknowledged.
		if len(d.mqttAcked) == 0 || d.mqttAcked[len(d.mqttAcked)-1] != len(d.mqttAcked)-1 || !slices.IsSorted(d.mqttAcked) {
			t.Errorf("%s: MQTT acknowledged %d messages, last %v: some were refused", d.id, len(d.mqttAcked), d.mqttAcked[len(d.mqttAcked)-1:])
		}
		if len(d.httpsAcked) == 0 || d.httpsAcked[len(d.httpsAcked)-1] != len(d.httpsAcked)-1 {
			t.Errorf("%s: the backend acknowledged %d messages, last %v: some were refused", d.id, len(d.httpsAcked), d.httpsAcked[len(d.httpsAcked)-1:])
		}
		t.Logf("%s: %d messages over MQTT and %d over HTTPS, none lost", d.id, len(d.mqttAcked), len(d.httpsAcked))
	}
}

// BenchmarkRevokeToDisconnect measures, over repeated runs of the
// TestRevocationCutsDeviceOff setup, the time from `edgeca device revoke`
// to the revoked device's disconnection at mosquitto (mosquitto-sync) and
// at the HTTPS backend (httpsguard), next to the baseline of the revoke
// command's own run time (the part no enforcement point can beat).
func BenchmarkRevokeToDisconnect(b *testing.B) {
	const runs = 5
	var mq, hs, cl []time.Duration
	for range b.N {
		for range runs {
			s := startRevScenario(b)
			m, h, c := s.revoke(b, s.devices[1], 30*time.Second)
			s.stopPublishing()
			mq, hs, cl = append(mq, m), append(hs, h), append(cl, c)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	p50 := func(v []time.Duration) time.Duration { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	b.ReportMetric(ms(p50(mq)), "mqtt-p50-ms")
	b.ReportMetric(ms(slices.Max(mq)), "mqtt-max-ms")
	b.ReportMetric(ms(p50(hs)), "https-p50-ms")
	b.ReportMetric(ms(slices.Max(hs)), "https-max-ms")
	b.ReportMetric(ms(p50(cl)), "baseline-revoke-cli-p50-ms")
	b.ReportMetric(float64(len(mq)), "runs")
}
