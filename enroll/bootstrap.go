package enroll

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// ErrPinMismatch is wrapped when no certificate the server presents has the
// pinned fingerprint.
var ErrPinMismatch = errors.New("CA pin mismatch")

// FetchPinnedRoots is FetchPinned returning a pool of the pinned
// certificate, ready for Options.Roots.
func FetchPinnedRoots(ctx context.Context, server string, pin token.Pin, timeout time.Duration) (*x509.CertPool, error) {
	c, err := FetchPinned(ctx, server, pin, timeout)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(c)
	return roots, nil
}

// FetchPinned authenticates an EST server on first contact by a pin: the
// SHA-256 fingerprint of a CA certificate in the server's TLS chain. It
// performs a handshake that trusts nothing, takes the chain the server
// presented from the verification error, finds the pinned CA certificate
// in it, and then verifies the server's chain (and host name) against that
// certificate alone. Nothing is sent before the server is authenticated.
// The pinned certificate is returned as the trust anchor for the client.
func FetchPinned(ctx context.Context, server string, pin token.Pin, timeout time.Duration) (*x509.Certificate, error) {
	return FetchPinnedAt(ctx, server, pin, timeout, time.Now)
}

// FetchPinnedAt is FetchPinned verifying the server's certificate at the
// time now returns (the agent's skew-corrected clock); nil means time.Now.
func FetchPinnedAt(ctx context.Context, server string, pin token.Pin, timeout time.Duration, now func() time.Time) (*x509.Certificate, error) {
	return fetchPinned(ctx, server, pin, timeout, now, proxyFromEnvironment)
}

// fetchPinned is FetchPinnedAt connecting through the proxy that proxy
// picks (HTTPS_PROXY and NO_PROXY for FetchPinnedAt, as for the EST client).
func fetchPinned(ctx context.Context, server string, pin token.Pin, timeout time.Duration, now func() time.Time, proxy ProxyFunc) (*x509.Certificate, error) {
	if now == nil {
		now = time.Now
	}
	pinned, presented, host, err := findPinned(ctx, server, pin, timeout, proxy)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(pinned)
	inter := x509.NewCertPool()
	for _, c := range presented[1:] {
		inter.AddCert(c)
	}
	if _, err := presented[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       host,
		CurrentTime:   now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, fmt.Errorf("enroll: %s's certificate does not verify against the pinned CA: %w", server, explainTLS(err))
	}
	return pinned, nil
}

// presentedChain performs a handshake that trusts nothing and returns the
// certificates the server presented, unverified, from the verification
// error. Nothing is sent over it.
func presentedChain(ctx context.Context, server string, timeout time.Duration, proxy ProxyFunc) (chain []*x509.Certificate, host string, err error) {
	if err := token.ValidateURL(server); err != nil {
		return nil, "", fmt.Errorf("enroll: %w", err)
	}
	u, _ := url.Parse(server)
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "443"
	}
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	// One deadline for the proxy, the tunnel and the handshake together.
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := dialServer(ctx, u, net.JoinHostPort(host, port), proxy)
	if err != nil {
		return nil, "", fmt.Errorf("enroll: connect to %s: %w", server, err)
	}
	defer raw.Close()
	conn := tls.Client(raw, &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: host,
		RootCAs:    x509.NewCertPool(), // trust nothing: we want the chain, not a connection
		// Ask edgeca to include the root, which it leaves out for
		// clients that have it. http/1.1 as well: a server that
		// checks ALPN (Go's does) then finds a protocol it knows
		// instead of failing the handshake.
		NextProtos: []string{est.ALPNRootInChain, "http/1.1"},
		// Nothing is sent over this connection, so nothing needs
		// the post-quantum key exchange.
		CurvePreferences: KeyExchanges(false),
	})
	err = conn.HandshakeContext(ctx)
	if err == nil {
		// An empty root pool cannot verify anything; a connection here
		// means something is badly wrong. Never use it.
		return nil, "", fmt.Errorf("enroll: bootstrap TLS to %s verified with no trust anchors", server)
	}
	var cve *tls.CertificateVerificationError
	if !errors.As(err, &cve) {
		return nil, "", fmt.Errorf("enroll: connect to %s: %w", server, err)
	}
	if len(cve.UnverifiedCertificates) == 0 {
		return nil, "", fmt.Errorf("enroll: %s presented no certificates", server)
	}
	return cve.UnverifiedCertificates, host, nil
}

