package ca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/deviceid"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// CRLPathPrefix is where edgeca serves its CRLs, over plain HTTP and TLS on
// the EST port: CRLPathPrefix + <issuer>.crl (DER), <issuer> being the hex
// subject key id of the issuing CA.
const CRLPathPrefix = "/crl/"

// CRLBaseFile is where `edgeca serve` records its CRL base URL, so that
// the edgeca commands (enforcer create, crl) issue and sign with the same
// distribution point: a CRL whose Issuing Distribution Point names one
// does not cover a certificate that names none, for OpenSSL.
const CRLBaseFile = "crl-base.url"

// storedCRLBase reads CRLBaseFile, "" when there is none.
func storedCRLBase(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, CRLBaseFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// CRLCurrentPath names the issuing CA's CRL without knowing its key id
// (what edgeca mosquitto-sync fetches).
const CRLCurrentPath = CRLPathPrefix + "current.crl"

var oidExtIssuingDistributionPoint = asn1.ObjectIdentifier{2, 5, 29, 28}
var oidExtCRLDistributionPoints = asn1.ObjectIdentifier{2, 5, 29, 31}

// crlValidity is how long a CRL is valid (its nextUpdate): a quarter of
// the certificate lifetime, at most 6 hours, so that a relying party that
// caches it refetches well within the life of any certificate. It is
// regenerated at half of that, and at once on every revocation.
func crlValidity(certTTL time.Duration) time.Duration {
	return min(certTTL/4, 6*time.Hour)
}

// crlName is the file name part of the CRL URL of an issuing CA.
func crlName(issuer *x509.Certificate) string {
	id := issuer.SubjectKeyId
	if len(id) > 8 {
		id = id[:8]
	}
	return hex.EncodeToString(id)
}

// crlState is the CA's current CRL and the revocation feed's waiters.
type crlState struct {
	mu         sync.Mutex
	der        []byte
	seq        int64 // revocation sequence the CRL reflects
	nextRegen  time.Time
	changed    chan struct{} // closed and replaced when seq moves on
	lastNumber *big.Int
	retiring   []byte // PEM CRLs of the retiring intermediates, same number
	waiters    int
}

func newCRLState() *crlState { return &crlState{changed: make(chan struct{})} }

// CRLURL is the CRL distribution point put in every leaf, "" when the CA
// was opened without one (Options.CRLBaseURL).
func (c *CA) CRLURL() string { return c.auth.crlURL }

// CRLPath is the path of the CA's CRL on its HTTP endpoint.
func (c *CA) CRLPath() string { return CRLPathPrefix + crlName(c.auth.intermediate) + ".crl" }

// appendDistributionPointName appends DistributionPointName fullName [0]
// { uniformResourceIdentifier [6] url } as the content of a [0] field.
func distributionPointName(url string) []byte {
	return est.AppendTLV(nil, 0xa0, est.AppendTLV(nil, 0x86, []byte(url)))
}

// idpExtension is the critical Issuing Distribution Point of our CRL: the
// distribution point the leaves name, and onlyContainsUserCerts (the CRL
// covers end-entity certificates; CA certificates come from the offline
// root).
func idpExtension(url string) pkix.Extension {
	var body []byte
	if url != "" {
		body = est.AppendTLV(body, 0xa0, distributionPointName(url))
	}
	body = append(body, 0x81, 0x01, 0xff) // onlyContainsUserCerts [1] TRUE
	return pkix.Extension{Id: oidExtIssuingDistributionPoint, Critical: true, Value: est.AppendTLV(nil, 0x30, body)}
}

// cdpExtension is a leaf's CRL Distribution Points extension, encoded as
// x509.CreateCertificate encodes CRLDistributionPoints.
func cdpExtension(url string) pkix.Extension {
	dp := est.AppendTLV(nil, 0x30, est.AppendTLV(nil, 0xa0, distributionPointName(url)))
	return pkix.Extension{Id: oidExtCRLDistributionPoints, Value: est.AppendTLV(nil, 0x30, dp)}
}

// buildCRL signs a CRL of revoked at now.
func (a *authority) buildCRL(revoked []store.RevokedCert, number *big.Int, now time.Time, validity time.Duration) ([]byte, error) {
	entries := make([]x509.RevocationListEntry, 0, len(revoked))
	for _, r := range revoked {
		b, err := hex.DecodeString(r.Serial)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("build CRL: stored serial %q is not hex", r.Serial)
		}
		entries = append(entries, x509.RevocationListEntry{
			SerialNumber:   new(big.Int).SetBytes(b),
			RevocationTime: r.RevokedAt.UTC(),
			ReasonCode:     r.Reason,
		})
	}
	tmpl := &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now.Add(-time.Minute).UTC(), // a relying party's clock a little behind
		NextUpdate:                now.Add(validity).UTC(),
		RevokedCertificateEntries: entries,
		ExtraExtensions:           []pkix.Extension{idpExtension(a.crlURL)},
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, a.intermediate, a.signer)
	if err != nil {
		return nil, fmt.Errorf("build CRL: %w", err)
	}
	return der, nil
}

