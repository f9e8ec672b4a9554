// Package mosquittosync keeps a mosquitto broker in step with edgeca's
// revocations: it writes mosquitto's crlfile (atomically) and makes
// mosquitto reload it (SIGHUP) whenever the feed reports a revocation and
// before the CRL's nextUpdate, and it disconnects the sessions already open
// for a revoked device, which a CRL alone never does (mosquitto checks it
// at handshake time only).
//
// Disconnecting uses MQTT's own session takeover: the companion connects
// with the revoked device's client id (edgeagent uses its device id) and a
// clean session, so the broker closes the device's connection (MQTT 3.1.1
// §3.1.4, 5.0 reason 0x8E) and drops its session; the companion then
// leaves. Every other client is untouched. This needs no broker plugin
// (mosquitto 2.0's dynamic-security plugin can kick a client, but only one
// it manages itself: it would have to own every device's credentials and
// ACLs instead of the acl_file the README's recipe uses), and it works on
// any MQTT broker that checks CRLs.
package mosquittosync

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeagent/edgeagent/internal/atomicfile"
	"github.com/edgeagent/edgeagent/revocation"
)

// CRLPath is the CA's CRL endpoint the companion fetches.
const CRLPath = "/crl/current.crl"

// Options configures a Syncer.
type Options struct {
	CAURL string      // edgeca's https://HOST:PORT
	TLS   *tls.Config // trusts edgeca's root, presents the enforcer certificate
	// CRLFile is mosquitto's crlfile.
	CRLFile string
	// ExtraCRLs are PEM files of the CRLs of the other CAs mosquitto's
	// cafile holds, appended to edgeca's: with a crlfile, OpenSSL
	// refuses a client whose issuer has no CRL in it. Read at every write.
	ExtraCRLs []string
	// Pid returns mosquitto's process id (from its pid_file).
	Pid func() (int, error)
	// Broker is mosquitto's TLS listener, host:port; BrokerTLS the
	// companion's TLS config there (the enforcer certificate, the
	// broker's CA). Empty Broker: no disconnects, CRL only.
	Broker    string
	BrokerTLS *tls.Config
	Logger    *slog.Logger
	Now       func() time.Time
}

// Syncer runs the companion.
type Syncer struct {
	o      Options
	client *http.Client
	mu     sync.Mutex
	number string // CRL number written last
	next   time.Time
	// Kicked counts sessions taken over (for tests and logs).
	kicked int
	wg     sync.WaitGroup // the delayed second kicks
}

// New checks the options.
func New(o Options) (*Syncer, error) {
	if o.CRLFile == "" || o.Pid == nil || o.TLS == nil || o.CAURL == "" {
		return nil, errors.New("mosquitto sync: needs the CA URL, the enforcer TLS config, the crlfile and mosquitto's pid")
	}
	if o.Broker != "" && o.BrokerTLS == nil {
		return nil, errors.New("mosquitto sync: --broker needs a TLS config")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.CAURL = strings.TrimRight(o.CAURL, "/")
	return &Syncer{o: o, client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: o.TLS.Clone()}}}, nil
}

// Kicked is how many sessions the syncer has taken over.
func (s *Syncer) Kicked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kicked
}

// Run writes the CRL once, then follows the feed until ctx ends.
func (s *Syncer) Run(ctx context.Context) error {
	if err := s.UpdateCRL(ctx); err != nil {
		return err
	}
	f, err := revocation.NewFollower(revocation.FollowerOptions{CAURL: s.o.CAURL, TLS: s.o.TLS, Logger: s.o.Logger, Now: s.o.Now,
		OnRevoke: s.onRevoke})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.refreshLoop(ctx)
	}()
	err = f.Run(ctx)
	cancel()
	<-done
	s.wg.Wait()
	return err
}

// refreshLoop rewrites the CRL at half its validity: mosquitto (OpenSSL)
// refuses every client once its CRL is past nextUpdate. Unrevokes reach
// mosquitto this way too.
func (s *Syncer) refreshLoop(ctx context.Context) {
	for {
		s.mu.Lock()
		wait := max(s.next.Sub(s.o.Now()), time.Second)
		s.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := s.UpdateCRL(ctx); err != nil && ctx.Err() == nil {
			s.o.Logger.Error("mosquitto sync: refresh CRL", "err", err)
			s.mu.Lock()
			s.next = s.o.Now().Add(5 * time.Second)
			s.mu.Unlock()
		}
	}
}

