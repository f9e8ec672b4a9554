package mqtt

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/internal/mosquitto"
	"github.com/edgeagent/edgeagent/internal/testpki"
	"github.com/edgeagent/edgeagent/uplink"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

type env struct {
	ca     *testpki.CA
	broker *mosquitto.Broker
}

func newEnv(t *testing.T) *env {
	ca := testpki.New(t, "device-ca")
	srv := ca.Server(t)
	b := mosquitto.Start(t, mosquitto.Options{CAFile: ca.CAFile(t), CertFile: srv.CertFile, KeyFile: srv.KeyFile, Readers: []string{"admin"}})
	return &env{ca: ca, broker: b}
}

// subscriber is an admin client that counts message ids on devices/#.
type subscriber struct {
	mu   sync.Mutex
	seen map[string]int
	msgs map[string][]string // topic -> payloads
}

func (e *env) subscribe(t *testing.T, topic string) *subscriber {
	t.Helper()
	s := &subscriber{seen: map[string]int{}, msgs: map[string][]string{}}
	admin := e.ca.Client(t, "admin")
	opts := paho.NewClientOptions().AddBroker("ssl://" + e.broker.Addr).SetClientID("admin-sub").
		SetTLSConfig(&tls.Config{RootCAs: e.ca.Pool(), Certificates: []tls.Certificate{*admin.TLS}, MinVersion: tls.VersionTLS12}).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond).
		SetMaxReconnectInterval(200 * time.Millisecond).
		SetOnConnectHandler(func(c paho.Client) {
			c.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) {
				var env struct{ ID string }
				_ = json.Unmarshal(m.Payload(), &env)
				s.mu.Lock()
				if env.ID != "" {
					s.seen[env.ID]++
				}
				s.msgs[m.Topic()] = append(s.msgs[m.Topic()], string(m.Payload()))
				s.mu.Unlock()
			}).Wait()
		})
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return s
}

func (s *subscriber) counts(n int) (missing, dups int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < n; i++ {
		c := s.seen[fmt.Sprintf("m-%d", i)]
		if c == 0 {
			missing++
		} else {
			dups += c - 1
		}
	}
	return
}

func (s *subscriber) on(topic string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.msgs[topic]...)
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

func fill(t *testing.T, sp *spool.Spool, from, n int) {
	t.Helper()
	var batch [][]byte
	for i := from; i < from+n; i++ {
		batch = append(batch, []byte(fmt.Sprintf(`{"id":"m-%d"}`, i)))
		if len(batch) == 500 || i == from+n-1 {
			if _, err := sp.AppendBatch(batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

type device struct {
	pub  *Publisher
	id   *uplink.Identity
	sp   *spool.Spool
	stop func()
}

func (e *env) device(t *testing.T, name, topicOwner string, cmds func(string, []byte)) *device {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{Sync: spool.SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	id := uplink.NewIdentity(e.ca.Client(t, name).TLS)
	pub, err := New(Options{
		BrokerURL: e.broker.URL(), ClientID: name, Spool: sp, OnCommand: cmds,
		TLS:            uplink.ClientTLSConfig(uplink.TLSOptions{RootCAs: e.ca.Pool(), Identity: id}),
		TelemetryTopic: "devices/" + topicOwner + "/telemetry", StatusTopic: "devices/" + name + "/status", CommandTopic: "devices/" + name + "/commands",
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pub.Run(ctx) }()
	d := &device{pub: pub, id: id, sp: sp}
	var once sync.Once
	d.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			sp.Close()
		})
	}
	t.Cleanup(d.stop)
	return d
}

func TestPublishStatusAndCommands(t *testing.T) {
	e := newEnv(t)
	sub := e.subscribe(t, "devices/#")
	cmds := make(chan string, 1)
	d := e.device(t, "dev-a", "dev-a", func(topic string, p []byte) { cmds <- topic + " " + string(p) })
	fill(t, d.sp, 0, 500)
	eventually(t, 20*time.Second, "500 messages", func() bool { m, _ := sub.counts(500); return m == 0 })
	eventually(t, 10*time.Second, "spool drained", func() bool { return d.sp.Stats().Depth == 0 })
	if got := sub.on("devices/dev-a/status"); len(got) == 0 || got[0] != "online" {
		t.Fatalf("status topic: %v", got)
	}
	// A command for the device reaches the callback. The admin may only
	// read, so the device sends itself one via its own allowed topic.
	other := e.ca.Client(t, "dev-a")
	c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + e.broker.Addr).SetClientID("dev-a-tool").
		SetTLSConfig(&tls.Config{RootCAs: e.ca.Pool(), Certificates: []tls.Certificate{*other.TLS}}))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer c.Disconnect(0)
	c.Publish("devices/dev-a/commands", 1, false, `{"reboot":true}`).Wait()
	select {
	case got := <-cmds:
		if got != `devices/dev-a/commands {"reboot":true}` {
			t.Fatalf("command %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("command never arrived")
	}
	d.stop()
	eventually(t, 10*time.Second, "offline status", func() bool {
		got := sub.on("devices/dev-a/status")
		return len(got) > 0 && got[len(got)-1] == "offline"
	})
}

// TestACLKeepsDevicesApart: device A publishing to device B's topic is
// dropped by the broker (use_identity_as_username + pattern ACL).
func TestACLKeepsDevicesApart(t *testing.T) {
	e := newEnv(t)
	sub := e.subscribe(t, "devices/#")
	fill0 := e.device(t, "dev-a", "dev-b", nil)
	fill(t, fill0.sp, 0, 20)
	// mosquitto acks and drops a denied QoS 1 publish; the spool drains.
	eventually(t, 20*time.Second, "publishes acknowledged", func() bool { return fill0.pub.Acked() >= 20 })
	legit := e.device(t, "dev-b", "dev-b", nil)
	fill(t, legit.sp, 100, 1)
	eventually(t, 20*time.Second, "dev-b's own message", func() bool { return len(sub.on("devices/dev-b/telemetry")) >= 1 })
	// dev-a's 20 were acknowledged before dev-b connected: had the ACL
	// let them through, the subscriber would have them before m-100.
	for _, p := range sub.on("devices/dev-b/telemetry") {
		if !strings.Contains(p, "m-100") {
			t.Fatalf("dev-a's message reached dev-b's topic: %s", p)
		}
	}
}

func TestRefusesClientsWithoutTrustedCertificate(t *testing.T) {
	e := newEnv(t)
	stranger := testpki.New(t, "other-ca").Client(t, "dev-a")
	cases := map[string]*tls.Config{
		"no certificate": {RootCAs: e.ca.Pool(), MinVersion: tls.VersionTLS12},
		"other CA":       {RootCAs: e.ca.Pool(), Certificates: []tls.Certificate{*stranger.TLS}, MinVersion: tls.VersionTLS12},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + e.broker.Addr).SetClientID("x-" + strings.ReplaceAll(name, " ", "-")).
				SetTLSConfig(cfg).SetConnectTimeout(5 * time.Second))
			tok := c.Connect()
			tok.WaitTimeout(10 * time.Second)
			if tok.Error() == nil {
				c.Disconnect(0)
				t.Fatal("broker accepted the client")
			}
		})
	}
}

