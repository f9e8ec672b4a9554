package mqtt

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/testkit/mosquitto"
	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/testkit/testpki"
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

// counts reports how many of m-0 .. m-(n-1) have not arrived and how many
// duplicates of them did. While fewer than n distinct ids arrived at all it
// returns a lower bound of the missing (and no duplicates) without the
// scan, which under the race detector took long enough, polled every 20 ms
// with the lock held, to starve the message handler.
func (s *subscriber) counts(n int) (missing, dups int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.seen) < n {
		return n - len(s.seen), 0
	}
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
	hs   *handshakes
	stop func()
}

// handshakes records, from the client side, the serial of every
// certificate the device presented in a full handshake.
type handshakes struct {
	mu      sync.Mutex
	serials []string
}

func (h *handshakes) wrap(cfg *tls.Config) {
	get := cfg.GetClientCertificate
	cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c, err := get(cri)
		if err == nil {
			h.mu.Lock()
			h.serials = append(h.serials, c.Leaf.SerialNumber.String())
			h.mu.Unlock()
		}
		return c, err
	}
}

func (h *handshakes) used(serial string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.serials {
		if s == serial {
			return true
		}
	}
	return false
}

func (e *env) device(t *testing.T, name, topicOwner string, cmds func(string, []byte)) *device {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), spool.Options{Sync: spool.SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	id := uplink.NewIdentity(e.ca.Client(t, name).TLS)
	hs := &handshakes{}
	cfg := uplink.ClientTLSConfig(uplink.TLSOptions{RootCAs: e.ca.Pool(), Identity: id})
	hs.wrap(cfg)
	pub, err := New(Options{
		BrokerURL: e.broker.URL(), ClientID: name, Spool: sp, OnCommand: cmds, Identity: id, TLS: cfg,
		TelemetryTopic: "devices/" + topicOwner + "/telemetry", StatusTopic: "devices/" + name + "/status", CommandTopic: "devices/" + name + "/commands",
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pub.Run(ctx) }()
	d := &device{pub: pub, id: id, sp: sp, hs: hs}
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

// retained reads the retained message on topic with a fresh admin client.
func (e *env) retained(t *testing.T, topic string) string {
	t.Helper()
	got := make(chan string, 1)
	admin := e.ca.Client(t, "admin")
	c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + e.broker.Addr).SetClientID("admin-retained").
		SetTLSConfig(&tls.Config{RootCAs: e.ca.Pool(), Certificates: []tls.Certificate{*admin.TLS}, MinVersion: tls.VersionTLS12}))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("admin connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	c.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) {
		if m.Retained() {
			select {
			case got <- string(m.Payload()):
			default:
			}
		}
	})
	select {
	case s := <-got:
		return s
	case <-time.After(10 * time.Second):
		t.Fatalf("no retained message on %s", topic)
		return ""
	}
}