func (s *Syncer) onRevoke(ctx context.Context, evs []revocation.Event) {
	if err := s.UpdateCRL(ctx); err != nil {
		s.o.Logger.Error("mosquitto sync: update CRL", "err", err)
	}
	if s.o.Broker == "" {
		return
	}
	var ids []string
	for _, e := range evs {
		if e.Device == "" || strings.Contains(e.Device, ":") || slices.Contains(ids, e.Device) {
			continue // enforcer certificates have no device session
		}
		ids = append(ids, e.Device)
	}
	s.kickAll(ctx, ids)
	// Once more a little later: a device that reconnected in the moment
	// between the SIGHUP and mosquitto's reload got in with the old CRL.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTimer(secondKick)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			s.kickAll(ctx, ids)
		}
	}()
}

// secondKick is when sessions of revoked devices are taken over again.
const secondKick = 3 * time.Second

func (s *Syncer) kickAll(ctx context.Context, ids []string) {
	for _, id := range ids {
		if err := s.Kick(ctx, id); err != nil && ctx.Err() == nil {
			s.o.Logger.Error("mosquitto sync: disconnect", "device", id, "err", err)
		}
	}
}

// UpdateCRL fetches the CRL, writes it if it is new and reloads mosquitto.
func (s *Syncer) UpdateCRL(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.o.CAURL+CRLPath, nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch CRL: %w", err)
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch CRL: %s %v", resp.Status, err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("fetch CRL: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next = crl.ThisUpdate.Add(crl.NextUpdate.Sub(crl.ThisUpdate) / 2)
	if n := crl.Number.String(); n == s.number {
		return nil
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	retiring, err := s.retiringCRLs(ctx)
	if err != nil {
		return err
	}
	out = append(out, retiring...)
	for _, f := range s.o.ExtraCRLs {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("extra CRL: %w", err)
		}
		out = append(append(out, '\n'), b...)
	}
	if err := atomicfile.Write(s.o.CRLFile, out, 0o644); err != nil {
		return fmt.Errorf("write crlfile: %w", err)
	}
	pid, err := s.o.Pid()
	if err != nil {
		return fmt.Errorf("reload mosquitto: %w", err)
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload mosquitto (pid %d): %w", pid, err)
	}
	s.number = crl.Number.String()
	s.o.Logger.Info("mosquitto sync: CRL written, mosquitto reloaded", "file", s.o.CRLFile, "revoked", len(crl.RevokedCertificateEntries), "pid", pid)
	return nil
}

// RetiringCRLPath serves the CRLs of the intermediates a rotation is
// retiring (PEM; 404 when none): OpenSSL refuses a client whose issuer has
// no CRL, and devices hold their certificates until they renew.
const RetiringCRLPath = "/crl/retiring.pem"

// retiringCRLs fetches the retiring intermediates' CRLs, nil when none.
func (s *Syncer) retiringCRLs(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.o.CAURL+RetiringCRLPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch retiring CRLs: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch retiring CRLs: %s %v", resp.Status, err)
	}
	for rest := b; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if _, err := x509.ParseRevocationList(blk.Bytes); blk.Type != "X509 CRL" || err != nil {
			return nil, fmt.Errorf("fetch retiring CRLs: a %q block that is not a CRL: %v", blk.Type, err)
		}
	}
	return b, nil
}

// Kick takes over the session of client id clientID and leaves, so that
// the broker closes the device's connection.
func (s *Syncer) Kick(ctx context.Context, clientID string) error {
	opts := paho.NewClientOptions().AddBroker("ssl://" + s.o.Broker).SetClientID(clientID).SetTLSConfig(s.o.BrokerTLS).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).SetProtocolVersion(4)
	c := paho.NewClient(opts)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("take over session %s: %w", clientID, err)
	}
	c.Disconnect(0)
	s.mu.Lock()
	s.kicked++
	s.mu.Unlock()
	// MQTT 3.1.1 does not say whether a session was there to take over
	// (a clean session's CONNACK never has session present): the log says
	// what was done, not that a device was connected.
	s.o.Logger.Info("mosquitto sync: took over the revoked device's client id (its session, if open, is closed)", "client_id", clientID)
	return nil
}
