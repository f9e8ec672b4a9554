package mqtt

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/poll"
	"github.com/edgeagent/edgeagent/uplink"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// TestStatusEchoCountsItsConnection: the "online" a connection publishes
// comes back while that connection is being set up (the persistent session
// routes it before connect returns). The agent tells connections apart by
// number: with Reconnects, counted after setup, the echo was credited to
// the old connection, and every renewal's switch (and every reconnect)
// made the agent report that the broker drops its messages while a
// subscriber received all of them. Setup, read in the handler, must equal
// Stats.Conn once the new connection is in use.
func TestStatusEchoCountsItsConnection(t *testing.T) {
	e := newEnv(t)
	sp, err := spool.Open(t.TempDir(), spool.Options{Sync: spool.SyncNever})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	id := uplink.NewIdentity(e.ca.Client(t, "dev-e").TLS)
	var pub *Publisher
	var lastEcho atomic.Int64
	lastEcho.Store(-1)
	pub, err = New(Options{
		BrokerURL: e.broker.URL(), ClientID: "dev-e", Spool: sp, Identity: id,
		TLS:            uplink.ClientTLSConfig(uplink.TLSOptions{RootCAs: e.ca.Pool(), Identity: id}),
		TelemetryTopic: "devices/dev-e/telemetry", StatusTopic: "devices/dev-e/status",
		// As the agent: the command subscription is set up after the
		// status one, so the echo arrives before connect returns.
		CommandTopic: "devices/dev-e/commands", OnCommand: func(string, []byte) {},
		OnStatusEcho: func(p []byte) {
			if string(p) == "online" {
				lastEcho.Store(int64(pub.Setup()))
			}
		},
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pub.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	poll.Until(t, 20*time.Second, "the first connection's echo", func() bool { return pub.Connected() && lastEcho.Load() == int64(pub.Stats().Conn) })
	for i := uint64(1); i <= 3; i++ {
		id.Store(e.ca.Client(t, "dev-e").TLS) // a renewal: make-before-break switch
		poll.Until(t, 20*time.Second, "the switch", func() bool { return pub.Reconnects() == i && pub.Connected() })
		poll.Until(t, 20*time.Second, "the new connection's echo", func() bool {
			conn := pub.Stats().Conn
			return conn == i+1 && lastEcho.Load() == int64(conn)
		})
	}
}
