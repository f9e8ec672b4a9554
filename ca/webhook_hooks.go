package ca

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/ca/webhook"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// FleetOptions turns on the fleet hooks of a serving CA: webhooks and the
// authorizing hook for enrollment. The zero value is off.
type FleetOptions struct {
	// Webhooks, when set, posts events (webhook package). Events are
	// queued only while some edgeca serves with webhooks on.
	Webhooks *webhook.Config
	// ExpiryCheck is how often devices whose certificate expired
	// without a renewal are looked for (1 min).
	ExpiryCheck time.Duration
	// Authorize, when set, asks a URL before each token enrollment
	// (authorize.go).
	Authorize *AuthorizeOptions
}

// settingWebhooks is "1" while a server with webhooks has started last, so
// that a CLI command (device revoke) queues its events too.
const settingWebhooks = "webhook.enabled"

// fleetState is the CA's part for FleetOptions.
type fleetState struct {
	fs         store.FleetStore
	dispatcher *webhook.Dispatcher // nil: webhooks off in this process
	expiry     time.Duration
	authorize  *authorizer // nil: no authorizing hook

	// The store's "webhooks on" setting as last read (at onReadAt, Unix
	// nanoseconds), so that an enrollment does not read it each time.
	onReadAt atomic.Int64
	onCached atomic.Bool
}

// webhookSettingTTL is how long the store's "webhooks on" setting is
// trusted once read.
const webhookSettingTTL = 5 * time.Second

func newFleetState(o FleetOptions, st store.Store, now func() time.Time) (*fleetState, error) {
	fs, ok := st.(store.FleetStore)
	if !ok {
		return nil, fmt.Errorf("the store %T keeps no labels or webhook outbox", st)
	}
	f := &fleetState{fs: fs, expiry: o.ExpiryCheck}
	if f.expiry <= 0 {
		f.expiry = time.Minute
	}
	if o.Webhooks != nil {
		cfg := *o.Webhooks
		if cfg.Now == nil {
			cfg.Now = now
		}
		d, err := webhook.New(fs, cfg)
		if err != nil {
			return nil, err
		}
		f.dispatcher = d
	}
	if o.Authorize != nil {
		a, err := newAuthorizer(*o.Authorize)
		if err != nil {
			return nil, err
		}
		f.authorize = a
	}
	return f, nil
}

// Fleet is the fleet half of the CA's store.
func (c *CA) Fleet() store.FleetStore { return c.fleet.fs }

