package revocation

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/internal/backoff"
)

// FollowerOptions configures a Follower.
type FollowerOptions struct {
	// CAURL is edgeca's EST URL, https://HOST:PORT.
	CAURL string
	// TLS trusts edgeca's root and presents an enforcer certificate
	// (edgeca enforcer create).
	TLS *tls.Config
	// Set receives the feed; NewSet() when nil.
	Set *Set
	// OnRevoke is called with the events that revoked something new, in
	// the follower's goroutine, after Set has them.
	OnRevoke func(context.Context, []Event)
	// Wait is the long poll's wait; MaxWait when zero.
	Wait   time.Duration
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Follower keeps a Set current from edgeca's revocation feed.
type Follower struct {
	o      FollowerOptions
	client *http.Client
	synced chan struct{} // closed after the first page
}

// NewFollower checks the options.
func NewFollower(o FollowerOptions) (*Follower, error) {
	u, err := url.Parse(o.CAURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("revocation feed: CA URL %q: want https://HOST:PORT", o.CAURL)
	}
	if o.TLS == nil || (len(o.TLS.Certificates) == 0 && o.TLS.GetClientCertificate == nil) {
		return nil, errors.New("revocation feed: needs a TLS config with the enforcer certificate (edgeca enforcer create)")
	}
	if o.Set == nil {
		o.Set = NewSet()
	}
	if o.Wait <= 0 || o.Wait > MaxWait {
		o.Wait = MaxWait
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.CAURL = strings.TrimRight(o.CAURL, "/")
	tr := &http.Transport{TLSClientConfig: o.TLS.Clone(), ResponseHeaderTimeout: o.Wait + 15*time.Second, MaxIdleConns: 1}
	return &Follower{o: o, client: &http.Client{Transport: tr}, synced: make(chan struct{})}, nil
}

// Set is the set the follower keeps.
func (f *Follower) Set() *Set { return f.o.Set }

// Synced is closed once the follower has read the feed up to the present.
func (f *Follower) Synced() <-chan struct{} { return f.synced }

// Run follows the feed until ctx ends, retrying with backoff when the CA
// cannot be reached. It returns ctx's error.
func (f *Follower) Run(ctx context.Context) error {
	defer f.client.CloseIdleConnections()
	failures := 0
	synced := false
	lastPrune := f.o.Now()
	for ctx.Err() == nil {
		wait := f.o.Wait
		if !synced {
			wait = 0 // the first page at once
		}
		p, err := f.poll(ctx, f.o.Set.Cursor(), wait)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			d := backoff.Delay(failures, 500*time.Millisecond, 30*time.Second, rand.Float64())
			failures++
			f.o.Logger.Warn("revocation feed: poll failed, retrying", "ca", f.o.CAURL, "err", err, "retry_in", d)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			continue
		}
		failures = 0
		added := f.o.Set.Apply(p)
		if len(added) > 0 {
			f.o.Logger.Info("revocation feed: revoked", "certificates", len(added), "cursor", p.Cursor)
			if f.o.OnRevoke != nil {
				f.o.OnRevoke(ctx, added)
			}
		}
		if len(p.Events) < MaxEvents && !synced {
			synced = true
			close(f.synced)
		}
		if now := f.o.Now(); now.Sub(lastPrune) > time.Hour {
			f.o.Set.Prune(now)
			lastPrune = now
		}
	}
	return ctx.Err()
}

func (f *Follower) poll(ctx context.Context, since int64, wait time.Duration) (Page, error) {
	u := f.o.CAURL + FeedPath + "?since=" + strconv.FormatInt(since, 10) + "&wait=" + strconv.Itoa(int(wait/time.Second))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return Page{}, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return Page{}, fmt.Errorf("revocation feed: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b [512]byte
		n, _ := resp.Body.Read(b[:])
		return Page{}, fmt.Errorf("revocation feed: %s: %s", resp.Status, strings.TrimSpace(string(b[:n])))
	}
	return DecodePage(resp.Body)
}