func TestPublishStatusAndCommands(t *testing.T) {
	e := newEnv(t)
	sub := e.subscribe(t, "devices/#")
	cmds := make(chan string, 1)
	d := e.device(t, "dev-a", "dev-a", func(topic string, p []byte) { cmds <- topic + " " + string(p) })
	fill(t, d.sp, 0, 500)
	poll.Until(t, 20*time.Second, "500 messages", func() bool { m, _ := sub.counts(500); return m == 0 })
	poll.Until(t, 10*time.Second, "spool drained", func() bool { return d.sp.Stats().Depth == 0 })
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
	poll.Until(t, 10*time.Second, "offline status", func() bool {
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
	poll.Until(t, 20*time.Second, "publishes acknowledged", func() bool { return fill0.pub.Acked() >= 20 })
	legit := e.device(t, "dev-b", "dev-b", nil)
	fill(t, legit.sp, 100, 1)
	poll.Until(t, 20*time.Second, "dev-b's own message", func() bool { return len(sub.on("devices/dev-b/telemetry")) >= 1 })
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
	// Each restart waits until the publisher has come back from the one
	// before and made progress, so that no two restarts fall into one
	// reconnect backoff; the stream is long enough to still be running at
	// the third restart however fast the publisher is.
	const n = 20000
	fill(t, d.sp, 0, n)
	var last uint64
	for i := range uint64(3) {
		poll.Until(t, 30*time.Second, fmt.Sprintf("reconnect %d and 1000 more messages acknowledged", i), func() bool {
			return d.pub.Reconnects() >= i && d.pub.Acked() >= last+1000
		})
		if depth := d.sp.Stats().Depth; depth == 0 {
			t.Fatalf("the stream ended before restart %d", i+1)
		}
		last = d.pub.Acked()
		e.broker.Stop()
		e.broker.Start()
	}
	poll.Until(t, 60*time.Second, "every message", func() bool { m, _ := sub.counts(n); return m == 0 })
	poll.Until(t, 10*time.Second, "spool drained", func() bool { return d.sp.Stats().Depth == 0 })
	_, dups := sub.counts(n)
	st := d.pub.Stats()
	t.Logf("%d messages through 3 broker restarts, %d duplicates; stats %+v", n, dups, st)
	if st.Reconnects < 3 {
		t.Fatalf("publisher reconnected %d times for 3 broker restarts", st.Reconnects)
	}
}

// TestIdentitySwapReconnectsWithNewCertificate: a renewal (Identity.Store
// only; the publisher watches Changed) makes the publisher switch to a new
// connection that presents the new certificate, and no message is lost
// across the switch. The broker side proves it: after the swap the old
// certificate is revoked and the broker restarted with the CRL, and the
// publisher still gets every message through.
func TestIdentitySwapReconnectsWithNewCertificate(t *testing.T) {
	ca := testpki.New(t, "device-ca")
	srv := ca.Server(t)
	crl := ca.CRL(t)
	b := mosquitto.Start(t, mosquitto.Options{CAFile: ca.CAFile(t), CertFile: srv.CertFile, KeyFile: srv.KeyFile, CRLFile: crl, Readers: []string{"admin"}})
	e := &env{ca: ca, broker: b}
	sub := e.subscribe(t, "devices/dev-s/telemetry")
	d := e.device(t, "dev-s", "dev-s", nil)
	original := d.id.Load()
	fill(t, d.sp, 0, 1000)
	poll.Until(t, 20*time.Second, "the first messages", func() bool { return d.pub.Acked() >= 200 })
	before := d.pub.Reconnects()

	renewed := e.ca.Client(t, "dev-s")
	d.id.Store(renewed.TLS)
	fill(t, d.sp, 1000, 1000)
	poll.Until(t, 20*time.Second, "a connection with the renewed certificate", func() bool {
		return d.hs.used(renewed.Cert.SerialNumber.String()) && d.pub.Reconnects() > before && d.pub.Connected()
	})
	poll.Until(t, 30*time.Second, "all 2000 messages", func() bool { m, _ := sub.counts(2000); return m == 0 })
	if c := strings.Count(e.broker.Log(), "as dev-s ("); c < 2 {
		t.Fatalf("broker saw %d connections of dev-s:\n%s", c, e.broker.Log())
	}
	if !strings.Contains(e.broker.Log(), "Client dev-s already connected, closing old connection") {
		t.Fatalf("broker did not take the session over:\n%s", e.broker.Log())
	}
	if got := e.retained(t, "devices/dev-s/status"); got != "online" {
		t.Fatalf("retained status after the switch: %q", got)
	}

	// Revoke the old certificate and restart the broker: the publisher
	// only gets through with the renewed one.
	b.Stop()
	ca.CRL(t, original.Leaf)
	b.Start()
	old := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + b.Addr).SetClientID("dev-s-old").
		SetTLSConfig(&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{*original}, MinVersion: tls.VersionTLS12}))
	if tok := old.Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		old.Disconnect(0)
		t.Fatal("the broker still accepts the revoked certificate")
	}
	fill(t, d.sp, 2000, 1000)
	poll.Until(t, 30*time.Second, "all 3000 messages", func() bool { m, _ := sub.counts(3000); return m == 0 })
	_, dups := sub.counts(3000)
	st := d.pub.Stats()
	t.Logf("3000 messages, %d duplicates; stats %+v", dups, st)
	if !st.Connected || st.Reconnects < before+2 {
		t.Fatalf("stats after swap and restart: %+v", st)
	}
}

// TestRejectedRenewalKeepsOldConnection: when the broker refuses the new
// certificate, the make-before-break switch fails and the old connection
// carries on; a good certificate later switches over.
func TestRejectedRenewalKeepsOldConnection(t *testing.T) {
	e := newEnv(t)
	sub := e.subscribe(t, "devices/dev-k/telemetry")
	d := e.device(t, "dev-k", "dev-k", nil)
	fill(t, d.sp, 0, 100)
	poll.Until(t, 20*time.Second, "the first messages", func() bool { m, _ := sub.counts(100); return m == 0 })
	before := d.pub.Reconnects()

	bad := testpki.New(t, "rogue-ca").Client(t, "dev-k")
	d.id.Store(bad.TLS)
	poll.Until(t, 20*time.Second, "the rejected switch reported", func() bool {
		return d.hs.used(bad.Cert.SerialNumber.String()) && strings.Contains(d.pub.LastError(), "renewed identity")
	})
	fill(t, d.sp, 100, 500)
	poll.Until(t, 20*time.Second, "messages over the old connection", func() bool { m, _ := sub.counts(600); return m == 0 })
	if st := d.pub.Stats(); !st.Connected || st.Reconnects != before {
		t.Fatalf("old connection did not carry on: %+v", st)
	}

	good := e.ca.Client(t, "dev-k")
	d.id.Store(good.TLS)
	poll.Until(t, 20*time.Second, "a switch with the good certificate", func() bool {
		st := d.pub.Stats()
		return d.hs.used(good.Cert.SerialNumber.String()) && st.Reconnects > before && st.LastError == ""
	})
	fill(t, d.sp, 600, 100)
	poll.Until(t, 20*time.Second, "all 700 messages", func() bool { m, _ := sub.counts(700); return m == 0 })
}

