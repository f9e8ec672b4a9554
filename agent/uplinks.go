package agent

import (
	"sync"
	"time"

	"github.com/edgeagent/edgeagent/agent/config"
	uhttps "github.com/edgeagent/edgeagent/uplink/https"
	"github.com/edgeagent/edgeagent/uplink/mqtt"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// UplinkState is what an uplink reports for status and metrics.
type UplinkState struct {
	Connected bool
	LastError string
	Acked     uint64
	// Errors counts failed sends: HTTPS batches that failed, MQTT
	// connections lost.
	Errors uint64
	// Dropping: the backend acknowledges what it does not deliver (MQTT:
	// the agent's own retained status did not come back).
	Dropping bool
}

// Uplink is a backend connection the daemon runs, MQTT and HTTPS alike:
// it sends its spool until ctx ends.
type Uplink interface {
	runner
	// Reconnect re-establishes the connection with the current identity.
	Reconnect()
	State() UplinkState
}

type mqttUplink struct {
	*mqtt.Publisher
	echo *statusEcho
}

func (u mqttUplink) State() UplinkState {
	s := u.Stats()
	st := UplinkState{Connected: s.Connected, LastError: s.LastError, Acked: s.Acked, Errors: s.Reconnects}
	if u.echo != nil {
		st.Dropping = u.echo.dropping(s.Connected, s.Conn)
	}
	return st
}

// statusEcho watches the MQTT uplink's own retained status come back
// (mqtt.Options.OnStatusEcho). Each connection publishes "online"; when
// it does not return within grace of the connection being first seen,
// the broker takes the publishes without delivering them (an ACL that
// denies the topic: MQTT 3.1.1 still sends PUBACK), and the acked count
// means nothing.
type statusEcho struct {
	now   func() time.Time
	grace time.Duration
	// conns returns the number of the connection being set up or in use
	// (Publisher.Setup; dropping is given Stats.Conn), which tells the
	// connections apart: the echo comes back during the setup.
	conns func() uint64

	mu       sync.Mutex
	echoConn uint64 // connection on which "online" last came back
	echoed   bool
	seenConn uint64 // connection last seen by dropping, and when
	seenAt   time.Time
	seen     bool
}

func (e *statusEcho) saw(payload []byte) {
	if string(payload) != "online" {
		return // a stale retained "offline" proves nothing
	}
	n := e.conns()
	e.mu.Lock()
	e.echoConn, e.echoed = n, true
	e.mu.Unlock()
}

// dropping reports whether the current connection's "online" failed to
// come back within grace.
func (e *statusEcho) dropping(connected bool, conn uint64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !connected {
		return false
	}
	if !e.seen || e.seenConn != conn {
		e.seenConn, e.seenAt, e.seen = conn, e.now(), true
	}
	if e.echoed && e.echoConn == conn {
		return false
	}
	return e.now().Sub(e.seenAt) >= e.grace
}

type httpsUplink struct{ *uhttps.Sender }

func (u httpsUplink) State() UplinkState {
	s := u.Stats()
	return UplinkState{Connected: s.Connected, LastError: s.LastError, Acked: s.Acked, Errors: s.Failures}
}

// part is a component the daemon supervises and a reload can replace:
// an uplink with its spool, or the collector. It owns which instance runs.
type part struct {
	name string
	// spool is the uplink's (nil for the collector): a replaced uplink's
	// in-flight messages are sent again by the next (at least once).
	spool *spool.Spool
	// build makes a new instance from a config (reload).
	build   func(config.Config) (runner, error)
	restart chan runner

	mu  sync.Mutex
	cur runner
}

func newPart(name string, sp *spool.Spool, build func(config.Config) (runner, error)) *part {
	return &part{name: name, spool: sp, build: build, restart: make(chan runner)}
}

func (p *part) current() runner {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur
}

func (p *part) set(r runner) {
	p.mu.Lock()
	p.cur = r
	p.mu.Unlock()
}

// uplink returns the running uplink, nil if the part is no uplink.
func (p *part) uplink() Uplink {
	u, _ := p.current().(Uplink)
	return u
}
