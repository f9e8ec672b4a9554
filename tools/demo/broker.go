package demo

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgeagent/edgeagent/ca"
)

// broker is an embedded MQTT broker on a fixed loopback address that only
// accepts clients with a certificate from the demo CA (the TLS config
// requires and verifies one), lets each device use only its own topics
// (like mosquitto's use_identity_as_username plus a per-device ACL), and
// counts the telemetry it acknowledged. It can be stopped and started again
// on the same address, so a person can watch the agent spool and recover.
type broker struct {
	tls  *tls.Config
	log  *slog.Logger
	addr string // fixed after the first start

	mu    sync.Mutex
	srv   *mqtt.Server
	tally *tally
}

func newBroker(tlsCfg *tls.Config, log *slog.Logger, t *tally) *broker {
	return &broker{tls: tlsCfg, log: log, addr: "127.0.0.1:0", tally: t}
}

// Start listens (on a free port the first time, then on the same one) and
// serves until Stop.
func (b *broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		return nil
	}
	ln, err := tls.Listen("tcp", b.addr, b.tls)
	if err != nil {
		return fmt.Errorf("mqtt broker: listen on %s: %w", b.addr, err)
	}
	b.addr = ln.Addr().String()
	srv := mqtt.New(&mqtt.Options{Logger: b.log, InlineClient: false})
	if err := srv.AddHook(&brokerHook{tally: b.tally}, nil); err != nil {
		ln.Close()
		return fmt.Errorf("mqtt broker: %w", err)
	}
	if err := srv.AddListener(listeners.NewNet("mqtts", ln)); err != nil {
		ln.Close()
		return fmt.Errorf("mqtt broker: %w", err)
	}
	if err := srv.Serve(); err != nil {
		_ = srv.Close()
		return fmt.Errorf("mqtt broker: %w", err)
	}
	b.srv = srv
	b.tally.setUp(true)
	return nil
}

// Stop closes the listener and every client connection.
func (b *broker) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv == nil {
		return
	}
	_ = b.srv.Close()
	b.srv = nil
	b.tally.setUp(false)
}

// Toggle stops a running broker or starts a stopped one.
func (b *broker) Toggle() error {
	b.mu.Lock()
	running := b.srv != nil
	b.mu.Unlock()
	if running {
		b.Stop()
		return nil
	}
	return b.Start()
}

// Addr is the broker's host:port.
func (b *broker) Addr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addr
}

// brokerHook authorizes by the client certificate and counts telemetry.
type brokerHook struct {
	mqtt.HookBase
	tally *tally
}

func (h *brokerHook) ID() string { return "edgedemo" }

func (h *brokerHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublished}, []byte{b})
}

// peer returns the device id and serial of the client's certificate, which
// the TLS handshake already verified against the demo CA.
func peer(cl *mqtt.Client) (id, serial string, ok bool) {
	tc, isTLS := cl.Net.Conn.(*tls.Conn)
	if !isTLS {
		return "", "", false
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", "", false
	}
	id, err := ca.DeviceIDFromCert(certs[0])
	if err != nil {
		return "", "", false
	}
	return id, ca.SerialHex(certs[0].SerialNumber), true
}

// OnConnectAuthenticate admits a client whose client id is the device id in
// its certificate.
func (h *brokerHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	id, _, ok := peer(cl)
	return ok && id == cl.ID
}

// OnACLCheck allows a device its own topics only.
func (h *brokerHook) OnACLCheck(cl *mqtt.Client, topic string, _ bool) bool {
	id, _, ok := peer(cl)
	return ok && strings.HasPrefix(topic, "devices/"+id+"/")
}

// OnPublished runs after the broker sent PUBACK for a QoS 1 message.
func (h *brokerHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if !strings.HasSuffix(pk.TopicName, "/telemetry") {
		return
	}
	_, serial, _ := peer(cl)
	h.tally.add(serial, pk.Payload)
}
