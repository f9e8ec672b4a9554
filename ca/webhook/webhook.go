// Package webhook delivers edgeca's fleet events (enrolled, renewed,
// renewal refused, revoked, expired without renewal) to HTTP receivers.
// Events wait in a durable outbox in the CA's store (so a restart loses
// none, and of several replicas one delivers each), and are posted as JSON
// with an HMAC-SHA256 signature, retried with capped jittered exponential
// backoff. Delivery is at least once: a receiver deduplicates by the event
// id (Edgeca-Event-Id, also the body's "id").
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/internal/backoff"
)

// Headers of every delivery.
const (
	HeaderSignature = "Edgeca-Signature" // t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">
	HeaderEventID   = "Edgeca-Event-Id"
	HeaderEventType = "Edgeca-Event-Type"
)

// Event types.
const (
	TypeEnrolled       = "device.enrolled"
	TypeRenewed        = "device.renewed"
	TypeRenewalRefused = "device.renewal_refused"
	TypeRevoked        = "device.revoked"
	TypeExpired        = "certificate.expired"
)

// Outbox is what the dispatcher needs of the store.
type Outbox interface {
	ClaimEvents(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]store.OutboxEvent, error)
	AckEvent(ctx context.Context, id, owner string) error
	RetryEvent(ctx context.Context, id, owner string, next time.Time) error
	OutboxDropped(ctx context.Context) (int64, error)
}

// Config configures delivery. URLs and Secret are required.
type Config struct {
	URLs   []string
	Secret []byte
	// Client posts the events; a client with a 10 s timeout, TLS 1.2 or
	// newer, and no redirects when nil.
	Client *http.Client
	Logger *slog.Logger
	Now    func() time.Time
	// Poll is how often the outbox is looked at without a Wake (2 s);
	// Lease how long a claimed event is this replica's (1 min): a
	// replica that dies holding events leaves them to the others after
	// it. Batch is the most events claimed at once (32).
	Poll, Lease time.Duration
	Batch       int
	// MinDelay and MaxDelay bound the retry backoff (1 s, 10 min).
	MinDelay, MaxDelay time.Duration
	// MaxAge is how long an event is retried before it is given up,
	// logged at error level (72 h).
	MaxAge time.Duration
}

// MinSecretLen is the shortest secret accepted (16 bytes).
const MinSecretLen = 16

// maxURLs bounds the receivers one event goes to.
const maxURLs = 16

// Dispatcher posts the outbox's events until its Run ends.
type Dispatcher struct {
	out   Outbox
	cfg   Config
	owner string
	wake  chan struct{}
}

// ValidateURL accepts an http or https URL with a host.
func ValidateURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("webhook URL %q: %v", s, err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("webhook URL %q: want http(s)://host[:port]/path", s)
	}
	return nil
}

// New checks cfg and makes a dispatcher on out.
func New(out Outbox, cfg Config) (*Dispatcher, error) {
	if len(cfg.URLs) == 0 || len(cfg.URLs) > maxURLs {
		return nil, fmt.Errorf("webhooks: give 1 to %d URLs, got %d", maxURLs, len(cfg.URLs))
	}
	for _, u := range cfg.URLs {
		if err := ValidateURL(u); err != nil {
			return nil, fmt.Errorf("webhooks: %w", err)
		}
	}
	if len(cfg.Secret) < MinSecretLen {
		return nil, fmt.Errorf("webhooks: the secret must be at least %d bytes, got %d", MinSecretLen, len(cfg.Secret))
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Timeout:       10 * time.Second,
			Transport:     &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}, Proxy: http.ProxyFromEnvironment},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Poll, 2*time.Second)
	// One event may take every URL's full timeout; a lease must outlast
	// a few such events, or another replica re-claims (and re-posts)
	// events this one is still delivering.
	perEvent := time.Duration(len(cfg.URLs)) * cfg.Client.Timeout
	if cfg.Client.Timeout <= 0 {
		perEvent = time.Duration(len(cfg.URLs)) * 10 * time.Second
	}
	def(&cfg.Lease, max(time.Minute, 4*perEvent))
	def(&cfg.MinDelay, time.Second)
	def(&cfg.MaxDelay, 10*time.Minute)
	def(&cfg.MaxAge, 72*time.Hour)
	if cfg.Batch <= 0 {
		cfg.Batch = 32
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("webhooks: %w", err)
	}
	return &Dispatcher{out: out, cfg: cfg, owner: "edgeca-" + hex.EncodeToString(b[:]), wake: make(chan struct{}, 1)}, nil
}

// Wake makes Run look at the outbox now (an event was queued); it never
// blocks.
func (d *Dispatcher) Wake() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Run delivers until ctx is done.
func (d *Dispatcher) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	var dropped int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
		}
		for ctx.Err() == nil {
			n, err := d.round(ctx)
			if err != nil {
				d.cfg.Logger.Warn("webhook outbox", "err", err)
				break
			}
			if n < d.cfg.Batch {
				break
			}
		}
		if n, err := d.out.OutboxDropped(ctx); err == nil && n > dropped {
			d.cfg.Logger.Error("webhook outbox was full: oldest events dropped", "dropped_total", n, "dropped_new", n-dropped)
			dropped = n
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(d.cfg.Poll)
	}
}

