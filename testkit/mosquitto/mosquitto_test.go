package mosquitto

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/testkit/testpki"
)

func start(t *testing.T) (*testpki.CA, *Broker) {
	ca := testpki.New(t, "broker-test-ca")
	srv := ca.Server(t)
	return ca, Start(t, Options{CAFile: ca.CAFile(t), CertFile: srv.CertFile, KeyFile: srv.KeyFile, Readers: []string{"admin"}})
}

// handshake does a TLS handshake with the broker and reads until the
// broker either closes or stays quiet: TLS 1.3 servers report a rejected
// client certificate only after the client's handshake returned.
func handshake(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	// An MQTT CONNECT with client id "h": the broker answers CONNACK only
	// to an accepted client.
	if _, err := c.Write([]byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 1, 'h'}); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := c.Read(buf); err != nil {
		return err
	}
	if buf[0] != 0x20 || buf[3] != 0 {
		return fmt.Errorf("CONNACK % x", buf)
	}
	return nil
}

func TestBrokerRequiresClientCertificatesAndRestartsOnSamePort(t *testing.T) {
	ca, b := start(t)
	dev := ca.Client(t, "dev-1")
	stranger := testpki.New(t, "other-ca").Client(t, "dev-1")
	cases := []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{
		{"certificate from the CA", &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{*dev.TLS}}, true},
		{"no certificate", &tls.Config{RootCAs: ca.Pool()}, false},
		{"certificate from another CA", &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{*stranger.TLS}}, false},
	}
	check := func() {
		for _, c := range cases {
			err := handshake(b.Addr, c.cfg)
			if (err == nil) != c.ok {
				t.Errorf("%s: handshake error %v, want ok=%v", c.name, err, c.ok)
			}
		}
	}
	check()
	addr := b.Addr
	b.Stop()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("stopped broker still accepts")
	}
	b.Start()
	if b.Addr != addr {
		t.Fatalf("restarted on %s, want %s", b.Addr, addr)
	}
	check()
	if !strings.Contains(b.Log(), "as h (") {
		t.Fatalf("log does not show the accepted client:\n%s", b.Log())
	}
}

func TestCRLRefusesRevokedCertificate(t *testing.T) {
	ca := testpki.New(t, "broker-test-ca")
	srv := ca.Server(t)
	revoked, kept := ca.Client(t, "dev-1"), ca.Client(t, "dev-1")
	crl := ca.CRL(t)
	b := Start(t, Options{CAFile: ca.CAFile(t), CertFile: srv.CertFile, KeyFile: srv.KeyFile, CRLFile: crl})
	cfg := func(is *testpki.Issued) *tls.Config {
		return &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{*is.TLS}}
	}
	if err := handshake(b.Addr, cfg(revoked)); err != nil {
		t.Fatalf("before revocation: %v", err)
	}
	b.Stop()
	ca.CRL(t, revoked.Cert)
	b.Start()
	if err := handshake(b.Addr, cfg(revoked)); err == nil {
		t.Fatal("revoked certificate accepted after restart with the CRL")
	}
	if err := handshake(b.Addr, cfg(kept)); err != nil {
		t.Fatalf("unrevoked certificate: %v", err)
	}
}

func TestPubThroughputCountsDeliveries(t *testing.T) {
	ca, b := start(t)
	admin := ca.Client(t, "admin")
	var got atomic.Int64
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + b.Addr).SetClientID("admin-sub").
		SetTLSConfig(&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{*admin.TLS}}).SetOrderMatters(false))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	defer sub.Disconnect(0)
	if tok := sub.Subscribe("devices/#", 1, func(paho.Client, paho.Message) { got.Add(1) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	dev := ca.Client(t, "dev-1")
	const n = 2000
	lines := make([][]byte, n)
	for i := range lines {
		lines[i] = []byte(fmt.Sprintf(`{"id":"m-%d"}`, i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := PubOptions{Addr: b.Addr, CAFile: ca.CAFile(t), CertFile: dev.CertFile, KeyFile: dev.KeyFile, ClientID: "dev-1-pub", Topic: "devices/dev-1/telemetry"}
	rate, err := PubThroughput(ctx, o, lines, func(ctx context.Context) error { return until(ctx, func() bool { return got.Load() >= n }) })
	if err != nil {
		t.Fatal(err)
	}
	if rate <= 0 {
		t.Fatalf("rate %v", rate)
	}
	t.Logf("mosquitto_pub: %.0f msgs/s", rate)
	// The ACL applies to mosquitto_pub too: dev-1 may not write to dev-2.
	o.Topic = "devices/dev-2/telemetry"
	before := got.Load()
	if _, err := PubThroughput(ctx, o, lines[:10], nil); err != nil {
		t.Fatal(err)
	}
	o.Topic = "devices/dev-1/telemetry"
	if _, err := PubThroughput(ctx, o, lines[:1], func(ctx context.Context) error { return until(ctx, func() bool { return got.Load() > before }) }); err != nil {
		t.Fatal(err)
	}
	if d := got.Load() - before; d != 1 {
		t.Fatalf("%d messages arrived; the 10 to dev-2's topic must be dropped", d)
	}
	if _, err := PubThroughput(ctx, o, [][]byte{[]byte("a\nb")}, nil); err == nil {
		t.Fatal("a line with a newline was accepted")
	}
}

func until(ctx context.Context, cond func() bool) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// TestMaxTLS12: a client offering TLS 1.3 gets 1.2 from a MaxTLS12 broker,
// 1.3 from a default one.
func TestMaxTLS12(t *testing.T) {
	ca := testpki.New(t, "broker-test-ca")
	srv := ca.Server(t)
	dev := ca.Client(t, "dev-1")
	for _, c := range []struct {
		max12 bool
		want  uint16
	}{{true, tls.VersionTLS12}, {false, tls.VersionTLS13}} {
		b := Start(t, Options{CAFile: ca.CAFile(t), CertFile: srv.CertFile, KeyFile: srv.KeyFile, MaxTLS12: c.max12})
		conn, err := tls.Dial("tcp", b.Addr, &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{*dev.TLS}, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		if got := conn.ConnectionState().Version; got != c.want {
			t.Errorf("MaxTLS12 %v: negotiated %s, want %s", c.max12, tls.VersionName(got), tls.VersionName(c.want))
		}
		conn.Close()
	}
}
