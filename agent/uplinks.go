package agent

import (
	"sync"

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
}

// Uplink is a backend connection the daemon runs, MQTT and HTTPS alike:
// it sends its spool until ctx ends.
type Uplink interface {
	runner
	// Reconnect re-establishes the connection with the current identity.
	Reconnect()
	State() UplinkState
}

type mqttUplink struct{ *mqtt.Publisher }

func (u mqttUplink) State() UplinkState {
	s := u.Stats()
	return UplinkState{Connected: s.Connected, LastError: s.LastError, Acked: s.Acked, Errors: s.Reconnects}
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
