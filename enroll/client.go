// Package enroll is the agent's EST client (RFC 7030): it fetches CA
// certificates, enrolls with HTTP Basic credentials from an enrollment token,
// re-enrolls over mutual TLS with the current certificate, and reads CSR
// attributes. It follows the RFC, not one server, so it works with any
// conforming EST server.
package enroll

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// Options configure a Client.
type Options struct {
	// Server is the EST server's base URL: https://host[:port][/prefix].
	Server string
	// Label selects a CA on servers that host several
	// (/.well-known/est/<label>/...).
	Label string
	// Roots authenticates the server. Required: see FetchPinnedRoots for
	// bootstrapping it from a pin.
	Roots *x509.CertPool
	// Intermediates are CA certificates (the /cacerts answer, the CA
	// bundle) through which a server that presents only its own
	// certificate chains to Roots; those that do are trusted as well.
	Intermediates []*x509.Certificate
	// Certificate returns the client certificate for simplereenroll; nil
	// for enrollment with a token.
	Certificate func() *tls.Certificate
	// Timeout bounds each HTTP exchange; 0 means 30s.
	Timeout time.Duration
	// Time is the clock for certificate checks (tls.Config.Time); nil means
	// time.Now. The agent passes its skew-corrected clock.
	Time func() time.Time
	// MaxRetryWait caps one wait for a 202 Retry-After; 0 means 10 minutes.
	MaxRetryWait time.Duration
	// OnResponse, if set, sees each response's send and receive times on
	// the Time clock, its Date header and the server chain the handshake
	// verified, so the agent can estimate how far that clock is from the
	// server's and check the server's time against that chain.
	OnResponse func(Response)
	// PostQuantumTLS offers the hybrid post-quantum key exchanges to the
	// server; see KeyExchanges.
	PostQuantumTLS bool
	// Username and Password answer a server that wants HTTP Basic on
	// simplereenroll as well as the client certificate (RFC 7030 §3.2.3
	// allows both). They are sent only after that server's 401 with a
	// Basic challenge, over a connection authenticated by Roots.
	Username, Password string
}

// Response is what Options.OnResponse sees of one EST answer.
type Response struct {
	// Sent and Received are read from the Time clock around the exchange.
	Sent, Received time.Time
	// Date is the answer's Date header as sent.
	Date string
	// Chain is the server's chain as verified in the handshake (leaf
	// first, ending in a trust anchor); nil when there was none.
	Chain []*x509.Certificate
	// KeyExchange is the TLS key exchange the connection used (0 when
	// unknown), so a fleet that requires post-quantum key exchange can
	// see it is in effect.
	KeyExchange tls.CurveID
}

// Client talks to one EST server.
type Client struct {
	base       *url.URL
	label      string
	hc         *http.Client
	now        func() time.Time
	maxWait    time.Duration
	onResponse func(Response)
	user, pass string
}

// maxDeferrals bounds how many 202 answers one request follows.
const maxDeferrals = 20

// New validates o and returns a Client.
func New(o Options) (*Client, error) {
	if err := token.ValidateURL(o.Server); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	base, _ := url.Parse(o.Server) // validated above
	base.Path = strings.TrimSuffix(base.Path, "/")
	if strings.Contains(o.Username, ":") {
		return nil, errors.New("enroll: username must not contain ':' (HTTP Basic)")
	}
	if o.Label != "" && strings.ContainsAny(o.Label, "/?#") {
		return nil, fmt.Errorf("enroll: label %q must not contain '/', '?' or '#'", o.Label)
	}
	if o.Roots == nil {
		return nil, errors.New("enroll: no trust anchors for the EST server: give a CA pin or a CA bundle")
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Time == nil {
		o.Time = time.Now
	}
	switch {
	case o.MaxRetryWait == 0:
		o.MaxRetryWait = 10 * time.Minute
	case o.MaxRetryWait < 0:
		return nil, fmt.Errorf("enroll: MaxRetryWait %v: want a positive duration, or 0 for 10 minutes", o.MaxRetryWait)
	}
	tc := &tls.Config{
		MinVersion:       tls.VersionTLS12,
		RootCAs:          anchorsWith(o.Roots, o.Intermediates, o.Time()),
		Time:             o.Time,
		CurvePreferences: KeyExchanges(o.PostQuantumTLS),
	}
	if o.Certificate != nil {
		src := o.Certificate
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := src(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil // no identity yet: send none
		}
	}
	tr := &http.Transport{
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: o.Timeout,
		Proxy:               proxyFromEnvironment,
	}
	return &Client{
		base:       base,
		label:      o.Label,
		hc:         &http.Client{Transport: withUserAgent(tr), Timeout: o.Timeout, CheckRedirect: sameOrigin},
		now:        o.Time,
		maxWait:    o.MaxRetryWait,
		onResponse: o.OnResponse,
		user:       o.Username,
		pass:       o.Password,
	}, nil
}

// KeyExchanges is what the EST client offers for the TLS key exchange:
// classical ECDHE only unless postQuantum, then Go's default set, which
// puts the hybrid post-quantum X25519MLKEM768 first.
//
// Off by default for the reason edgeca does not use them by default (see
// ca.keyExchanges): EST traffic holds no secret that outlives the token it
// carries. Offering a hybrid is not free even with a server that declines
// it: Go (1.26) sends a key share for its first group whatever the order
// of CurvePreferences, so offering X25519MLKEM768 at all means generating
// an ML-KEM-768 key for every connection.
func KeyExchanges(postQuantum bool) []tls.CurveID {
	if postQuantum {
		return nil
	}
	return []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}
}