// refreshCRL regenerates the CRL when the revocation sequence moved on or
// the current one is past half its life, and wakes feed waiters.
func (c *CA) refreshCRL(ctx context.Context, force bool) error {
	seq, err := c.rev.RevocationSeq(ctx)
	if err != nil {
		return err
	}
	now := c.now()
	c.crl.mu.Lock()
	defer c.crl.mu.Unlock()
	if !force && c.crl.der != nil && seq == c.crl.seq && now.Before(c.crl.nextRegen) {
		return nil
	}
	revoked, err := c.rev.Revoked(ctx, now)
	if err != nil {
		return err
	}
	// The CRL number must grow (RFC 5280 §5.2.3), also across restarts:
	// the generation time in nanoseconds, bumped past the last one.
	number := big.NewInt(now.UnixNano())
	if c.crl.lastNumber != nil && number.Cmp(c.crl.lastNumber) <= 0 {
		number = new(big.Int).Add(c.crl.lastNumber, big.NewInt(1))
	}
	validity := crlValidity(c.ttl)
	der, err := c.auth.buildCRL(revoked, number, now, validity)
	if err != nil {
		return err
	}
	var prev []byte
	for _, a := range c.retiring {
		d, err := a.buildCRL(revoked, number, now, validity)
		if err != nil {
			return err
		}
		prev = append(prev, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: d})...)
	}
	c.crl.der, c.crl.lastNumber, c.crl.nextRegen, c.crl.retiring = der, number, now.Add(validity/2), prev
	if seq != c.crl.seq {
		c.crl.seq = seq
		close(c.crl.changed)
		c.crl.changed = make(chan struct{})
	}
	return nil
}

// CRL returns the current CRL (DER), generating it if needed.
func (c *CA) CRL(ctx context.Context) ([]byte, error) {
	if err := c.refreshCRL(ctx, false); err != nil {
		return nil, fmt.Errorf("CRL: %w", err)
	}
	c.crl.mu.Lock()
	defer c.crl.mu.Unlock()
	return c.crl.der, nil
}

