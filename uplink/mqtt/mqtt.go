// Package mqtt is the MQTT uplink (MQTT 3.1.1 over mutual TLS, with
// github.com/eclipse/paho.mqtt.golang): it publishes spooled telemetry at
// QoS 1 and acks each message in the spool on its PUBACK, keeps a retained
// online/offline status topic through the last will, and hands messages on
// the device's command topic to local apps.
//
// Reconnecting is ours, not paho's (AutoReconnect off): after a lost
// connection the spool is rewound to its oldest unacknowledged message and
// the next connection, made after a jittered, capped exponential backoff,
// sends it all again. Delivery is at-least-once; payloads carry message ids
// for de-duplication downstream.
//
// After a renewal (Identity.Changed, or Reconnect) the publisher switches
// connections make-before-break: it stops publishing on the old connection,
// waits briefly for the PUBACKs still outstanding, then connects with the
// renewed certificate, and only closes the old connection once the new one
// is up. If the new connection fails (say the broker rejects the renewed
// certificate) the old one carries on and the switch is retried with
// backoff. MQTT allows one connection per client id, so when the new
// connection arrives the broker itself closes the old one (mosquitto logs
// "Client <id> already connected, closing old connection") and, because
// that close is not a DISCONNECT, publishes the old connection's will: the
// status topic briefly reads "offline" before the new connection publishes
// "online". Draining first matters: publishes still in flight on the old
// connection at the takeover race the broker's session handover.
package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/internal/backoff"
	"github.com/edgeagent/edgeagent/uplink"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// Options configure a Publisher.
type Options struct {
	BrokerURL      string // mqtts://host:port (port defaults to 8883)
	TLS            *tls.Config
	ClientID       string // the device id
	TelemetryTopic string
	StatusTopic    string // retained "online"/"offline"; "" disables
	CommandTopic   string // "" disables
	KeepAlive      time.Duration
	Spool          *spool.Spool
	// InFlight bounds messages published but not yet acknowledged;
	// default 500.
	InFlight  int
	OnCommand func(topic string, payload []byte)
	// OnStatusEcho, with StatusTopic, subscribes to the status topic and
	// sees every message on it: the retained "online" published at each
	// connect coming back proves the broker takes this client's
	// publishes (an MQTT 3.1.1 broker acknowledges one its ACL denies).
	OnStatusEcho func(payload []byte)
	// Identity, when set, is watched: every Store switches to a new
	// connection (make-before-break) so the broker sees the renewed
	// certificate. TLS should serve the same Identity
	// (uplink.ClientTLSConfig).
	Identity *uplink.Identity
	// AckTimeout is how long the oldest in-flight message may wait for its
	// PUBACK before the connection is deemed broken and replaced; default
	// 30s.
	AckTimeout time.Duration
	// WriteTimeout bounds writing one TLS record's worth of queued
	// packets (up to 16 KiB); a connection that cannot take that much in
	// this time is deemed broken. Default 5s; raise it for slow links.
	WriteTimeout time.Duration
	RetryMin     time.Duration // first reconnect delay; default 500ms
	// RetryMax caps reconnect delays; default 20s, so that with the 15s
	// connect timeout a broker or path that comes back is used again
	// within about 35s.
	RetryMax time.Duration
	Logger   *slog.Logger
	Rand     func() float64 // jitter source in [0,1); default math/rand/v2
}

// Stats is a snapshot for status and metrics.
type Stats struct {
	Connected  bool
	Published  uint64 // PUBLISH packets sent, re-sends included
	Acked      uint64 // messages acknowledged by the broker and acked in the spool
	Reconnects uint64 // connections made after the first
	// Conn numbers the connection in use by its setup (Setup's count when
	// it began), so a status echo is matched to the connection it came on.
	Conn      uint64
	LastError string // last connection or publish error, "" once healthy
}

// ErrAckTimeout ends a connection on which a PUBACK did not come in time.
var ErrAckTimeout = errors.New("no PUBACK in time")

// publishWait is how long paho's Publish may wait to hand a packet to its
// writer (paho's "write timeout"; network writes are bounded by
// Options.WriteTimeout in batchConn). The writer only queues, so while the
// connection lives it takes each packet at once; the wait runs out only
// when the connection died under a Publish, as paho then stops taking
// packets, and it is how long the pump notices a lost connection late.
const publishWait = time.Second

