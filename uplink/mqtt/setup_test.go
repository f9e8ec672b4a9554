package mqtt

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgeagent/edgeagent/testkit/testpki"
	"github.com/edgeagent/edgeagent/uplink"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// TestConnectionLostBeforeStatusAckIsRetried: the broker goes away after
// CONNACK but before it acknowledges the retained "online" status. paho
// never completes that PUBLISH's token (CleanSession false keeps it for a
// resume), so the publisher must notice the loss itself and connect again,
// not wait for ever. Seen in the e2e crash test as an agent whose uplink
// stayed down after a broker restart.
//
// mosquitto cannot be made to drop a connection at exactly this point, so
// the broker here is a TLS listener that speaks just enough MQTT: on the
// first connection it reads CONNECT, answers CONNACK, reads the status
// PUBLISH and closes; the second connection is the retry this test waits
// for (it is held open unanswered).
func TestConnectionLostBeforeStatusAckIsRetried(t *testing.T) {
	ca := testpki.New(t, "device-ca")
	srv := ca.Server(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{*srv.TLS}, ClientCAs: ca.Pool(),
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	statusSeen := make(chan string, 1)
	retried := make(chan struct{})
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		held []net.Conn
	)
	defer func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if n > 0 {
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
				if n == 1 {
					close(retried)
				}
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				if pk, err := packets.ReadPacket(c); err != nil {
					t.Errorf("broker: read CONNECT: %v", err)
					return
				} else if _, ok := pk.(*packets.ConnectPacket); !ok {
					t.Errorf("broker: got %s, want CONNECT", pk)
					return
				}
				ack := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
				if err := ack.Write(c); err != nil {
					t.Errorf("broker: write CONNACK: %v", err)
					return
				}
				pk, err := packets.ReadPacket(c)
				if err != nil {
					t.Errorf("broker: read status PUBLISH: %v", err)
					return
				}
				if pub, ok := pk.(*packets.PublishPacket); ok {
					statusSeen <- pub.TopicName + "=" + string(pub.Payload)
				}
				// Close without PUBACK.
			}()
		}
	}()

	sp, err := spool.Open(t.TempDir(), spool.Options{Sync: spool.SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	id := uplink.NewIdentity(ca.Client(t, "dev-s").TLS)
	pub, err := New(Options{
		BrokerURL: "mqtts://" + ln.Addr().String(), ClientID: "dev-s", Spool: sp, Identity: id,
		TLS:            uplink.ClientTLSConfig(uplink.TLSOptions{RootCAs: ca.Pool(), Identity: id}),
		TelemetryTopic: "devices/dev-s/telemetry", StatusTopic: "devices/dev-s/status",
		RetryMin: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pub.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	select {
	case s := <-statusSeen:
		if s != "devices/dev-s/status=online" {
			t.Fatalf("first PUBLISH after CONNACK: %q, want the online status", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the publisher did not publish its status on the first connection")
	}
	// Well under connectTimeout: the loss itself, not a timeout, must end
	// the wait.
	select {
	case <-retried:
	case <-time.After(connectTimeout / 2):
		t.Fatalf("no new connection %v after the broker dropped the first one before acknowledging the status; last error %q", connectTimeout/2, pub.LastError())
	}
	if got := pub.LastError(); !strings.Contains(got, "connection lost") {
		t.Fatalf("last error %q, want it to say the connection was lost", got)
	}
}