// findPinned finds the pinned CA certificate in the chain the server
// presents. The fingerprint match does not depend on the clock; verifying
// the server's certificate under it is the caller's job.
func findPinned(ctx context.Context, server string, pin token.Pin, timeout time.Duration, proxy ProxyFunc) (pinned *x509.Certificate, presented []*x509.Certificate, host string, err error) {
	if pin.IsZero() {
		return nil, nil, "", errors.New("enroll: no CA pin")
	}
	presented, host, err = presentedChain(ctx, server, timeout, proxy)
	if err != nil {
		return nil, nil, "", err
	}
	for _, c := range presented {
		if pin.Matches(c) {
			pinned = c
			break
		}
	}
	if pinned == nil {
		fps := make([]string, len(presented))
		for i, c := range presented {
			fps[i] = fmt.Sprintf("%s (%s)", token.PinOf(c), c.Subject.CommonName)
		}
		return nil, nil, "", fmt.Errorf("enroll: %w: %s presented %s, none is the pinned %s; check that the token belongs to this CA, or pass the CA bundle with --ca-bundle",
			ErrPinMismatch, server, strings.Join(fps, ", "), pin)
	}
	if !pinned.IsCA || !pinned.BasicConstraintsValid {
		return nil, nil, "", fmt.Errorf("enroll: the pinned certificate %q is not a CA certificate", pinned.Subject.CommonName)
	}
	return pinned, presented, host, nil
}

// DeviceURIPrefix starts the SAN URI that names a device.
const DeviceURIPrefix = "urn:edgeagent:device:"

// BuildCSR makes a PKCS#10 request for deviceID signed by key: subject CN
// and SAN URI name the device.
func BuildCSR(key crypto.Signer, deviceID string) ([]byte, error) {
	if err := token.ValidateID(deviceID); err != nil {
		return nil, fmt.Errorf("enroll: device id: %w", err)
	}
	uri, err := url.Parse(DeviceURIPrefix + deviceID)
	if err != nil {
		return nil, fmt.Errorf("enroll: device URI: %w", err)
	}
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: deviceID},
		URIs:    []*url.URL{uri},
	}
	switch key.Public().(type) {
	case *ecdsa.PublicKey:
		tmpl.SignatureAlgorithm = x509.ECDSAWithSHA256
	case *rsa.PublicKey:
		tmpl.SignatureAlgorithm = x509.SHA256WithRSA
	default:
		return nil, fmt.Errorf("enroll: unsupported key type %T", key.Public())
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("enroll: sign CSR: %w", err)
	}
	return der, nil
}

// CheckIssued verifies what the server issued: the first certificate is for
// key, names deviceID, allows clientAuth and chains to the CA bundle. It
// returns the chain to present in TLS (leaf and intermediates, no root).
func CheckIssued(certs []*x509.Certificate, key crypto.PublicKey, deviceID string, caBundle []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	if len(certs) == 0 {
		return nil, fmt.Errorf("enroll: %w: no certificate issued", ErrResponse)
	}
	var leaf *x509.Certificate
	for _, c := range certs {
		if k, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && k.Equal(key) {
			leaf = c
			break
		}
	}
	if leaf == nil {
		return nil, fmt.Errorf("enroll: %w: the issued certificate is not for this device's key", ErrResponse)
	}
	if leaf.Subject.CommonName != deviceID {
		return nil, fmt.Errorf("enroll: %w: issued for %q, want %q", ErrResponse, leaf.Subject.CommonName, deviceID)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range caBundle {
		if isSelfSigned(c) {
			roots.AddCert(c)
		} else {
			inter.AddCert(c)
		}
	}
	for _, c := range certs {
		if c != leaf {
			inter.AddCert(c)
		}
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return nil, fmt.Errorf("enroll: %w: the issued certificate does not verify against the CA bundle: %v", ErrResponse, err)
	}
	chain := chains[0]
	return chain[:len(chain)-1], nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil && string(c.RawSubject) == string(c.RawIssuer)
}
