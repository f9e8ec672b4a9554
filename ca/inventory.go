package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/deviceid"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// Device states of the inventory, in the order a device is reported: the
// first that applies.
const (
	StateRevoked        = "revoked"
	StateExpired        = "expired"
	StateRenewalFailing = "renewal-failing"
	StateExpiring       = "expiring" // in the last third of its certificate's life, not renewed
	StateActive         = "active"
)

// States lists the device states, for flags, metrics and the fleet page.
var States = []string{StateActive, StateExpiring, StateRenewalFailing, StateExpired, StateRevoked}

// DeviceState is the state of d at now. A device in the last third of its
// certificate's lifetime has missed the renewal the agent schedules at
// about two thirds: it is "expiring" (unrenewed), and "renewal-failing"
// when its last renewal attempt after that certificate was refused.
func DeviceState(d store.DeviceInfo, now time.Time) string {
	switch {
	case d.Status == store.StatusRevoked:
		return StateRevoked
	case !now.Before(d.NotAfter):
		return StateExpired
	case renewalFailing(d):
		return StateRenewalFailing
	case inLastThird(d, now):
		return StateExpiring
	}
	return StateActive
}

func renewalFailing(d store.DeviceInfo) bool {
	return d.Renewal.Result == store.RenewalRefused && !d.Renewal.At.Before(d.IssuedAt)
}

// inLastThird reports whether d's newest certificate has less than a third
// of its lifetime left (and has not expired).
func inLastThird(d store.DeviceInfo, now time.Time) bool {
	nb := notBefore(d)
	if nb.IsZero() || !now.Before(d.NotAfter) {
		return false
	}
	return d.NotAfter.Sub(now)*3 < d.NotAfter.Sub(nb)
}

// notBefore is the NotBefore of d's newest certificate: recorded by the
// inventory, else read from the certificate when the row has it.
func notBefore(d store.DeviceInfo) time.Time {
	if !d.NotBefore.IsZero() {
		return d.NotBefore
	}
	if len(d.Cert) > 0 {
		if c, err := x509.ParseCertificate(d.Cert); err == nil {
			return c.NotBefore
		}
	}
	return time.Time{}
}

// InventoryQuery selects devices for `edgeca device list`.
type InventoryQuery struct {
	State    string        // one of States, "" for all
	Expiring time.Duration // only devices whose certificate ends within this (not yet expired), 0: no bound
	TokenID  string
	Labels   map[string]string // only devices carrying all of them
	Sort     string            // store.SortID, store.SortExpiry or store.SortLastSeen
	Limit    int
}

// InventoryDevice is a device with its state.
type InventoryDevice struct {
	store.DeviceInfo
	State string
}

// ErrUnknownState is returned for a state that is not one of States.
var ErrUnknownState = errors.New("unknown device state")

// Inventory lists the devices matching q: what the store can select it
// selects, the derived states are decided here (DeviceState).
func (c *CA) Inventory(ctx context.Context, q InventoryQuery) ([]InventoryDevice, error) {
	inv, ok := c.st.(store.InventoryStore)
	if !ok {
		return nil, fmt.Errorf("the store %T keeps no inventory", c.st)
	}
	now := c.now()
	f := store.DeviceFilter{TokenID: q.TokenID, Labels: q.Labels, Sort: q.Sort}
	switch q.State {
	case "":
	case StateRevoked:
		f.Status = store.StatusRevoked
	case StateExpired:
		f.Status, f.NotAfterBefore = store.StatusActive, now
	case StateRenewalFailing:
		f.Status, f.NotAfterFrom, f.RenewalRefused = store.StatusActive, now, true
	case StateExpiring, StateActive:
		f.Status, f.NotAfterFrom = store.StatusActive, now
	default:
		return nil, fmt.Errorf("%w %q: one of %s", ErrUnknownState, q.State, strings.Join(States, ", "))
	}
	if q.Expiring < 0 {
		return nil, fmt.Errorf("expiring within %s: must be positive", q.Expiring)
	}
	if q.Expiring > 0 {
		f.NotAfterFrom, f.NotAfterBefore = now, now.Add(q.Expiring)
		if q.State == StateExpired {
			return nil, errors.New("expired devices are not expiring: give one of --state expired or --expiring")
		}
	}
	// The derived states filter after the query: the limit applies then.
	derived := q.State == StateExpiring || q.State == StateActive || q.State == StateRenewalFailing
	if !derived {
		f.Limit = q.Limit
	}
	ds, err := inv.Inventory(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]InventoryDevice, 0, len(ds))
	for _, d := range ds {
		st := DeviceState(d, now)
		if q.State != "" && st != q.State {
			continue
		}
		out = append(out, InventoryDevice{DeviceInfo: d, State: st})
		if q.Limit > 0 && len(out) == q.Limit {
			break
		}
	}
	return out, nil
}

// DeviceDetail is `edgeca device show`: the device, its state and its
// newest certificates.
type DeviceDetail struct {
	InventoryDevice
	History []store.CertRecord
}