// maxRedirects bounds how many redirects one request follows.
const maxRedirects = 5

// sameOrigin follows a redirect only within the server we were given:
// RFC 7030 §3.2.1 lets a client follow a redirect to another host only with
// the user's consent, and the credentials must not go elsewhere.
func sameOrigin(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", len(via))
	}
	first := via[0].URL
	if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
		return fmt.Errorf("refusing redirect from %s to another server %s://%s; configure that server's URL directly if it is meant", first.Host, req.URL.Scheme, req.URL.Host)
	}
	return nil
}

// CloseIdleConnections releases pooled connections (after a renewal the next
// request must present the new certificate).
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

func (c *Client) url(op string) string {
	u := *c.base
	u.Path = c.base.Path + est.Path(c.label, op)
	return u.String()
}

// ServerError is a non-success answer from the EST server.
type ServerError struct {
	Op      string // e.g. "POST simpleenroll"
	Status  int
	Code    est.Code // "" when the server does not send edgeca's codes
	Message string
	// Challenge is a 401's WWW-Authenticate header.
	Challenge string
	// RetryAfter is a 503's or 429's Retry-After (see RetryAfter).
	RetryAfter time.Duration
}

func (e *ServerError) Error() string {
	what := http.StatusText(e.Status)
	switch {
	case e.Code == est.CodeTokenInvalid:
		what = "token rejected"
	case e.Status == http.StatusUnauthorized:
		what = "credentials rejected"
	case e.Code == est.CodeDeviceRevoked:
		what = "device revoked"
	}
	msg := e.Message
	if e.Code != "" {
		msg = string(e.Code) + ": " + msg
	}
	if msg == "" {
		return fmt.Sprintf("enroll: %s: %d %s", e.Op, e.Status, what)
	}
	return fmt.Sprintf("enroll: %s: %d %s: %s", e.Op, e.Status, what, msg)
}

// IsTokenRejected reports whether err is the server refusing the enrollment
// credentials (unknown, used, expired or revoked token, or bad password).
func IsTokenRejected(err error) bool {
	var se *ServerError
	return errors.As(err, &se) && (se.Code == est.CodeTokenInvalid || se.Status == http.StatusUnauthorized && se.Code != est.CodeClientCertRequired)
}

// IsDeviceRevoked reports whether err says the CA revoked this device.
func IsDeviceRevoked(err error) bool {
	var se *ServerError
	return errors.As(err, &se) && se.Code == est.CodeDeviceRevoked
}

// Retryable reports whether a failed request may succeed later unchanged:
// network errors, 5xx and 429. 4xx answers need someone to change something.
func Retryable(err error) bool {
	var se *ServerError
	if errors.As(err, &se) {
		return se.Status >= 500 || se.Status == http.StatusTooManyRequests
	}
	return err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrResponse)
}

// Unreachable reports whether err is a failure to reach or talk to the
// server (network, TLS, timeout), not an answer from it.
func Unreachable(err error) bool {
	var se *ServerError
	return err != nil && !errors.As(err, &se) && !errors.Is(err, ErrResponse)
}

// ErrResponse is wrapped when a 2xx answer cannot be understood.
var ErrResponse = errors.New("unusable response")

// CACerts fetches the CA certificates (GET cacerts).
func (c *Client) CACerts(ctx context.Context) ([]*x509.Certificate, error) {
	body, _, err := c.do(ctx, http.MethodGet, est.OpCACerts, nil, nil)
	if err != nil {
		return nil, err
	}
	return c.decodeCerts("GET cacerts", body)
}