// connectTimeout bounds the TCP and TLS handshake, and then MQTT's CONNECT.
const connectTimeout = 15 * time.Second

// drainTimeout bounds how long a switch waits for the old connection's
// outstanding PUBACKs; what is still unacknowledged then is sent again on
// the new connection.
const drainTimeout = 5 * time.Second

// Publisher is the MQTT uplink.
type Publisher struct {
	o      Options
	broker string

	reconnect chan struct{}
	connected atomic.Bool
	acked     atomic.Uint64
	published atomic.Uint64
	reconns   atomic.Uint64
	setups    atomic.Uint64 // connection setups begun (see Setup)
	inUse     atomic.Uint64 // the setup number of the connection in use
	mu        sync.Mutex
	lastErr   string
}

// New validates o and fills in defaults.
func New(o Options) (*Publisher, error) {
	u, err := url.Parse(o.BrokerURL)
	if err != nil || u.Scheme != "mqtts" || u.Hostname() == "" {
		return nil, fmt.Errorf("mqtt uplink: broker URL %q: want mqtts://host:port", o.BrokerURL)
	}
	port := u.Port()
	if port == "" {
		port = "8883"
	}
	if o.TLS == nil || o.Spool == nil || o.ClientID == "" || o.TelemetryTopic == "" {
		return nil, errors.New("mqtt uplink: TLS config, spool, client id and telemetry topic are required")
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.InFlight <= 0 {
		o.InFlight = 500
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 30 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 5 * time.Second
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 500 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 20 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	return &Publisher{o: o, broker: "ssl://" + u.Hostname() + ":" + port, reconnect: make(chan struct{}, 1)}, nil
}

// Stats returns counters and the connection state.
func (p *Publisher) Stats() Stats {
	return Stats{Connected: p.Connected(), Published: p.published.Load(), Acked: p.Acked(), Reconnects: p.Reconnects(), Conn: p.inUse.Load(), LastError: p.LastError()}
}

// Setup counts connection setups begun. A connection's own retained
// "online" comes back while it is being set up, before it is counted in
// Reconnects or becomes Stats.Conn: an OnStatusEcho handler reads Setup to
// know which connection the echo belongs to.
func (p *Publisher) Setup() uint64 { return p.setups.Load() }

// Connected reports whether a broker connection is up.
func (p *Publisher) Connected() bool { return p.connected.Load() }

// Acked counts messages the broker acknowledged.
func (p *Publisher) Acked() uint64 { return p.acked.Load() }

// Reconnects counts connections made after the first.
func (p *Publisher) Reconnects() uint64 { return p.reconns.Load() }

// LastError is the last connection or publish error, "" once healthy.
func (p *Publisher) LastError() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErr
}

func (p *Publisher) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.lastErr = ""
	} else {
		p.lastErr = err.Error()
	}
}

// Reconnect asks for a new connection, made before the old one is closed
// (after a renewal, so the broker sees the new certificate). With
// Options.Identity set, Identity.Store does this by itself.
func (p *Publisher) Reconnect() {
	select {
	case p.reconnect <- struct{}{}:
	default:
	}
}

// dropReconnectRequest forgets a Reconnect made before a connection that
// is about to start: that connection already uses the current identity.
// (The agent may both Store the identity and call Reconnect.)
func (p *Publisher) dropReconnectRequest() {
	select {
	case <-p.reconnect:
	default:
	}
}

// errSwitch ends a session that should hand over to a new connection.
var errSwitch = errors.New("switching to a new connection")

// identityChanged is closed at the next Identity.Store; nil (never) without
// an Identity. It is taken before each connect, so a renewal that lands
// during a handshake still triggers a switch.
func (p *Publisher) identityChanged() <-chan struct{} {
	if p.o.Identity == nil {
		return nil
	}
	return p.o.Identity.Changed()
}

