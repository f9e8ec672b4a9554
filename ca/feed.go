package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/deviceid"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/revocation"
)

// maxFeedWaiters bounds the long polls held open at once.
const maxFeedWaiters = 256

// EnforcerCertTTL is the lifetime of an enforcer certificate.
const EnforcerCertTTL = 365 * 24 * time.Hour

// enforcerIDPrefix keys enforcer certificates in the issued-certificate
// record, apart from device ids (which cannot contain ':').
const enforcerIDPrefix = "enforcer:"

// Enforcer is an issued enforcer identity.
type Enforcer struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// CreateEnforcer issues the client certificate (and a new P-256 key) that an
// enforcement point (a broker companion, an HTTPS backend) presents to
// follow the revocation feed. name follows the device id grammar.
func (c *CA) CreateEnforcer(ctx context.Context, name string) (Enforcer, error) {
	if err := deviceid.Validate(name); err != nil {
		return Enforcer{}, fmt.Errorf("create enforcer: name: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Enforcer{}, fmt.Errorf("create enforcer: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return Enforcer{}, err
	}
	now := c.now()
	u, err := url.Parse(revocation.EnforcerURIPrefix + name)
	if err != nil {
		return Enforcer{}, fmt.Errorf("create enforcer: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: enforcerIDPrefix + name},
		URIs:                  []*url.URL{u},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(EnforcerCertTTL),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if tmpl.NotAfter.After(c.auth.intermediate.NotAfter) {
		tmpl.NotAfter = c.auth.intermediate.NotAfter
	}
	if c.auth.crlURL != "" {
		tmpl.CRLDistributionPoints = []string{c.auth.crlURL}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.auth.intermediate, &key.PublicKey, c.auth.signer)
	if err != nil {
		return Enforcer{}, fmt.Errorf("create enforcer: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Enforcer{}, fmt.Errorf("create enforcer: %w", err)
	}
	if err := c.rev.RecordIssued(ctx, SerialHex(serial), enforcerIDPrefix+name, cert.NotAfter, now); err != nil {
		return Enforcer{}, fmt.Errorf("create enforcer: %w", err)
	}
	return Enforcer{Cert: cert, Key: key}, nil
}

// enforcerName returns the enforcer a verified client certificate names.
func enforcerName(cert *x509.Certificate) (string, bool) {
	for _, u := range cert.URIs {
		if name, ok := strings.CutPrefix(u.String(), revocation.EnforcerURIPrefix); ok && deviceid.Validate(name) == nil {
			return name, true
		}
	}
	return "", false
}

// serveFeed answers the revocation feed's long poll.
func (c *CA) serveFeed(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet) {
		return
	}
	now := c.now()
	peer, err := c.verifyClientCert(r, now)
	if err != nil {
		writeError(w, refuse(http.StatusUnauthorized, est.CodeClientCertRequired, "the revocation feed needs an enforcer client certificate (edgeca enforcer create)"))
		return
	}
	name, ok := enforcerName(peer)
	if !ok {
		writeError(w, refuse(http.StatusForbidden, est.CodeDeviceNotAllowed, "the revocation feed is for enforcer certificates only (edgeca enforcer create)"))
		return
	}
	if revoked, err := c.rev.IsRevoked(r.Context(), SerialHex(peer.SerialNumber)); err != nil || revoked {
		writeError(w, refuse(http.StatusForbidden, est.CodeDeviceRevoked, "this enforcer certificate is revoked"))
		return
	}
	q := r.URL.Query()
	since, err := strconv.ParseInt(q.Get("since"), 10, 64)
	if q.Get("since") == "" {
		since, err = 0, nil
	}
	if err != nil || since < 0 {
		writeError(w, refuse(http.StatusBadRequest, est.CodeNotFound, "since: want the cursor of the last answer (0 for everything)"))
		return
	}
	wait := time.Duration(0)
	if s := q.Get("wait"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			writeError(w, refuse(http.StatusBadRequest, est.CodeNotFound, "wait: want seconds"))
			return
		}
		wait = min(time.Duration(n)*time.Second, revocation.MaxWait)
	}
	// The server's read deadline (a request's headers and body) would
	// cancel a long poll's context when it passes: net/http's background
	// read fails with it. Move it, and the write deadline, past the wait.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(wait + headerTimeout))
	_ = rc.SetWriteDeadline(time.Now().Add(wait + headerTimeout))
	c.crl.mu.Lock()
	if c.crl.waiters >= maxFeedWaiters {
		c.crl.mu.Unlock()
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: est.CodeRateLimited, Msg: "too many feed followers: retry later", RetryAfter: 5 * time.Second})
		return
	}
	c.crl.waiters++
	c.crl.mu.Unlock()
	defer func() { c.crl.mu.Lock(); c.crl.waiters--; c.crl.mu.Unlock() }()

	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		c.crl.mu.Lock()
		changed := c.crl.changed
		c.crl.mu.Unlock()
		evs, err := c.rev.RevocationEvents(r.Context(), since, revocation.MaxEvents)
		if err != nil {
			c.log.Error("revocation feed", "enforcer", name, "err", err)
			writeError(w, refuse(http.StatusInternalServerError, est.CodeInternal, "internal error, see the edgeca log"))
			return
		}
		if len(evs) > 0 || wait == 0 {
			page := revocation.Page{Cursor: since, Events: make([]revocation.Event, 0, len(evs))}
			for _, e := range evs {
				page.Events = append(page.Events, revocation.Event{Seq: e.Seq, Kind: e.Kind, Serial: e.Serial, Device: e.DeviceID, NotAfter: e.NotAfter, At: e.At, Reason: e.Reason})
				page.Cursor = e.Seq
			}
			if len(evs) == 0 {
				// An empty answer moves a cursor from before a pruned
				// stretch to the present.
				if seq, err := c.rev.RevocationSeq(r.Context()); err == nil && seq > since {
					page.Cursor = seq
				}
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(page)
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			wait = 0
		case <-r.Context().Done():
			return
		}
	}
}