// BenchmarkThroughput compares the publisher (spool with fsync, QoS 1,
// mTLS) with mosquitto_pub -q 1 -l on the same listener, both counted when
// the broker acknowledged (the publisher) or a subscriber received
// (mosquitto_pub) every message. Run with -benchtime=1x.
func BenchmarkThroughput(b *testing.B) {
	const n = 20000
	ca := testpki.New(b, "bench-ca")
	srv := ca.Server(b)
	broker := mosquitto.Start(b, mosquitto.Options{CAFile: ca.CAFile(b), CertFile: srv.CertFile, KeyFile: srv.KeyFile, Readers: []string{"admin"}})
	dev := ca.Client(b, "bench-dev")
	var agentRate, pubRate float64
	for i := 0; i < b.N; i++ {
		sp, err := spool.Open(b.TempDir(), spool.Options{Sync: spool.SyncAlways})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		agentRate, err = Throughput(ctx, Options{
			BrokerURL: broker.URL(), ClientID: "bench-dev", Spool: sp, TelemetryTopic: "devices/bench-dev/telemetry",
			TLS: uplink.ClientTLSConfig(uplink.TLSOptions{RootCAs: ca.Pool(), Identity: uplink.NewIdentity(dev.TLS)}),
		}, n)
		cancel()
		sp.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	var got atomic.Int64
	admin := ca.Client(b, "admin")
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + broker.Addr).SetClientID("bench-admin").SetOrderMatters(false).
		SetTLSConfig(&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{*admin.TLS}, MinVersion: tls.VersionTLS12}))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("subscriber: %v", tok.Error())
	}
	defer sub.Disconnect(0)
	if tok := sub.Subscribe("devices/bench-dev/mosquitto-pub", 1, func(paho.Client, paho.Message) { got.Add(1) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("subscribe: %v", tok.Error())
	}
	lines := make([][]byte, n)
	for i := range lines {
		lines[i] = fmt.Appendf(nil, `{"id":"bench-dev-%08d","device_id":"bench-dev","time":"2026-11-22T10:00:00.000000000Z","data":{"temp_c":21.5,"seq":%d}}`, i, i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pubRate, err := mosquitto.PubThroughput(ctx, mosquitto.PubOptions{Addr: broker.Addr, CAFile: ca.CAFile(b), CertFile: dev.CertFile, KeyFile: dev.KeyFile,
		ClientID: "bench-dev-pub", Topic: "devices/bench-dev/mosquitto-pub"}, lines, func(ctx context.Context) error {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for got.Load() < n {
			select {
			case <-ctx.Done():
				return fmt.Errorf("%d of %d arrived: %w", got.Load(), n, ctx.Err())
			case <-tick.C:
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(agentRate, "publisher_msgs/s")
	b.ReportMetric(pubRate, "mosquitto_pub_msgs/s")
	b.ReportMetric(agentRate/pubRate, "ratio")
}

// TestReconnectRequestSwitchesConnection: Reconnect (what the agent calls
// after a renewal) switches connections like an Identity.Store, without
// losing messages.
func TestReconnectRequestSwitchesConnection(t *testing.T) {
	e := newEnv(t)
	sub := e.subscribe(t, "devices/dev-q/telemetry")
	d := e.device(t, "dev-q", "dev-q", nil)
	fill(t, d.sp, 0, 1000)
	poll.Until(t, 20*time.Second, "the first messages", func() bool { return d.pub.Acked() >= 100 })
	d.pub.Reconnect()
	fill(t, d.sp, 1000, 1000)
	poll.Until(t, 20*time.Second, "the switch", func() bool { return d.pub.Reconnects() == 1 && d.pub.Connected() })
	poll.Until(t, 30*time.Second, "all 2000 messages", func() bool { m, _ := sub.counts(2000); return m == 0 })
	if c := strings.Count(e.broker.Log(), "as dev-q ("); c != 2 {
		t.Fatalf("broker saw %d connections of dev-q, want 2:\n%s", c, e.broker.Log())
	}
}

// TestCommandsQueuedWhileAwayArrive: the session is persistent, so a
// command sent while the device was offline is delivered when it comes
// back, even though it arrives before the new SUBSCRIBE is acknowledged.
func TestCommandsQueuedWhileAwayArrive(t *testing.T) {
	e := newEnv(t)
	first := e.device(t, "dev-c", "dev-c", func(string, []byte) {})
	poll.Until(t, 20*time.Second, "first connection", first.pub.Connected)
	first.stop()

	tool := e.ca.Client(t, "dev-c")
	c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + e.broker.Addr).SetClientID("dev-c-tool").
		SetTLSConfig(&tls.Config{RootCAs: e.ca.Pool(), Certificates: []tls.Certificate{*tool.TLS}, MinVersion: tls.VersionTLS12}))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer c.Disconnect(0)
	if tok := c.Publish("devices/dev-c/commands", 1, false, "while-away"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	cmds := make(chan string, 4)
	e.device(t, "dev-c", "dev-c", func(topic string, p []byte) { cmds <- topic + " " + string(p) })
	select {
	case got := <-cmds:
		if got != "devices/dev-c/commands while-away" {
			t.Fatalf("command %q", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the command queued while the device was away never arrived")
	}
}
