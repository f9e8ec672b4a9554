package enroll

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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
// SHA-256 fingerprint of a CA certificate. See FetchPinnedCA; this is it
// without a CA label, returning the pinned certificate only.
func FetchPinned(ctx context.Context, server string, pin token.Pin, timeout time.Duration) (*x509.Certificate, error) {
	return FetchPinnedAt(ctx, server, pin, timeout, time.Now)
}

// FetchPinnedAt is FetchPinned verifying the server's certificate at the
// time now returns (the agent's skew-corrected clock); nil means time.Now.
func FetchPinnedAt(ctx context.Context, server string, pin token.Pin, timeout time.Duration, now func() time.Time) (*x509.Certificate, error) {
	p, err := FetchPinnedCA(ctx, PinOptions{Server: server, Pin: pin, Timeout: timeout, Now: now})
	if err != nil {
		return nil, err
	}
	return p.Anchor, nil
}

// PinOptions configure FetchPinnedCA.
type PinOptions struct {
	// Server and Label locate the EST server (see Options).
	Server string
	Label  string
	// Pin is the fingerprint of a CA certificate of the server.
	Pin     token.Pin
	Timeout time.Duration
	// Now is the clock certificates are checked at; nil means time.Now.
	Now func() time.Time

	proxy ProxyFunc // nil: HTTPS_PROXY/NO_PROXY, as for the EST client
}

// PinnedCA is what FetchPinnedCA learned about the server.
type PinnedCA struct {
	// Anchor is the pinned CA certificate: the trust anchor for the
	// client (Options.Roots).
	Anchor *x509.Certificate
	// CACerts is the server's /cacerts answer when it was needed to find
	// the pinned certificate (RFC 7030 §4.1.1); nil when the pin was in
	// the TLS chain. Pass it as Options.Intermediates: a server that
	// presents only its own certificate is verified through it.
	CACerts []*x509.Certificate
}

// FetchPinnedCA authenticates an EST server on first contact by a pin. It
// performs a handshake that trusts nothing and takes the chain the server
// presented from the verification error. When the pinned CA certificate is
// in that chain, the server's chain (and host name) is verified against it
// alone. When it is not (TLS lets a server send only its own certificate),
// it follows RFC 7030 §4.1.1: over a provisional connection to the same
// server certificate it fetches /cacerts, and accepts the server only if
// the pinned certificate is among the CA certificates returned and the
// server's chain verifies to it, through those certificates. No credential
// is ever sent before the server is authenticated: the provisional
// connection carries one GET /cacerts and nothing else, and is closed.
func FetchPinnedCA(ctx context.Context, o PinOptions) (*PinnedCA, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.proxy == nil {
		o.proxy = proxyFromEnvironment
	}
	if o.Pin.IsZero() {
		return nil, errors.New("enroll: no CA pin")
	}
	presented, host, err := presentedChain(ctx, o.Server, o.Timeout, o.proxy)
	if err != nil {
		return nil, err
	}
	pinned, chainErr := pinnedIn(presented, o.Pin, "the server presented")
	if chainErr == nil {
		err := verifyServer(presented, nil, pinned, host, o.Now())
		if err == nil {
			return &PinnedCA{Anchor: pinned}, nil
		}
		// A chain with the pinned CA but not the intermediate between
		// (leaf and root only) may still verify through /cacerts.
		var uae x509.UnknownAuthorityError
		if !errors.As(err, &uae) {
			return nil, fmt.Errorf("enroll: %s's certificate does not verify against the pinned CA: %w", o.Server, explainTLS(err))
		}
	} else if !errors.Is(chainErr, ErrPinMismatch) {
		return nil, chainErr
	}
	cacerts, peer, err := provisionalCACerts(ctx, o, presented, host)
	if err != nil {
		if chainErr != nil {
			return nil, fmt.Errorf("enroll: %s: %w; nor could its /cacerts be read (RFC 7030 §4.1.1): %v", o.Server, chainErr, err)
		}
		return nil, err
	}
	pinned, err = pinnedIn(cacerts, o.Pin, "its TLS chain lacks it and its /cacerts holds")
	if err != nil {
		return nil, fmt.Errorf("enroll: %s: %w", o.Server, err)
	}
	if err := verifyServer(peer, cacerts, pinned, host, o.Now()); err != nil {
		return nil, fmt.Errorf("enroll: %s's certificate does not verify against the pinned CA found in its /cacerts: %w", o.Server, explainTLS(err))
	}
	return &PinnedCA{Anchor: pinned, CACerts: cacerts}, nil
}