// CRLPEM is CRL in PEM.
func (c *CA) CRLPEM(ctx context.Context) ([]byte, error) {
	der, err := c.CRL(ctx)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// revocationPoll is how often the server looks for revocations made by
// another process (the edgeca command) in the shared store.
const revocationPoll = 500 * time.Millisecond

// followRevocations keeps the CRL current until ctx ends; pruning expired
// entries runs with it.
func (c *CA) followRevocations(ctx context.Context) {
	tick := time.NewTicker(revocationPoll)
	defer tick.Stop()
	lastPrune := time.Time{}
	for {
		if now := c.now(); now.Sub(lastPrune) > time.Minute {
			if err := c.rev.PruneRevocations(ctx, now); err != nil && ctx.Err() == nil {
				c.log.Error("prune revocations", "err", err)
			}
			lastPrune = now
		}
		if err := c.refreshCRL(ctx, false); err != nil && ctx.Err() == nil {
			c.log.Error("regenerate CRL", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// serveCRL answers GET CRLPath with the DER CRL.
func (c *CA) serveCRL(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet) {
		return
	}
	if r.URL.Path == CRLRetiringPath || c.retiringCRLIndex(r.URL.Path) >= 0 {
		c.serveRetiringCRL(w, r)
		return
	}
	if r.URL.Path != c.CRLPath() && r.URL.Path != CRLCurrentPath {
		writeError(w, refuse(http.StatusNotFound, est.CodeNotFound, "no such CRL: this CA's is "+c.CRLPath()))
		return
	}
	der, err := c.CRL(r.Context())
	if err != nil {
		c.log.Error("serve CRL", "err", err)
		writeError(w, refuse(http.StatusInternalServerError, est.CodeInternal, "internal error, see the edgeca log"))
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Header().Set("Content-Length", strconv.Itoa(len(der)))
	w.Header().Set("Cache-Control", "max-age=0, must-revalidate")
	_, _ = w.Write(der)
}

// PlainHandler is what edgeca serves over plain HTTP: the CRL only.
func (c *CA) PlainHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, CRLPathPrefix) {
			c.serveCRL(w, r)
			return
		}
		writeError(w, refuse(http.StatusNotFound, est.CodeNotFound, "plain HTTP serves only the CRL, at "+c.CRLPath()))
	})
}

// Revocation is the outcome of a revoke, unrevoke or delete.
type Revocation struct {
	DeviceID string
	Certs    []store.RevokedCert
}

// RevokeDevice revokes a device (any spelling of its id): it can no longer
// renew nor enroll again with a token, and every certificate it holds is
// on the CRL.
func (c *CA) RevokeDevice(ctx context.Context, id string) error {
	_, err := c.Revoke(ctx, id)
	return err
}

// Revoke is RevokeDevice, saying which certificates went on the CRL.
func (c *CA) Revoke(ctx context.Context, id string) (Revocation, error) {
	if err := deviceid.Validate(id); err != nil {
		return Revocation{}, err
	}
	id = deviceid.Canonical(id)
	certs, err := c.rev.RevokeDeviceCerts(ctx, id, "", store.ReasonUnspecified, true, c.now())
	if err != nil {
		return Revocation{}, err
	}
	c.kickCRL(ctx)
	rv := Revocation{DeviceID: id, Certs: certs}
	c.revokedEvent(ctx, rv) // webhook_hooks.go
	return rv, nil
}

// RevokeSerial revokes one certificate by its serial (hex, any case, an
// optional 0x or colons as openssl prints them).
func (c *CA) RevokeSerial(ctx context.Context, serial string, reason int) (store.RevokedCert, error) {
	sn, err := normalSerial(serial)
	if err != nil {
		return store.RevokedCert{}, err
	}
	rc, err := c.rev.RevokeSerial(ctx, sn, reason, c.now())
	if err != nil {
		return store.RevokedCert{}, err
	}
	c.kickCRL(ctx)
	return rc, nil
}

// UnrevokeDevice undoes RevokeDevice (a mistaken revoke): the device renews
// again and its certificates leave the CRL, except superseded ones.
func (c *CA) UnrevokeDevice(ctx context.Context, id string) (Revocation, error) {
	if err := deviceid.Validate(id); err != nil {
		return Revocation{}, err
	}
	id = deviceid.Canonical(id)
	certs, err := c.rev.UnrevokeDevice(ctx, id, c.now())
	if err != nil {
		return Revocation{}, err
	}
	c.kickCRL(ctx)
	return Revocation{DeviceID: id, Certs: certs}, nil
}

// DeleteDevice revokes every certificate of a device and removes it from
// the registry: a replacement (RMA) enrolls under the same id with a new
// token made for it.
func (c *CA) DeleteDevice(ctx context.Context, id string) (Revocation, error) {
	if err := deviceid.Validate(id); err != nil {
		return Revocation{}, err
	}
	id = deviceid.Canonical(id)
	certs, err := c.rev.DeleteDevice(ctx, id, c.now())
	if err != nil {
		return Revocation{}, err
	}
	c.kickCRL(ctx)
	return Revocation{DeviceID: id, Certs: certs}, nil
}

// Revoked lists the certificates on the CRL.
func (c *CA) Revoked(ctx context.Context) ([]store.RevokedCert, error) {
	return c.rev.Revoked(ctx, c.now())
}

// kickCRL regenerates the CRL of this process at once (a server in
// another process notices within revocationPoll).
func (c *CA) kickCRL(ctx context.Context) {
	if err := c.refreshCRL(ctx, true); err != nil {
		c.log.Error("regenerate CRL", "err", err)
	}
}

// normalSerial reads a serial as an operator pastes it: hex with or
// without 0x, colons or leading zeros, any case, odd length included (a
// serial is a number: Go's Text(16) and some tools drop a leading zero).
func normalSerial(s string) (string, error) {
	t := strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0x"), "0X"))
	t = strings.ReplaceAll(t, ":", "")
	n, ok := new(big.Int).SetString(t, 16)
	if !ok || t == "" || len(t) > 64 || strings.ContainsAny(t, "+-_") || n.BitLen() > 20*8 {
		return "", fmt.Errorf("serial %q: want the certificate serial in hex (at most 20 bytes)", s)
	}
	if n.Sign() == 0 {
		return "", errors.New("serial 0 is never issued")
	}
	return SerialHex(n), nil
}

// supersede puts every earlier certificate of a device that has just
// enrolled again with a token on the CRL: the new enrollment replaces
// them (a thief's copy of an old certificate stops working).
func (c *CA) supersede(ctx context.Context, deviceID string, cert *x509.Certificate) {
	certs, err := c.rev.RevokeDeviceCerts(ctx, deviceID, SerialHex(cert.SerialNumber), store.ReasonSuperseded, false, c.now())
	if err != nil {
		c.log.Error("supersede earlier certificates", "device", deviceID, "err", err)
		return
	}
	if len(certs) > 0 {
		c.log.Info("earlier certificates superseded by a token enrollment", "device", deviceID, "revoked", len(certs))
		c.kickCRL(ctx)
	}
}