// Run connects, publishes and reconnects until ctx ends. It returns nil
// when ctx ends; every other failure is retried.
func (p *Publisher) Run(ctx context.Context) error {
	var (
		c           paho.Client
		lost        <-chan error
		changed     <-chan struct{}
		retrySwitch *time.Timer
		attempt     int // consecutive failed connections
		switchTries int // consecutive failed switches
		first       = true
	)
	stopRetry := func() {
		if retrySwitch != nil {
			retrySwitch.Stop()
			retrySwitch = nil
		}
	}
	defer stopRetry()
	for {
		if c == nil {
			changed = p.identityChanged()
			p.dropReconnectRequest()
			nc, nl, err := p.connect(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				p.setErr(err)
				wait := backoff.Delay(attempt, p.o.RetryMin, p.o.RetryMax, p.o.Rand())
				attempt++
				p.o.Logger.Warn("mqtt: connect failed", "broker", p.o.BrokerURL, "err", err, "retry_in", wait)
				if !sleep(ctx, wait) {
					return nil
				}
				continue
			}
			if !first {
				p.reconns.Add(1)
			}
			first = false
			c, lost = nc, nl
			p.inUse.Store(p.setups.Load())
			p.connected.Store(true)
			p.setErr(nil)
		}
		var retryC <-chan time.Time
		if retrySwitch != nil {
			retryC = retrySwitch.C
		}
		began := time.Now()
		progress, err := p.session(ctx, c, lost, changed, retryC)
		if progress || time.Since(began) >= p.o.RetryMax {
			// A connection that worked resets the backoff; one the
			// broker drops at once (say, an ACL kick) does not.
			attempt = 0
		}
		switch {
		case ctx.Err() != nil:
			p.connected.Store(false)
			p.goOffline(c)
			return nil
		case errors.Is(err, errSwitch):
			stopRetry()
			changed = p.identityChanged()
			p.dropReconnectRequest()
			p.o.Logger.Info("mqtt: switching to a new connection with the current identity")
			nc, nl, cerr := p.connect(ctx)
			if cerr != nil {
				if ctx.Err() != nil {
					p.connected.Store(false)
					p.goOffline(c)
					return nil
				}
				cerr = fmt.Errorf("new connection with the renewed identity: %w", cerr)
				p.setErr(cerr)
				wait := backoff.Delay(switchTries, p.o.RetryMin, p.o.RetryMax, p.o.Rand())
				switchTries++
				p.o.Logger.Warn("mqtt: keeping the old connection", "err", cerr, "retry_in", wait)
				retrySwitch = time.NewTimer(wait)
				continue
			}
			switchTries = 0
			p.reconns.Add(1)
			// The broker closed the old connection when the new one
			// arrived with the same client id; this releases ours.
			c.Disconnect(0)
			c, lost = nc, nl
			p.inUse.Store(p.setups.Load())
			p.setErr(nil)
		default:
			stopRetry()
			switchTries = 0
			p.connected.Store(false)
			c.Disconnect(0)
			c = nil
			p.setErr(err)
			wait := backoff.Delay(attempt, p.o.RetryMin, p.o.RetryMax, p.o.Rand())
			attempt++
			p.o.Logger.Warn("mqtt: connection lost", "err", err, "retry_in", wait)
			if !sleep(ctx, wait) {
				return nil
			}
		}
	}
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// connect makes one connection, announces the device online and
// subscribes to the command topic.
func (p *Publisher) connect(ctx context.Context) (paho.Client, <-chan error, error) {
	p.setups.Add(1)
	lost := make(chan error, 1)
	opts := paho.NewClientOptions().
		AddBroker(p.broker).
		SetClientID(p.o.ClientID).
		// Our own TLS dial, so that paho writes through a batchConn.
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			return dialBatched(ctx, u.Host, p.o.TLS, connectTimeout, p.o.WriteTimeout)
		}).
		SetCleanSession(false).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(p.o.KeepAlive).
		SetConnectTimeout(connectTimeout).
		SetWriteTimeout(publishWait).
		SetOrderMatters(false).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if p.o.CommandTopic != "" && p.o.OnCommand != nil || p.o.StatusTopic != "" && p.o.OnStatusEcho != nil {
		// The session is persistent: commands queued while the device was
		// away arrive right after CONNACK, before our SUBSCRIBE is
		// acknowledged, and would otherwise find no handler.
		opts.SetDefaultPublishHandler(p.onMessage)
	}
	if p.o.StatusTopic != "" {
		opts.SetWill(p.o.StatusTopic, "offline", 1, true)
	}
	c := paho.NewClient(opts)
	if err := waitSetup(ctx, c.Connect(), lost); err != nil {
		c.Disconnect(0)
		return nil, nil, fmt.Errorf("connect to %s: %w", p.o.BrokerURL, err)
	}
	if p.o.StatusTopic != "" {
		if err := waitSetup(ctx, c.Publish(p.o.StatusTopic, 1, true, "online"), lost); err != nil {
			c.Disconnect(0)
			return nil, nil, fmt.Errorf("publish status to %s: %w", p.o.StatusTopic, err)
		}
	}
	if p.o.StatusTopic != "" && p.o.OnStatusEcho != nil {
		if err := waitSetup(ctx, c.Subscribe(p.o.StatusTopic, 1, p.onMessage), lost); err != nil {
			c.Disconnect(0)
			return nil, nil, fmt.Errorf("subscribe %s: %w", p.o.StatusTopic, err)
		}
	}
	if p.o.CommandTopic != "" && p.o.OnCommand != nil {
		if err := waitSetup(ctx, c.Subscribe(p.o.CommandTopic, 1, p.onMessage), lost); err != nil {
			c.Disconnect(0)
			return nil, nil, fmt.Errorf("subscribe %s: %w", p.o.CommandTopic, err)
		}
	}
	p.o.Logger.Info("mqtt: connected", "broker", p.o.BrokerURL, "client_id", p.o.ClientID)
	return c, lost, nil
}