// anchorsWith is roots plus the CA certificates among extra that chain to
// roots at now. A server that sends only its own certificate (TLS allows
// it) is then verified in the handshake through the intermediates
// published in /cacerts: Go's TLS takes intermediates from the peer only,
// and a CA certificate that verifies under a trust anchor adds no trust
// of its own.
func anchorsWith(roots *x509.CertPool, extra []*x509.Certificate, now time.Time) *x509.CertPool {
	if len(extra) == 0 {
		return roots
	}
	inter := x509.NewCertPool()
	for _, c := range extra {
		inter.AddCert(c)
	}
	out := roots.Clone()
	for _, c := range extra {
		if !c.IsCA || !c.BasicConstraintsValid {
			continue
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			out.AddCert(c)
		}
	}
	return out
}

// ServerIntermediates authenticates an EST server by explicit trust
// anchors (a CA bundle) before anything is sent to it. When the chain it
// presents verifies to roots, it returns nil. When it does not for want
// of an intermediate (a server that presents only its own certificate),
// it fetches /cacerts over a provisional connection as FetchPinnedCA does
// and returns that answer if the server's chain verifies to roots through
// it: pass it as Options.Intermediates. o.Pin is not used.
func ServerIntermediates(ctx context.Context, o PinOptions, roots *x509.CertPool) ([]*x509.Certificate, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.proxy == nil {
		o.proxy = proxyFromEnvironment
	}
	if roots == nil {
		return nil, errors.New("enroll: no trust anchors for the EST server")
	}
	presented, host, err := presentedChain(ctx, o.Server, o.Timeout, o.proxy)
	if err != nil {
		return nil, err
	}
	verr := verifyServerTo(presented, nil, roots, host, o.Now())
	var uae x509.UnknownAuthorityError
	switch {
	case verr == nil:
		return nil, nil
	case !errors.As(verr, &uae):
		return nil, fmt.Errorf("enroll: %s: %w", o.Server, explainTLS(verr))
	}
	cacerts, peer, err := provisionalCACerts(ctx, o, presented, host)
	if err != nil {
		return nil, fmt.Errorf("enroll: %s: %w; nor could its /cacerts complete the chain (RFC 7030 §4.1.1): %v", o.Server, explainTLS(verr), err)
	}
	if err := verifyServerTo(peer, cacerts, roots, host, o.Now()); err != nil {
		return nil, fmt.Errorf("enroll: GET cacerts (provisional, RFC 7030 §4.1.1): %s's certificate does not verify to the CA bundle, even through the CA certificates it publishes: %w", o.Server, explainTLS(err))
	}
	return cacerts, nil
}

// verifyServer verifies a server's chain (leaf first) and host name
// against anchor alone, with extra as possible intermediates.
func verifyServer(chain, extra []*x509.Certificate, anchor *x509.Certificate, host string, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(anchor)
	return verifyServerTo(chain, extra, roots, host, now)
}