// runFleet delivers webhooks and notes expiries until ctx is done; with
// webhooks off it only records that.
func (c *CA) runFleet(ctx context.Context) {
	on := "0"
	if c.fleet.dispatcher != nil {
		on = "1"
	}
	if err := c.st.SetSetting(ctx, settingWebhooks, on); err != nil {
		c.log.Warn("record whether webhooks are on", "err", err)
	}
	if c.fleet.dispatcher == nil {
		return
	}
	done := make(chan struct{})
	go func() { defer close(done); c.fleet.dispatcher.Run(ctx) }()
	defer func() { <-done }()
	t := time.NewTicker(c.fleet.expiry)
	defer t.Stop()
	for {
		c.noteExpired(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// webhooksOn reports whether events should be queued: this process
// delivers them, or a server that does has said so in the store.
func (c *CA) webhooksOn(ctx context.Context) bool {
	if c.fleet.dispatcher != nil {
		return true
	}
	now := time.Now() // a cache age, not a CA time
	if at := c.fleet.onReadAt.Load(); at != 0 && now.Sub(time.Unix(0, at)) < webhookSettingTTL {
		return c.fleet.onCached.Load()
	}
	v, err := c.st.Setting(ctx, settingWebhooks)
	if err != nil {
		return false
	}
	c.fleet.onCached.Store(v == "1")
	c.fleet.onReadAt.Store(now.UnixNano())
	return v == "1"
}

// Event is the JSON body of a webhook delivery.
type Event struct {
	ID       string            `json:"id"` // stable: receivers deduplicate by it
	Type     string            `json:"type"`
	Time     time.Time         `json:"time"`
	Device   string            `json:"device"`
	Serial   string            `json:"serial,omitempty"`
	NotAfter *time.Time        `json:"not_after,omitempty"`
	Token    string            `json:"token,omitempty"`
	Peer     string            `json:"peer,omitempty"`
	Code     string            `json:"code,omitempty"`
	Reason   string            `json:"reason,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
}

func (e Event) outbox() store.OutboxEvent {
	b, _ := json.Marshal(e) // strings, times and a map of strings always marshal
	return store.OutboxEvent{ID: e.ID, Kind: e.Type, Created: e.Time, Body: b}
}

func randomID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail on supported platforms
	return prefix + hex.EncodeToString(b[:])
}

// issuedEvents are the events of an enrollment, queued in its Issue
// transaction (so none for one that did not commit). The id derives from
// the serial: a retry that records the same issuance queues nothing new.
func (c *CA) issuedEvents(ctx context.Context, tokenID, deviceID string, at time.Time, iss store.Issuance, peer string) []store.OutboxEvent {
	if !c.webhooksOn(ctx) {
		return nil
	}
	na := iss.NotAfter.UTC()
	ev := Event{Type: webhook.TypeRenewed, Time: at.UTC(), Device: deviceID, Serial: iss.Serial,
		NotAfter: &na, Token: tokenID, Peer: peer}
	var labels map[string]string
	var err error
	if tokenID != "" {
		ev.Type = webhook.TypeEnrolled
		labels, err = c.fleet.fs.TokenLabels(ctx, tokenID)
		if err == nil {
			cur, derr := c.fleet.fs.DeviceLabels(ctx, deviceID)
			if derr != nil || cur == nil {
				cur = map[string]string{} // the token's labels still go out
			}
			for k, v := range labels {
				if _, had := cur[k]; !had {
					cur[k] = v
				}
			}
			labels = cur
		}
	} else {
		labels, err = c.fleet.fs.DeviceLabels(ctx, deviceID)
	}
	if err == nil && len(labels) > 0 {
		ev.Labels = labels
	}
	ev.ID = "evt-" + ev.Type + "-" + iss.Serial
	return []store.OutboxEvent{ev.outbox()}
}

// queue enqueues events outside an enrollment, logging a failure: an event
// is never worth failing the operation it reports.
func (c *CA) queue(ctx context.Context, evs ...Event) {
	if len(evs) == 0 || !c.webhooksOn(ctx) {
		return
	}
	out := make([]store.OutboxEvent, len(evs))
	for i, e := range evs {
		if labels, err := c.fleet.fs.DeviceLabels(ctx, e.Device); err == nil && len(labels) > 0 {
			e.Labels = labels
		}
		out[i] = e.outbox()
	}
	if err := c.fleet.fs.Enqueue(context.WithoutCancel(ctx), out, store.DefaultOutboxMax); err != nil {
		c.log.Error("queue webhook events", "err", err, "type", evs[0].Type)
		return
	}
	c.wakeWebhooks()
}

func (c *CA) wakeWebhooks() {
	if c.fleet.dispatcher != nil {
		c.fleet.dispatcher.Wake()
	}
}

// refusedEvent reports a refused renewal of a device that authenticated
// with one of our certificates (so the peer is one of ours, and the
// refusal sampler bounds how often). Other refusals are not events.
func (c *CA) refusedEvent(ctx context.Context, a attempt, e *Error, now time.Time) {
	if a.op != est.OpSimpleReenroll || a.deviceID == "" {
		return
	}
	c.queue(ctx, Event{ID: randomID("evt-" + webhook.TypeRenewalRefused + "-"), Type: webhook.TypeRenewalRefused, Time: now.UTC(),
		Device: a.deviceID, Peer: a.peer, Code: string(e.Code), Reason: Printable(e.Msg, maxReasonLen)})
}

// revokedEvent reports a revocation.
func (c *CA) revokedEvent(ctx context.Context, rv Revocation) {
	now := c.now().UTC()
	c.queue(ctx, Event{ID: fmt.Sprintf("evt-%s-%s-%d", webhook.TypeRevoked, rv.DeviceID, now.UnixNano()), Type: webhook.TypeRevoked, Time: now, Device: rv.DeviceID})
}

// noteExpired queues an event for each device whose newest certificate
// expired without a renewal; the store notes each expiry once.
func (c *CA) noteExpired(ctx context.Context) {
	now := c.now().UTC()
	for {
		n, err := c.fleet.fs.NoteExpired(ctx, now, 500, store.DefaultOutboxMax, func(d store.Device) store.OutboxEvent {
			na := d.NotAfter.UTC()
			return Event{ID: "evt-" + webhook.TypeExpired + "-" + d.ID + "-" + d.Serial, Type: webhook.TypeExpired, Time: now,
				Device: d.ID, Serial: d.Serial, NotAfter: &na, Reason: "the certificate expired without a renewal"}.outbox()
		})
		if err != nil {
			c.log.Warn("look for expired certificates", "err", err)
			return
		}
		if n > 0 {
			c.wakeWebhooks()
		}
		if n < 500 {
			return
		}
	}
}
