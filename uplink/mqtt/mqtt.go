// Package mqtt is the MQTT uplink (MQTT 3.1.1 over mutual TLS, with
// github.com/eclipse/paho.mqtt.golang): it publishes spooled telemetry at
// QoS 1 and acks each message in the spool on its PUBACK, keeps a retained
// online/offline status topic through the last will, and hands messages on
// the device's command topic to local apps.
package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/internal/backoff"
	"github.com/edgeagent/edgeagent/uplink/spool"
)

// Options configure a Publisher.
type Options struct {
	BrokerURL      string // mqtts://host:port
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
	RetryMin  time.Duration
	RetryMax  time.Duration
	Logger    *slog.Logger
	Rand      func() float64
}

// Publisher is the MQTT uplink.
type Publisher struct {
	o      Options
	broker string

	reconnect chan struct{}
	connected atomic.Bool
	acked     atomic.Uint64
	published atomic.Uint64
	reconns   atomic.Uint64
	mu        sync.Mutex
	lastErr   string
}

// New validates o.
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
	if o.RetryMin <= 0 {
		o.RetryMin = 500 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	return &Publisher{o: o, broker: "ssl://" + u.Hostname() + ":" + port, reconnect: make(chan struct{}, 1)}, nil
}

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
// (after a renewal, so the broker sees the new certificate).
func (p *Publisher) Reconnect() {
	select {
	case p.reconnect <- struct{}{}:
	default:
	}
}

// errReconnect ends a session on request.
var errReconnect = errors.New("reconnect requested")

// Run connects, publishes and reconnects until ctx ends.
func (p *Publisher) Run(ctx context.Context) error {
	var old paho.Client
	attempt := 0
	for {
		c, lost, err := p.connect(ctx)
		if old != nil {
			// Make-before-break: the new session is up (the broker has
			// already dropped the old one, same client id); now close ours.
			old.Disconnect(0)
			old = nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.setErr(err)
			wait := backoff.Delay(attempt, p.o.RetryMin, p.o.RetryMax, p.o.Rand())
			attempt++
			p.o.Logger.Warn("mqtt: connect failed", "broker", p.o.BrokerURL, "err", err, "retry_in", wait)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		attempt = 0
		p.connected.Store(true)
		p.setErr(nil)
		err = p.session(ctx, c, lost)
		p.connected.Store(false)
		if ctx.Err() != nil {
			p.goOffline(c)
			return nil
		}
		p.reconns.Add(1)
		if errors.Is(err, errReconnect) {
			p.o.Logger.Info("mqtt: reconnecting with the current identity")
			old = c
			continue
		}
		c.Disconnect(0)
		p.setErr(err)
		p.o.Logger.Warn("mqtt: connection lost", "err", err)
	}
}

// connect makes one connection and announces the device online.
func (p *Publisher) connect(ctx context.Context) (paho.Client, chan error, error) {
	lost := make(chan error, 1)
	opts := paho.NewClientOptions().
		AddBroker(p.broker).
		SetClientID(p.o.ClientID).
		SetTLSConfig(p.o.TLS).
		SetCleanSession(false).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(p.o.KeepAlive).
		SetConnectTimeout(15 * time.Second).
		SetWriteTimeout(15 * time.Second).
		SetOrderMatters(false).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if p.o.StatusTopic != "" {
		opts.SetWill(p.o.StatusTopic, "offline", 1, true)
	}
	c := paho.NewClient(opts)
	if err := wait(ctx, c.Connect()); err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", p.o.BrokerURL, err)
	}
	if p.o.StatusTopic != "" {
		if err := wait(ctx, c.Publish(p.o.StatusTopic, 1, true, "online")); err != nil {
			c.Disconnect(0)
			return nil, nil, fmt.Errorf("publish status: %w", err)
		}
	}
	if p.o.CommandTopic != "" && p.o.OnCommand != nil {
		if err := wait(ctx, c.Subscribe(p.o.CommandTopic, 1, func(_ paho.Client, m paho.Message) {
			p.o.OnCommand(m.Topic(), m.Payload())
		})); err != nil {
			c.Disconnect(0)
			return nil, nil, fmt.Errorf("subscribe %s: %w", p.o.CommandTopic, err)
		}
	}
	p.o.Logger.Info("mqtt: connected", "broker", p.o.BrokerURL, "client_id", p.o.ClientID)
	return c, lost, nil
}

func (p *Publisher) goOffline(c paho.Client) {
	if p.o.StatusTopic != "" {
		tok := c.Publish(p.o.StatusTopic, 1, true, "offline")
		tok.WaitTimeout(2 * time.Second)
	}
	c.Disconnect(250)
}

// wait waits for a paho token, giving up when ctx ends.
func wait(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

type inflight struct {
	seq uint64
	tok paho.Token
}

// session pumps the spool into one connection until it fails, ctx ends or
// a reconnect is requested. Everything not acknowledged is re-sent on the
// next connection (spool rewind): at-least-once.
func (p *Publisher) session(ctx context.Context, c paho.Client, lost chan error) error {
	p.o.Spool.Rewind()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	window := make(chan inflight, p.o.InFlight)
	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		p.ackLoop(sctx, cancel, window)
	}()
	go func() {
		select {
		case err := <-lost:
			cancel(fmt.Errorf("connection lost: %w", err))
		case <-p.reconnect:
			cancel(errReconnect)
		case <-sctx.Done():
		}
	}()
	err := p.pumpLoop(sctx, c, window)
	close(window)
	<-ackerDone
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
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
// batches; a failed publish ends the session.
func (p *Publisher) ackLoop(ctx context.Context, cancel context.CancelCauseFunc, window <-chan inflight) {
	var seqs []uint64
	flush := func() {
		if len(seqs) == 0 {
			return
		}
		if err := p.o.Spool.Ack(seqs...); err != nil {
			cancel(fmt.Errorf("ack spool: %w", err))
		}
		p.acked.Add(uint64(len(seqs)))
		seqs = seqs[:0]
	}
	defer func() {
		flush()
		if err := p.o.Spool.Checkpoint(); err != nil {
			p.o.Logger.Warn("mqtt: checkpoint spool", "err", err)
		}
	}()
	for f := range window {
		select {
		case <-f.tok.Done():
		case <-ctx.Done():
			// Drain without waiting: the connection is going away and
			// everything unacked will be re-sent.
			continue
		}
		if err := f.tok.Error(); err != nil {
			cancel(fmt.Errorf("publish: %w", err))
			continue
		}
		seqs = append(seqs, f.seq)
		if len(seqs) >= 64 || len(window) == 0 {
			flush()
		}
	}
}