func verifyServerTo(chain, extra []*x509.Certificate, roots *x509.CertPool, host string, now time.Time) error {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, c := range extra {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       host,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

// provisionalCACerts fetches /cacerts over the provisional TLS connection
// of RFC 7030 §4.1.1. The connection is bound to what the first handshake
// saw: its only trust anchors are the certificates the server presented
// then, so it reaches the same server (certificate) and no one else, and
// it carries no credentials. It returns the CA certificates and the chain
// the server presented on this connection (which the caller verifies).
func provisionalCACerts(ctx context.Context, o PinOptions, presented []*x509.Certificate, host string) (cacerts, peer []*x509.Certificate, err error) {
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	seen := x509.NewCertPool()
	for _, c := range presented {
		seen.AddCert(c)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion:       tls.VersionTLS12,
			RootCAs:          seen,
			ServerName:       host,
			Time:             o.Now,
			CurvePreferences: KeyExchanges(false),
		},
		TLSHandshakeTimeout: o.Timeout,
		Proxy:               o.proxy,
		DisableKeepAlives:   true,
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: withUserAgent(tr), Timeout: o.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	u, _ := url.Parse(o.Server) // validated by presentedChain
	u.Path = strings.TrimSuffix(u.Path, "/") + est.Path(o.Label, est.OpCACerts)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("enroll: provisional GET cacerts: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("enroll: %s: provisional GET cacerts: %w", o.Server, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, est.MaxBodyBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("enroll: %s: provisional GET cacerts: read: %w", o.Server, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("enroll: %s: provisional GET cacerts: %s (its TLS chain does not lead to the trust anchor, so /cacerts must)", o.Server, resp.Status)
	}
	if len(body) > est.MaxBodyBytes {
		return nil, nil, fmt.Errorf("enroll: %s: provisional GET cacerts: %w: response over %d bytes", o.Server, ErrResponse, est.MaxBodyBytes)
	}
	if err := checkMediaType(resp.Header.Get("Content-Type"), est.MediaPKCS7); err != nil {
		return nil, nil, fmt.Errorf("enroll: %s: provisional GET cacerts: %w: %v", o.Server, ErrResponse, err)
	}
	der, err := decodeBody(body)
	if err == nil {
		cacerts, err = est.DecodeCertsOnly(der)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("enroll: %s: provisional GET cacerts: %w: %v", o.Server, ErrResponse, err)
	}
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return nil, nil, fmt.Errorf("enroll: %s: provisional GET cacerts: no TLS peer certificates", o.Server)
	}
	return cacerts, resp.TLS.PeerCertificates, nil
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

// fetchPinned is FetchPinnedAt connecting through the proxy that proxy
// picks.
func fetchPinned(ctx context.Context, server string, pin token.Pin, timeout time.Duration, now func() time.Time, proxy ProxyFunc) (*x509.Certificate, error) {
	if proxy == nil {
		proxy = func(*http.Request) (*url.URL, error) { return nil, nil }
	}
	p, err := FetchPinnedCA(ctx, PinOptions{Server: server, Pin: pin, Timeout: timeout, Now: now, proxy: proxy})
	if err != nil {
		return nil, err
	}
	return p.Anchor, nil
}

// pinnedIn finds the pinned CA certificate among certs. The fingerprint
// match does not depend on the clock.
func pinnedIn(certs []*x509.Certificate, pin token.Pin, where string) (*x509.Certificate, error) {
	var pinned *x509.Certificate
	for _, c := range certs {
		if pin.Matches(c) {
			pinned = c
			break
		}
	}
	if pinned == nil {
		fps := make([]string, len(certs))
		for i, c := range certs {
			fps[i] = fmt.Sprintf("%s (%s)", token.PinOf(c), c.Subject.CommonName)
		}
		return nil, fmt.Errorf("%w: %s %s, none is the pinned %s; check that the token belongs to this CA, or pass the CA bundle with --ca-bundle",
			ErrPinMismatch, where, strings.Join(fps, ", "), pin)
	}
	if !pinned.IsCA || !pinned.BasicConstraintsValid {
		return nil, fmt.Errorf("enroll: the pinned certificate %q is not a CA certificate", pinned.Subject.CommonName)
	}
	return pinned, nil
}

// findPinned finds the pinned CA certificate in the chain the server
// presents, or, failing that, in its /cacerts answer fetched over a
// provisional connection checked at the time at returns (RFC 7030
// §4.1.1). extra is that answer (nil when the chain held the pin).
// Verifying the server's certificate under pinned is the caller's job.
func findPinned(ctx context.Context, o PinOptions, at func(presented []*x509.Certificate) time.Time) (pinned *x509.Certificate, presented, extra []*x509.Certificate, host string, err error) {
	if o.Pin.IsZero() {
		return nil, nil, nil, "", errors.New("enroll: no CA pin")
	}
	presented, host, err = presentedChain(ctx, o.Server, o.Timeout, o.proxy)
	if err != nil {
		return nil, nil, nil, "", err
	}
	pinned, err = pinnedIn(presented, o.Pin, "the server presented")
	if err == nil || !errors.Is(err, ErrPinMismatch) {
		return pinned, presented, nil, host, err
	}
	chainErr := err
	o.Now = func() time.Time { return at(presented) }
	extra, _, err = provisionalCACerts(ctx, o, presented, host)
	if err != nil {
		return nil, nil, nil, "", fmt.Errorf("enroll: %s: %w; nor could its /cacerts be read (RFC 7030 §4.1.1): %v", o.Server, chainErr, err)
	}
	if pinned, err = pinnedIn(extra, o.Pin, "its TLS chain lacks it and its /cacerts holds"); err != nil {
		return nil, nil, nil, "", fmt.Errorf("enroll: %s: %w", o.Server, err)
	}
	return pinned, presented, extra, host, nil
}

// CheckIssued verifies what the server issued: the first certificate is for
// key, names deviceID, allows clientAuth and chains to the CA bundle. It
// returns the chain to present in TLS (leaf and intermediates, no root).
// The answer may hold the leaf only (RFC 7030 §4.2.3: the chain is what
// /cacerts is for) or the leaf and its chain.
func CheckIssued(certs []*x509.Certificate, key crypto.PublicKey, deviceID string, caBundle []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	chain, _, err := CheckIssuedWith(certs, key, deviceID, caBundle, nil, now)
	return chain, err
}

// CheckIssuedWith is CheckIssued for a renewal: fresh is the /cacerts
// answer just fetched over the authenticated connection, current the CA
// bundle the device had. The issued certificate may chain through either
// (a rotated intermediate is only in fresh; a root the server does not
// publish only in current). It returns the TLS chain and the CA bundle to
// keep: fresh, ending with the chain's trust anchor when fresh lacks it,
// or current when fresh is empty.
func CheckIssuedWith(certs []*x509.Certificate, key crypto.PublicKey, deviceID string, fresh, current []*x509.Certificate, now time.Time) (chain, bundle []*x509.Certificate, err error) {
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("enroll: %w: no certificate issued", ErrResponse)
	}
	var leaf *x509.Certificate
	for _, c := range certs {
		if k, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && k.Equal(key) {
			leaf = c
			break
		}
	}
	if leaf == nil {
		return nil, nil, fmt.Errorf("enroll: %w: the issued certificate is not for this device's key", ErrResponse)
	}
	if leaf.Subject.CommonName != deviceID {
		return nil, nil, fmt.Errorf("enroll: %w: issued for %q, want %q", ErrResponse, leaf.Subject.CommonName, deviceID)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range append(append([]*x509.Certificate(nil), fresh...), current...) {
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
		return nil, nil, fmt.Errorf("enroll: %w: the issued certificate does not verify against the CA bundle: %v", ErrResponse, err)
	}
	full := chains[0]
	if len(fresh) == 0 {
		return full[:len(full)-1], current, nil
	}
	bundle = append([]*x509.Certificate(nil), fresh...)
	anchor := full[len(full)-1]
	for _, c := range fresh {
		if c.Equal(anchor) {
			return full[:len(full)-1], bundle, nil
		}
	}
	return full[:len(full)-1], append(bundle, anchor), nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil && string(c.RawSubject) == string(c.RawIssuer)
}