// DeviceDetail returns one device by any spelling of its id; it wraps
// store.ErrNotFound for an unknown id.
func (c *CA) DeviceDetail(ctx context.Context, id string) (DeviceDetail, error) {
	if err := deviceid.Validate(id); err != nil {
		return DeviceDetail{}, err
	}
	inv, ok := c.st.(store.InventoryStore)
	if !ok {
		return DeviceDetail{}, fmt.Errorf("the store %T keeps no inventory", c.st)
	}
	id = deviceid.Canonical(id)
	d, err := inv.DeviceInfo(ctx, id)
	if err != nil {
		return DeviceDetail{}, err
	}
	h, err := inv.CertHistory(ctx, id)
	if err != nil {
		return DeviceDetail{}, err
	}
	return DeviceDetail{InventoryDevice: InventoryDevice{DeviceInfo: d, State: DeviceState(d, c.now())}, History: h}, nil
}

// maxAgentLen bounds the recorded agent (User-Agent product).
const maxAgentLen = 64

// agentOf is the agent a User-Agent header names: its first product
// ("edgeagent/1.4.0" of "edgeagent/1.4.0 (linux; arm64)"), restricted to
// token characters and cut to maxAgentLen, so that a device cannot store
// more than a short printable word.
func agentOf(ua string) string {
	ua, _, _ = strings.Cut(strings.TrimSpace(ua), " ")
	var b strings.Builder
	for i := 0; i < len(ua) && b.Len() < maxAgentLen; i++ {
		ch := ua[i]
		if ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte("/.-_+~", ch) >= 0 {
			b.WriteByte(ch)
		}
	}
	return b.String()
}

// contactEvery bounds the inventory writes of one device: at most one
// last-seen update, and one refused-renewal record, per device per
// contactEvery (issuance records its contact in its own transaction).
const contactEvery = time.Minute

// maxContactEntries bounds the throttle's memory; only authenticated
// device ids enter it, so this is a fleet size, and past it the throttle
// starts over rather than growing.
const maxContactEntries = 1 << 17

// contactThrottle remembers when each device's last inventory write was.
type contactThrottle struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func newContactThrottle() *contactThrottle {
	return &contactThrottle{last: map[string]time.Time{}}
}

// allow reports whether key may be written at now, and if so notes it.
func (t *contactThrottle) allow(key string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if last, ok := t.last[key]; ok && now.Sub(last) < contactEvery && !now.Before(last) {
		return false
	}
	if len(t.last) >= maxContactEntries {
		t.sweepLocked(now)
		if len(t.last) >= maxContactEntries {
			clear(t.last)
		}
	}
	t.last[key] = now
	return true
}

// note records a write made elsewhere (an issuance).
func (t *contactThrottle) note(key string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.last) < maxContactEntries {
		t.last[key] = now
	}
}

func (t *contactThrottle) sweep(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepLocked(now)
}

func (t *contactThrottle) sweepLocked(now time.Time) {
	for k, at := range t.last {
		if now.Sub(at) >= contactEvery {
			delete(t.last, k)
		}
	}
}

// noteContact records an authenticated contact of a device that did not
// lead to an issuance (a /cacerts, /csrattrs or CRL fetch with its
// certificate): its last-seen time and agent, at most once a minute.
func (c *CA) noteContact(r *http.Request) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return
	}
	id, err := DeviceIDFromCert(r.TLS.PeerCertificates[0])
	if err != nil {
		return
	}
	id = deviceid.Canonical(id)
	now := c.now()
	// Verified before the throttle is consulted: a forged certificate
	// naming a device must neither hold back its last-seen nor fill the
	// throttle with made-up ids.
	if _, err := c.verifyClientCert(r, now); err != nil {
		return
	}
	if !c.contacts.allow("seen "+id, now) {
		return
	}
	inv, ok := c.st.(store.InventoryStore)
	if !ok {
		return
	}
	err = inv.RecordContact(context.WithoutCancel(r.Context()), store.Contact{DeviceID: id, At: now, Agent: agentOf(r.Header.Get("User-Agent"))})
	c.noteStore(err)
	if err != nil {
		c.log.Warn("record device contact", "device", id, "err", err)
	}
}

// noteRenewalRefused records the refusal of an authenticated renewal in
// the inventory (at most once a minute per device).
func (c *CA) noteRenewalRefused(ctx context.Context, a attempt, e *Error) {
	if a.op != est.OpSimpleReenroll || a.deviceID == "" || !a.authenticated || e.Code == est.CodeUnavailable || e.Status >= 500 {
		return
	}
	id := deviceid.Canonical(a.deviceID)
	now := c.now()
	if !c.contacts.allow("refused "+id, now) {
		return
	}
	inv, ok := c.st.(store.InventoryStore)
	if !ok {
		return
	}
	reason := e.Reason
	if reason == "" {
		reason = e.Msg
	}
	err := inv.RecordRenewalRefused(context.WithoutCancel(ctx), id, a.agent, store.RenewalResult{
		Result: store.RenewalRefused, Code: string(e.Code), Reason: Printable(reason, maxReasonLen), At: now})
	c.noteStore(err)
	if err != nil {
		c.log.Warn("record refused renewal", "device", id, "err", err)
	}
}