// SimpleEnroll sends csrDER with HTTP Basic credentials and returns the
// issued certificates, leaf first when the server orders them so.
func (c *Client) SimpleEnroll(ctx context.Context, csrDER []byte, username, password string) ([]*x509.Certificate, error) {
	if strings.Contains(username, ":") {
		return nil, errors.New("enroll: username must not contain ':' (HTTP Basic)")
	}
	body, _, err := c.do(ctx, http.MethodPost, est.OpSimpleEnroll, csrDER, func(r *http.Request) { r.SetBasicAuth(username, password) })
	if err != nil {
		return nil, err
	}
	return c.decodeCerts("POST simpleenroll", body)
}

// SimpleReenroll sends csrDER authenticated by the client certificate. A
// server that answers 401 with a Basic challenge gets the request again
// with Options.Username and Password, when they are set.
func (c *Client) SimpleReenroll(ctx context.Context, csrDER []byte) ([]*x509.Certificate, error) {
	body, _, err := c.do(ctx, http.MethodPost, est.OpSimpleReenroll, csrDER, nil)
	if wantsBasic(err) {
		if c.user == "" {
			return nil, fmt.Errorf("%w (the server wants HTTP Basic credentials with the client certificate: configure a username and password for renewal)", err)
		}
		body, _, err = c.do(ctx, http.MethodPost, est.OpSimpleReenroll, csrDER, func(r *http.Request) { r.SetBasicAuth(c.user, c.pass) })
	}
	if err != nil {
		return nil, err
	}
	return c.decodeCerts("POST simplereenroll", body)
}

// wantsBasic reports whether err is a 401 that challenges for HTTP Basic
// (RFC 9110 §11.6.1, RFC 7617), not edgeca refusing the certificate.
func wantsBasic(err error) bool {
	var se *ServerError
	if !errors.As(err, &se) || se.Status != http.StatusUnauthorized || se.Code == est.CodeClientCertRequired {
		return false
	}
	for _, ch := range strings.Split(se.Challenge, ",") {
		if scheme, _, _ := strings.Cut(strings.TrimSpace(ch), " "); strings.EqualFold(scheme, "Basic") {
			return true
		}
	}
	return false
}

// CSRAttrs fetches the server's CSR attributes; none (204 or 404) is an
// empty result, not an error.
func (c *Client) CSRAttrs(ctx context.Context) (est.CSRAttrs, error) {
	body, status, err := c.do(ctx, http.MethodGet, est.OpCSRAttrs, nil, nil)
	var se *ServerError
	if errors.As(err, &se) && se.Status == http.StatusNotFound {
		return est.CSRAttrs{}, nil
	}
	if err != nil {
		return est.CSRAttrs{}, err
	}
	if status == http.StatusNoContent || len(bytes.TrimSpace(body)) == 0 {
		return est.CSRAttrs{}, nil
	}
	der, err := est.DecodeBase64(body)
	if err != nil {
		return est.CSRAttrs{}, fmt.Errorf("enroll: GET csrattrs: %w: %v", ErrResponse, err)
	}
	a, err := est.DecodeCSRAttrs(der)
	if err != nil {
		return est.CSRAttrs{}, fmt.Errorf("enroll: GET csrattrs: %w: %v", ErrResponse, err)
	}
	return a, nil
}

func (c *Client) decodeCerts(op string, body []byte) ([]*x509.Certificate, error) {
	der, err := decodeBody(body)
	if err != nil {
		return nil, fmt.Errorf("enroll: %s: %w: %v", op, ErrResponse, err)
	}
	certs, err := est.DecodeCertsOnly(der)
	if err != nil {
		return nil, fmt.Errorf("enroll: %s: %w: %v", op, ErrResponse, err)
	}
	return certs, nil
}

// decodeBody accepts the RFC's base64 and, from servers that skip the
// transfer encoding, raw DER.
func decodeBody(body []byte) ([]byte, error) {
	if len(body) > 0 && body[0] == 0x30 {
		return body, nil // DER SEQUENCE: '0' is not a base64 start for CMS ("MI...")
	}
	return est.DecodeBase64(body)
}

