package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// TimeOptions configure ServerTime.
type TimeOptions struct {
	// Server and Label locate the EST server (see Options).
	Server string
	Label  string
	// Roots authenticate the server; or Pin, a CA certificate in the
	// chain it presents (first contact).
	Roots *x509.CertPool
	Pin   token.Pin
	// NotBefore is the earliest time the answer may be: the latest of the
	// agent's build time, the current certificate's NotBefore and when the
	// device obtained it. It is the only bound below the server's own
	// certificate validity (see ServerTime), so keep it as late as known.
	NotBefore time.Time
	// Intermediates are CA certificates (the CA bundle) through which a
	// server that presents only its own certificate chains to Roots.
	Intermediates []*x509.Certificate
	Timeout       time.Duration
	// Now is the local clock the sample's Sent and Received are read
	// from; time.Now when nil.
	Now func() time.Time
}

// TimeSample is one reading of the server's clock: the request was sent at
// Sent and answered at Received (local clock) with the Date header Date.
type TimeSample struct {
	Sent, Received, Date time.Time
}

// ServerTime reads the time from an EST server for a device whose own clock
// cannot be believed (it boots in 1970 without an RTC), so it cannot check
// certificate validity periods yet. Nothing is skipped: the server's chain
// is verified against the trust anchors with signatures, host name and key
// usage, once in the handshake at a time inside the chain's validity (the
// latest NotBefore of what the server presents) and then again at the time
// the server reports, which must also be no earlier than o.NotBefore. A
// server that reports a time at which its own certificate is invalid, or
// one before this agent was built, is refused. Only GET cacerts is sent,
// without credentials.
//
// What remains to trust is that a server holding a key the CA certified
// reports its time honestly: the best a device without a trusted clock
// can do, and only until the corrected clock takes over. In particular a
// server certificate that was once valid is trusted for the time it
// reports: whoever holds its key, even after it expired or was replaced,
// can set the device's clock to any time inside its validity that is not
// before o.NotBefore. That is why o.NotBefore should be as late as the
// device knows.
func ServerTime(ctx context.Context, o TimeOptions) (TimeSample, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if err := token.ValidateURL(o.Server); err != nil {
		return TimeSample{}, fmt.Errorf("enroll: %w", err)
	}
	var presented, extra []*x509.Certificate
	var host string
	roots := o.Roots
	if !o.Pin.IsZero() {
		pinned, chain, cacerts, h, err := findPinned(ctx, PinOptions{Server: o.Server, Label: o.Label, Pin: o.Pin, Timeout: o.Timeout, proxy: proxyFromEnvironment}, latestNotBefore)
		if err != nil {
			return TimeSample{}, err
		}
		roots, presented, extra, host = x509.NewCertPool(), chain, cacerts, h
		roots.AddCert(pinned)
	} else {
		if roots == nil {
			return TimeSample{}, errors.New("enroll: server time: no trust anchors for the EST server")
		}
		chain, h, err := presentedChain(ctx, o.Server, o.Timeout, proxyFromEnvironment)
		if err != nil {
			return TimeSample{}, err
		}
		presented, host, extra = chain, h, o.Intermediates
		// A server that presents only its own certificate, with no CA
		// bundle to complete its chain: through /cacerts (§4.1.1).
		var uae x509.UnknownAuthorityError
		probe := latestNotBefore(presented)
		if err := verifyServerTo(presented, extra, roots, host, probe); errors.As(err, &uae) {
			po := PinOptions{Server: o.Server, Label: o.Label, Timeout: o.Timeout, Now: func() time.Time { return probe }, proxy: proxyFromEnvironment}
			if cacerts, _, err := provisionalCACerts(ctx, po, presented, host); err == nil {
				extra = append(extra, cacerts...)
			}
		}
	}
	// A moment at which every certificate the server presents is valid,
	// if there is one: the latest NotBefore.
	probe := latestNotBefore(presented)
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    anchorsWith(roots, extra, probe),
		ServerName: host,
		Time:       func() time.Time { return probe },
	}
	tr := &http.Transport{TLSClientConfig: tc, TLSHandshakeTimeout: o.Timeout, Proxy: proxyFromEnvironment}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: withUserAgent(tr), Timeout: o.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	u, _ := url.Parse(o.Server) // validated above
	u.Path = strings.TrimSuffix(u.Path, "/") + est.Path(o.Label, est.OpCACerts)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return TimeSample{}, fmt.Errorf("enroll: server time: %w", err)
	}
	sent := o.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return TimeSample{}, fmt.Errorf("enroll: server time from %s: %w", o.Server, explainTLS(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, est.MaxBodyBytes))
	resp.Body.Close()
	received := o.Now()
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return TimeSample{}, fmt.Errorf("enroll: server time: %s sent no usable Date header (%q); the device clock cannot be corrected from it", o.Server, resp.Header.Get("Date"))
	}
	if date.Before(o.NotBefore) {
		return TimeSample{}, fmt.Errorf("enroll: server time: %s reports %s, before %s; refusing an implausible time",
			o.Server, date.UTC().Format(time.RFC3339), o.NotBefore.UTC().Format(time.RFC3339))
	}
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return TimeSample{}, fmt.Errorf("enroll: server time: no TLS peer certificates from %s", o.Server)
	}
	peer := resp.TLS.PeerCertificates
	inter := x509.NewCertPool()
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	for _, c := range extra {
		inter.AddCert(c)
	}
	if _, err := peer[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host, CurrentTime: date,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return TimeSample{}, fmt.Errorf("enroll: server time: %s's certificate is not valid at the time it reports (%s): %w",
			o.Server, date.UTC().Format(time.RFC3339), err)
	}
	return TimeSample{Sent: sent, Received: received, Date: date}, nil
}

// latestNotBefore is the latest NotBefore of certs: the one moment at which
// all of them can be valid, if there is one.
func latestNotBefore(certs []*x509.Certificate) time.Time {
	var t time.Time
	for _, c := range certs {
		if c.NotBefore.After(t) {
			t = c.NotBefore
		}
	}
	return t
}