// TestBrokerRestartsLoseNothing kills mosquitto three times mid-stream
// (SIGTERM: every connection drops at once; the broker keeps the
// subscriber's session, so a missing message is one the agent lost).
func TestBrokerRestartsLoseNothing(t *testing.T) {
	e := newEnv(t)
	sub := e.subscribe(t, "devices/dev-r/telemetry")
	d := e.device(t, "dev-r", "dev-r", nil)
	const n = 6000
	for round := 0; round < 3; round++ {
		fill(t, d.sp, round*n/3, n/3)
		eventually(t, 30*time.Second, "some traffic", func() bool { return d.pub.Acked() > uint64(round*n/3+100) })
		e.broker.Stop()
		e.broker.Start()
	}
	eventually(t, 60*time.Second, "every message", func() bool { m, _ := sub.counts(n); return m == 0 })
	_, dups := sub.counts(n)
	t.Logf("%d messages through 3 broker restarts, %d duplicates, %d reconnects", n, dups, d.pub.Reconnects())
	if d.pub.Reconnects() < 3 {
		t.Fatalf("publisher reconnected %d times for 3 broker restarts", d.pub.Reconnects())
	}
}

// TestIdentitySwapReconnectsWithNewCertificate: a renewal (Identity.Store
// and Reconnect) makes the publisher open a new connection, which presents
// the new certificate (uplink's tests prove that with real handshakes), and
// no message is lost across the switch.
func TestIdentitySwapReconnectsWithNewCertificate(t *testing.T) {
	e := newEnv(t)
	sub := e.subscribe(t, "devices/dev-s/telemetry")
	d := e.device(t, "dev-s", "dev-s", nil)
	fill(t, d.sp, 0, 1000)
	eventually(t, 20*time.Second, "first half", func() bool { return d.pub.Acked() >= 200 })
	before := d.pub.Reconnects()
	renewed := e.ca.Client(t, "dev-s")
	d.id.Store(renewed.TLS)
	d.pub.Reconnect()
	fill(t, d.sp, 1000, 1000)
	eventually(t, 30*time.Second, "all 2000", func() bool { m, _ := sub.counts(2000); return m == 0 })
	if d.pub.Reconnects() <= before {
		t.Fatal("no reconnect after the identity changed")
	}
	// The broker logs each connection; the second connection of dev-s
	// came after the swap and is the only way the later messages went out.
	if c := strings.Count(e.broker.Log(), "as dev-s"); c < 2 {
		t.Fatalf("broker saw %d connections of dev-s:\n%s", c, e.broker.Log())
	}
}