// do performs one EST exchange, following 202 + Retry-After deferrals.
func (c *Client) do(ctx context.Context, method, op string, reqDER []byte, auth func(*http.Request)) ([]byte, int, error) {
	name := method + " " + op
	for deferrals := 0; ; deferrals++ {
		var body io.Reader
		if reqDER != nil {
			body = bytes.NewReader(est.EncodeBase64(reqDER))
		}
		req, err := http.NewRequestWithContext(ctx, method, c.url(op), body)
		if err != nil {
			return nil, 0, fmt.Errorf("enroll: %s: %w", name, err)
		}
		if reqDER != nil {
			req.Header.Set("Content-Type", est.MediaPKCS10)
			req.Header.Set("Content-Transfer-Encoding", est.TransferEncoding)
		}
		if auth != nil {
			auth(req)
		}
		sent := c.now()
		resp, err := c.hc.Do(req)
		if err != nil {
			return nil, 0, fmt.Errorf("enroll: %s: %w", name, explainTLS(err))
		}
		respBody, rerr := io.ReadAll(io.LimitReader(resp.Body, est.MaxBodyBytes+1))
		resp.Body.Close()
		if c.onResponse != nil {
			r := Response{Sent: sent, Received: c.now(), Date: resp.Header.Get("Date")}
			if resp.TLS != nil {
				r.KeyExchange = resp.TLS.CurveID
				if len(resp.TLS.VerifiedChains) > 0 {
					r.Chain = resp.TLS.VerifiedChains[0]
				}
			}
			c.onResponse(r)
		}
		if rerr != nil {
			return nil, 0, fmt.Errorf("enroll: %s: read response: %w", name, rerr)
		}
		if len(respBody) > est.MaxBodyBytes {
			return nil, 0, fmt.Errorf("enroll: %s: %w: response over %d bytes", name, ErrResponse, est.MaxBodyBytes)
		}
		switch {
		case resp.StatusCode == http.StatusAccepted:
			if deferrals >= maxDeferrals {
				return nil, 0, fmt.Errorf("enroll: %s: server deferred the request %d times; giving up", name, deferrals)
			}
			wait, err := ParseRetryAfter(resp.Header.Get("Retry-After"), c.now())
			if err != nil {
				return nil, 0, fmt.Errorf("enroll: %s: 202 with %w", name, err)
			}
			wait = DeferralWait(wait, c.maxWait, rand.Float64())
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, 0, fmt.Errorf("enroll: %s: waiting %v for deferred issuance: %w", name, wait.Round(time.Millisecond), ctx.Err())
			case <-t.C:
			}
			continue
		case resp.StatusCode == http.StatusNoContent:
			return nil, resp.StatusCode, nil
		case resp.StatusCode >= 200 && resp.StatusCode < 300:
			if op != est.OpCSRAttrs {
				if err := checkMediaType(resp.Header.Get("Content-Type"), est.MediaPKCS7); err != nil {
					return nil, 0, fmt.Errorf("enroll: %s: %w: %v", name, ErrResponse, err)
				}
			}
			return respBody, resp.StatusCode, nil
		default:
			code, msg := est.ParseErrorBody(string(respBody))
			if len(msg) > 512 {
				msg = msg[:512] + "..."
			}
			se := &ServerError{Op: name, Status: resp.StatusCode, Code: code, Message: msg}
			if resp.StatusCode == http.StatusUnauthorized {
				se.Challenge = resp.Header.Get("WWW-Authenticate")
				if len(se.Challenge) > 256 {
					se.Challenge = se.Challenge[:256]
				}
			}
			if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests {
				if ra, err := ParseRetryAfter(resp.Header.Get("Retry-After"), c.now()); err == nil {
					se.RetryAfter = min(ra, maxServerRetryAfter)
				}
			}
			return nil, resp.StatusCode, se
		}
	}
}

// maxServerRetryAfter caps the Retry-After of a 503 or 429 a client
// honours: a wrong or hostile server cannot park a device for days.
const maxServerRetryAfter = time.Hour

// RetryAfter is the wait a 503 or 429 answer asked for (its Retry-After,
// at most an hour), 0 for any other error: a CA shedding load spreads its
// fleet's retries with it, so a retry loop waits at least that long.
func RetryAfter(err error) time.Duration {
	var se *ServerError
	if errors.As(err, &se) {
		return se.RetryAfter
	}
	return 0
}

func checkMediaType(got, want string) error {
	mt, _, err := mime.ParseMediaType(got)
	if err != nil || !strings.EqualFold(mt, want) {
		return fmt.Errorf("content type %q, want %s", got, want)
	}
	return nil
}

// explainTLS turns the most common handshake failures into advice.
func explainTLS(err error) error {
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	switch {
	case errors.As(err, &uae):
		return fmt.Errorf("the server's certificate is not signed by a trusted CA (check the CA pin or bundle): %w", err)
	case errors.As(err, &hne):
		return fmt.Errorf("the server's certificate is not valid for this host name (use the host name the CA was set up with): %w", err)
	}
	return err
}