func (p *Publisher) onMessage(_ paho.Client, m paho.Message) {
	// The persistent session may deliver status messages before the
	// SUBSCRIBE that names their handler: sort them by topic.
	if m.Topic() == p.o.StatusTopic {
		if p.o.OnStatusEcho != nil {
			p.o.OnStatusEcho(m.Payload())
		}
		return
	}
	if p.o.OnCommand != nil {
		p.o.OnCommand(m.Topic(), m.Payload())
	}
}

func (p *Publisher) goOffline(c paho.Client) {
	if p.o.StatusTopic != "" {
		tok := c.Publish(p.o.StatusTopic, 1, true, "offline")
		tok.WaitTimeout(2 * time.Second)
	}
	c.Disconnect(250)
}

// errSetupTimeout ends a connection whose CONNECT, status PUBLISH or
// SUBSCRIBE is not answered within connectTimeout.
var errSetupTimeout = errors.New("no answer from the broker in time")

// waitSetup waits for a paho token of a connection being set up, giving up
// when ctx ends, the connection is lost, or after connectTimeout.
//
// Waiting on the token alone can hang for ever: with CleanSession false
// paho does not complete a QoS 1 PUBLISH token when the connection drops
// (it keeps the message to resend on a reconnect of the same client, which
// we never make), so a broker that goes away between CONNACK and the
// status message's PUBACK would leave connect waiting, and the uplink
// stalled, until the process restarts. The connection-lost handler is the
// only signal then. A loss is consumed here: the caller discards the client.
func waitSetup(ctx context.Context, tok paho.Token, lost <-chan error) error {
	t := time.NewTimer(connectTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case err := <-lost:
		return fmt.Errorf("connection lost: %w", err)
	case <-t.C:
		return fmt.Errorf("%w (%v)", errSetupTimeout, connectTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

type inflight struct {
	seq uint64
	tok paho.Token
}

// session pumps the spool into one connection until it fails, ctx ends or
// a switch to a new connection is due (changed, retry or Reconnect). On a
// switch it stops publishing and waits up to drainTimeout for outstanding
// PUBACKs, leaving the connection open. Everything not acknowledged is
// sent again on the next connection (spool rewind). progress says whether
// any message was acknowledged.
func (p *Publisher) session(ctx context.Context, c paho.Client, lost <-chan error, changed <-chan struct{}, retry <-chan time.Time) (progress bool, err error) {
	p.o.Spool.Rewind()
	// Two stops: pumpCtx ends publishing, ackCtx ends waiting for PUBACKs.
	// A switch ends only the first; a failure ends both.
	pumpCtx, stopPump := context.WithCancelCause(ctx)
	defer stopPump(nil)
	ackCtx, abortAcks := context.WithCancelCause(ctx)
	defer abortAcks(nil)
	fail := func(err error) {
		stopPump(err)
		abortAcks(err)
	}
	window := make(chan inflight, p.o.InFlight)
	ackerDone := make(chan struct{})
	var acked uint64
	go func() {
		defer close(ackerDone)
		acked = p.ackLoop(ackCtx, fail, window)
	}()
	sessionDone := make(chan struct{})
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		var (
			drain      <-chan time.Time
			drainTimer *time.Timer
		)
		defer func() {
			if drainTimer != nil {
				drainTimer.Stop()
			}
		}()
		switchNow := func() {
			stopPump(errSwitch)
			if drainTimer == nil {
				drainTimer = time.NewTimer(drainTimeout)
				drain = drainTimer.C
			}
		}
		for {
			select {
			case err := <-lost:
				fail(fmt.Errorf("connection lost: %w", err))
				return
			case <-p.reconnect:
				switchNow()
			case <-changed:
				changed = nil
				switchNow()
			case <-retry:
				retry = nil
				switchNow()
			case <-drain:
				drain = nil
				abortAcks(errSwitch)
			case <-sessionDone:
				return
			}
		}
	}()
	err = p.pumpLoop(pumpCtx, c, window)
	close(window)
	<-ackerDone
	close(sessionDone)
	<-watcherDone
	progress = acked > 0
	if ctx.Err() != nil {
		return progress, ctx.Err()
	}
	if cause := context.Cause(ackCtx); cause != nil && !errors.Is(cause, errSwitch) {
		return progress, cause // lost, publish failed, ack timeout, spool ack failed
	}
	if err != nil {
		return progress, err
	}
	return progress, context.Cause(pumpCtx)
}

func (p *Publisher) pumpLoop(ctx context.Context, c paho.Client, window chan<- inflight) error {
	for {
		recs, err := p.o.Spool.Next(ctx, p.o.InFlight)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read spool: %w", err)
		}
		for _, r := range recs {
			if ctx.Err() != nil {
				return nil
			}
			tok := c.Publish(p.o.TelemetryTopic, 1, false, r.Payload)
			p.published.Add(1)
			select {
			case window <- inflight{seq: r.Seq, tok: tok}:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// ackLoop waits for PUBACKs in publish order and acks the spool in small
// batches; a failed publish or a PUBACK overdue by AckTimeout ends the
// session. Once ctx ends it only collects what has already completed.
func (p *Publisher) ackLoop(ctx context.Context, fail func(error), window <-chan inflight) (total uint64) {
	var seqs []uint64
	flush := func() {
		if len(seqs) == 0 {
			return
		}
		if err := p.o.Spool.Ack(seqs...); err != nil {
			fail(fmt.Errorf("ack spool: %w", err))
		} else {
			p.acked.Add(uint64(len(seqs)))
			total += uint64(len(seqs))
		}
		seqs = seqs[:0]
	}
	defer func() {
		flush()
		if err := p.o.Spool.Checkpoint(); err != nil {
			p.o.Logger.Warn("mqtt: checkpoint spool", "err", err)
		}
	}()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for f := range window {
		select {
		case <-f.tok.Done():
		default:
			if timer == nil {
				timer = time.NewTimer(p.o.AckTimeout)
			} else {
				timer.Reset(p.o.AckTimeout)
			}
			select {
			case <-f.tok.Done():
				timer.Stop()
			case <-ctx.Done():
				// The connection is going away; whatever is unacked
				// is sent again on the next one.
				continue
			case <-timer.C:
				fail(fmt.Errorf("publish seq %d: %w after %v", f.seq, ErrAckTimeout, p.o.AckTimeout))
				continue
			}
		}
		if err := f.tok.Error(); err != nil {
			fail(fmt.Errorf("publish: %w", err))
			continue
		}
		seqs = append(seqs, f.seq)
		if len(seqs) >= 64 || len(window) == 0 {
			flush()
		}
	}
	return total
}