// round claims one batch and delivers it; it returns how many it claimed.
func (d *Dispatcher) round(ctx context.Context) (int, error) {
	evs, err := d.out.ClaimEvents(ctx, d.owner, d.cfg.Now(), d.cfg.Lease, d.cfg.Batch)
	if err != nil {
		return 0, fmt.Errorf("claim events: %w", err)
	}
	// A delivery made is acknowledged even while shutting down, so that
	// a restart does not post it again.
	actx := context.WithoutCancel(ctx)
	claimed := d.cfg.Now()
	for _, ev := range evs {
		if ctx.Err() != nil {
			return len(evs), nil // the rest go back when the lease ends
		}
		if d.cfg.Now().Sub(claimed) > d.cfg.Lease/2 {
			// Slow receivers: stop before the lease runs out under the
			// rest, which go back to the outbox when it ends.
			return len(evs), nil
		}
		err := d.deliver(ctx, ev)
		now := d.cfg.Now()
		switch {
		case err == nil:
			if err := d.out.AckEvent(actx, ev.ID, d.owner); err != nil {
				return len(evs), fmt.Errorf("acknowledge event %s: %w", ev.ID, err)
			}
			d.cfg.Logger.Debug("webhook delivered", "event", ev.ID, "type", ev.Kind, "attempt", ev.Attempts+1)
		case GiveUp(ev.Created, now, d.cfg.MaxAge):
			d.cfg.Logger.Error("webhook event given up", "event", ev.ID, "type", ev.Kind, "attempts", ev.Attempts+1, "err", err)
			if err := d.out.AckEvent(actx, ev.ID, d.owner); err != nil {
				return len(evs), fmt.Errorf("drop event %s: %w", ev.ID, err)
			}
		default:
			delay := backoff.Delay(ev.Attempts, d.cfg.MinDelay, d.cfg.MaxDelay, jitter())
			d.cfg.Logger.Warn("webhook delivery failed, will retry", "event", ev.ID, "type", ev.Kind, "attempt", ev.Attempts+1, "retry_in", delay.Round(time.Millisecond).String(), "err", err)
			if err := d.out.RetryEvent(actx, ev.ID, d.owner, now.Add(delay)); err != nil {
				return len(evs), fmt.Errorf("release event %s: %w", ev.ID, err)
			}
		}
	}
	return len(evs), nil
}

// GiveUp decides whether an event created at created and failing at now
// has been retried long enough.
func GiveUp(created, now time.Time, maxAge time.Duration) bool {
	return !created.IsZero() && now.Sub(created) >= maxAge
}

func jitter() float64 {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<53))
	if err != nil {
		return 0.5
	}
	return float64(n.Int64()) / (1 << 53)
}

// deliver posts ev to every URL; it fails if one of them fails (then all
// get it again: receivers deduplicate by id).
func (d *Dispatcher) deliver(ctx context.Context, ev store.OutboxEvent) error {
	var errs []error
	for _, u := range d.cfg.URLs {
		if err := d.post(ctx, u, ev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *Dispatcher) post(ctx context.Context, u string, ev store.OutboxEvent) error {
	where := redactURL(u) // errors are logged: no credentials or query from the URL
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(ev.Body))
	if err != nil {
		return fmt.Errorf("post to %s: bad URL", where)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "edgeca-webhook")
	req.Header.Set(HeaderEventID, ev.ID)
	req.Header.Set(HeaderEventType, ev.Kind)
	req.Header.Set(HeaderSignature, Sign(d.cfg.Secret, d.cfg.Now(), ev.Body))
	resp, err := d.cfg.Client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text repeats the URL, query included
		}
		return fmt.Errorf("post to %s: %w", where, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post to %s: %s", where, resp.Status)
	}
	return nil
}

// redactURL is u without user info, query or fragment, for logs.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	p.User, p.RawQuery, p.ForceQuery, p.Fragment, p.RawFragment = nil, "", false, "", ""
	return p.String()
}

// Sign returns the Edgeca-Signature header value for body sent at t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>".
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// ErrBadSignature is wrapped by every Verify failure.
var ErrBadSignature = errors.New("bad webhook signature")

// Verify checks a delivery as a receiver should: the header parses, its
// time is within tolerance of now (a replayed old delivery fails), and one
// v1 value is the HMAC of "<t>.<body>", compared in constant time.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return fmt.Errorf("%w: want t=<unix>,v1=<hex>", ErrBadSignature)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: timestamp %s is %s away from now", ErrBadSignature, ts, d.Round(time.Second))
	}
	want := mac(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return fmt.Errorf("%w: no v1 matches", ErrBadSignature)
}
