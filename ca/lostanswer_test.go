package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// dropProxy is a TCP proxy in front of edgeca that swallows the answer of
// the next n enrollments: it reads TLS records both ways and, once the
// client has sent an application data record as large as an enrollment
// request, takes the next application data record edgeca writes (the
// HTTP answer, sent after the enrollment was committed) and closes both
// sides instead of forwarding it. edgeca sends no session tickets, so in
// TLS 1.2 and 1.3 alike that record is the answer.
type dropProxy struct {
	ln      net.Listener
	target  string
	drop    atomic.Int64
	dropped atomic.Int64
	wg      sync.WaitGroup
}

func newDropProxy(t *testing.T, target string) *dropProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *dropProxy) url() string { return "https://" + p.ln.Addr().String() }

func (p *dropProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

const (
	recordAppData    = 23 // TLS ContentType application_data
	minRequestRecord = 400
)

// copyRecords forwards TLS records from src to dst; seen, when not nil, is
// called before each record is forwarded and may stop the copy by
// returning false.
func copyRecords(dst, src net.Conn, seen func(typ byte, n int) bool) {
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(src, hdr[:]); err != nil {
			return
		}
		rec := make([]byte, 5+int(binary.BigEndian.Uint16(hdr[3:])))
		copy(rec, hdr[:])
		if _, err := io.ReadFull(src, rec[5:]); err != nil {
			return
		}
		if seen != nil && !seen(hdr[0], len(rec)) {
			return
		}
		if _, err := dst.Write(rec); err != nil {
			return
		}
	}
}

func (p *dropProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	var requested atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyRecords(server, client, func(typ byte, n int) bool {
			// A request with a CSR fills a record of hundreds of bytes; a
			// GET cacerts or csrattrs does not, and its answer passes.
			// The last client record decides: in TLS 1.3 a client
			// certificate is as large, but its Finished (small) follows
			// it before the server says anything.
			if typ == recordAppData {
				requested.Store(n >= minRequestRecord)
			}
			return true
		})
		server.Close()
	}()
	decided := false // the first enrollment answer on a connection only
	copyRecords(client, server, func(typ byte, _ int) bool {
		if decided || typ != recordAppData || !requested.Load() {
			return true
		}
		decided = true
		if p.drop.Add(-1) >= 0 {
			p.dropped.Add(1)
			return false
		}
		p.drop.Add(1)
		return true
	})
	client.Close()
	<-done
}

// try is estClient.do that returns transport errors instead of failing.
func (e *estClient) try(method, path string, body []byte, user, pass string) (response, error) {
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if err != nil {
		return response{}, err
	}
	req.Header.Set("Content-Type", est.MediaPKCS10)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}, nil
}

// via returns a client of s that goes through proxy p, with TLS 1.2 or
// 1.3 at most.
func (s *testServer) via(p *dropProxy, cert *tls.Certificate, maxVersion uint16) *estClient {
	c := s.client(cert)
	c.url = p.url()
	c.http.Transport.(*http.Transport).TLSClientConfig.MaxVersion = maxVersion
	return c
}

// TestLostAnswers drops edgeca's answer after it was written, three times
// in a row, for an enrollment, a renewal and a rekey; each time the client
// retries and ends with a certificate the CA has on record, the token
// shows one use, the device's previous certificate keeps working until the
// device has used the new one, and the audit log says what happened.
func TestLostAnswers(t *testing.T) {
	for _, tc := range []struct {
		name string
		max  uint16
	}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}} {
		t.Run(tc.name, func(t *testing.T) { testLostAnswers(t, tc.max) })
	}
}

func testLostAnswers(t *testing.T, maxVersion uint16) {
	s := newTestServer(t, Options{CertTTL: time.Hour})
	ctx := context.Background()
	p := newDropProxy(t, strings.TrimPrefix(s.url, "https://"))
	const lost = 3
	id := "lossy-1"
	key := newKey(t)
	tok := s.token(t, TokenOptions{Device: id})

	// attempt sends until an answer arrives, with lost answers dropped.
	attempt := func(t *testing.T, send func() (response, error)) (response, int) {
		t.Helper()
		p.drop.Store(lost)
		p.dropped.Store(0)
		failures := 0
		for {
			r, err := send()
			if err == nil {
				if p.dropped.Load() != lost {
					t.Fatalf("%d answers dropped, want %d", p.dropped.Load(), lost)
				}
				return r, failures
			}
			if failures++; failures > lost {
				t.Fatalf("attempt %d: %v", failures, err)
			}
		}
	}
	current := func(t *testing.T) store.Device {
		t.Helper()
		d, err := s.ca.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	wantAudit := func(t *testing.T, want ...string) {
		t.Helper()
		recs, err := s.ca.Audit(ctx, len(want))
		if err != nil {
			t.Fatal(err)
		}
		for i, w := range want { // newest first
			if i >= len(recs) || recs[i].Result != store.ResultOK || !strings.Contains(recs[i].Reason, w) {
				t.Fatalf("audit record %d: %+v, want ok with %q", i, recs, w)
			}
		}
	}

	var leaf *x509.Certificate
	t.Run("enroll", func(t *testing.T) {
		r, failed := attempt(t, func() (response, error) {
			return s.via(p, nil, maxVersion).try(http.MethodPost, est.Path("", est.OpSimpleEnroll), csrFor(t, key, id), tok.ID, tok.Secret)
		})
		leaf = r.certs(t)[0]
		d := current(t)
		if failed != lost || d.Serial != SerialHex(leaf.SerialNumber) || d.Enrollments != 1 {
			t.Fatalf("after %d lost answers: got %s, device %+v", failed, SerialHex(leaf.SerialNumber), d)
		}
		toks, err := s.ca.Tokens(ctx)
		if err != nil || len(toks) != 1 || toks[0].Uses != 1 {
			t.Fatalf("token after retries: %+v %v", toks, err)
		}
		wantAudit(t, "answered with certificate", "answered with certificate", "answered with certificate", "enrolled with token")
		// A new key with the used token is still refused.
		r = s.client(nil).enroll(t, csrFor(t, newKey(t), id), tok)
		if r.status != http.StatusUnauthorized || errCode(r.body) != est.CodeTokenInvalid {
			t.Fatalf("used token, new key: %d %s", r.status, r.body)
		}
	})
	first := tlsCert([]*x509.Certificate{leaf}, key)

	var renewed *x509.Certificate
	t.Run("reenroll", func(t *testing.T) {
		r, _ := attempt(t, func() (response, error) {
			return s.via(p, first, maxVersion).try(http.MethodPost, est.Path("", est.OpSimpleReenroll), csrFor(t, key, id, DeviceURIPrefix+id), "", "")
		})
		renewed = r.certs(t)[0]
		d := current(t)
		if d.Serial != SerialHex(renewed.SerialNumber) || d.Enrollments != 2 || d.Confirmed != SerialHex(leaf.SerialNumber) {
			t.Fatalf("renewed %s, device %+v", SerialHex(renewed.SerialNumber), d)
		}
		wantAudit(t, "answered with", "answered with", "answered with", "renewed with certificate "+SerialHex(leaf.SerialNumber))
	})
	second := tlsCert([]*x509.Certificate{renewed}, key)

	t.Run("rekey", func(t *testing.T) {
		// Each lost answer aborts the device's key rotation: every retry
		// comes with a fresh key, all authenticated by the second
		// certificate, which the first retry confirmed.
		var last *ecdsa.PrivateKey
		r, _ := attempt(t, func() (response, error) {
			last = newKey(t)
			return s.via(p, second, maxVersion).try(http.MethodPost, est.Path("", est.OpSimpleReenroll), csrFor(t, last, id, DeviceURIPrefix+id), "", "")
		})
		rekeyed := r.certs(t)[0]
		if !rekeyed.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(last.Public()) {
			t.Fatal("rekeyed certificate is not for the last key")
		}
		d := current(t)
		if d.Serial != SerialHex(rekeyed.SerialNumber) || d.Confirmed != SerialHex(renewed.SerialNumber) || d.Enrollments != 2+1+lost {
			t.Fatalf("device %+v", d)
		}
		// The first certificate is superseded now: the device showed it
		// holds the second.
		if resp := s.client(first).reenroll(t, csrFor(t, key, id, DeviceURIPrefix+id)); resp.status != http.StatusUnauthorized {
			t.Fatalf("renewal with the first certificate after the second was used: %d %s", resp.status, resp.body)
		}
		// The final identity works.
		third := tlsCert([]*x509.Certificate{rekeyed}, last)
		if resp := s.client(third).reenroll(t, csrFor(t, last, id, DeviceURIPrefix+id)); resp.status != http.StatusOK {
			t.Fatalf("renewal with the rekeyed certificate: %d %s", resp.status, resp.body)
		}
	})
}

// TestRenewalGrace renews a certificate that expired within the grace
// period and refuses one that expired before it.
func TestRenewalGrace(t *testing.T) {
	s := newTestServer(t, Options{CertTTL: time.Hour, RenewGrace: 24 * time.Hour})
	for _, tc := range []struct {
		name   string
		clock  time.Duration
		status int
	}{
		{"expired 2h ago", 3 * time.Hour, http.StatusOK},
		{"expired 25h ago", 26 * time.Hour, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "grace-" + strings.Fields(tc.name)[1]
			cert, key := s.enrolled(t, id)
			s.clock.Set(tc.clock)
			defer s.clock.Set(0)
			resp := s.client(cert).reenroll(t, csrFor(t, key, id, DeviceURIPrefix+id))
			if resp.status != tc.status {
				t.Fatalf("%d %s, want %d", resp.status, resp.body, tc.status)
			}
			if tc.status == http.StatusOK {
				mustContain(t, "audit", s.lastAudit(t).Reason, "after it expired (grace 24h0m0s)")
			}
		})
	}
	if _, err := Open(context.Background(), s.dir, Options{RenewGrace: MaxRenewGrace + time.Hour}); err == nil {
		t.Fatal("Open accepted a grace over the maximum")
	}
}

// TestReenrollDecision is the renewal rule as a table.
func TestReenrollDecision(t *testing.T) {
	now := time.Now()
	keyA, keyB := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("b"))
	s := newTestServer(t, Options{})
	certs := s.client(nil).enroll(t, csrFor(t, newKey(t), "d"), s.token(t, TokenOptions{})).certs(t)
	newest := SerialHex(certs[0].SerialNumber)
	dev := func(confirmed string) *store.Device {
		return &store.Device{ID: "d", Status: store.StatusActive, Serial: newest, Confirmed: confirmed, Cert: certs[0].Raw, KeyHash: keyA}
	}
	revoked := dev("C")
	revoked.Status = store.StatusRevoked
	for _, tc := range []struct {
		name     string
		dev      *store.Device
		peer     string
		key      [32]byte
		want     string // "issue", "replay" or an error code
		reasonIs string
	}{
		{"unknown device", nil, newest, keyA, string(est.CodeDeviceNotAllowed), ""},
		{"revoked", revoked, newest, keyA, string(est.CodeDeviceRevoked), ""},
		{"newest renews", dev("C"), newest, keyA, "issue", ""},
		{"newest rekeys", dev("C"), newest, keyB, "issue", ""},
		{"confirmed, same key as the newest: retry", dev("C"), "C", keyA, "replay", ""},
		{"confirmed, another key: new certificate", dev("C"), "C", keyB, "issue", ""},
		{"older than confirmed", dev("C"), "B", keyA, string(est.CodeClientCertRequired), "neither"},
		{"no confirmed yet, other serial", dev(""), "", keyA, string(est.CodeClientCertRequired), "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := reenrollDecision(tc.dev, "d", tc.peer, tc.key, now)
			var rp *replay
			var e *Error
			got := "issue"
			switch {
			case errors.As(err, &rp):
				got = "replay"
			case errors.As(err, &e):
				got = string(e.Code)
				mustContain(t, "reason", e.Error(), tc.reasonIs)
			case err != nil:
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("%s, want %s (%v)", got, tc.want, err)
			}
		})
	}
}

// TestEnrollReplay is the enrollment retry rule as a table.
func TestEnrollReplay(t *testing.T) {
	s := newTestServer(t, Options{})
	now := time.Now()
	certs := s.client(nil).enroll(t, csrFor(t, newKey(t), "d"), s.token(t, TokenOptions{})).certs(t)
	secret := sha256.Sum256([]byte("secret"))
	keyA, keyB := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("b"))
	tok := func(mod func(*store.Token)) *store.Token {
		tk := &store.Token{ID: "t1", SecretHash: secret, MaxUses: 1, Uses: 1, ExpiresAt: now.Add(time.Hour)}
		if mod != nil {
			mod(tk)
		}
		return tk
	}
	dev := func(mod func(*store.Device)) *store.Device {
		d := &store.Device{ID: "d", Status: store.StatusActive, Serial: SerialHex(certs[0].SerialNumber), Cert: certs[0].Raw, KeyHash: keyA, CertToken: "t1"}
		if mod != nil {
			mod(d)
		}
		return d
	}
	for _, tc := range []struct {
		name   string
		tok    *store.Token
		dev    *store.Device
		secret [32]byte
		key    [32]byte
		at     time.Time
		replay bool
	}{
		{"same token, same key", tok(nil), dev(nil), secret, keyA, now, true},
		{"new key", tok(nil), dev(nil), secret, keyB, now, false},
		{"wrong secret", tok(nil), dev(nil), keyB, keyA, now, false},
		{"token expired", tok(nil), dev(nil), secret, keyA, now.Add(2 * time.Hour), false},
		{"token revoked", tok(func(t *store.Token) { t.RevokedAt = now }), dev(nil), secret, keyA, now, false},
		{"issued by another token", tok(nil), dev(func(d *store.Device) { d.CertToken = "t2" }), secret, keyA, now, false},
		{"renewed since", tok(nil), dev(func(d *store.Device) { d.CertToken = "" }), secret, keyA, now, false},
		{"device revoked", tok(nil), dev(func(d *store.Device) { d.Status = store.StatusRevoked }), secret, keyA, now, false},
		{"new device", tok(nil), nil, secret, keyA, now, false},
		{"unknown token", nil, dev(nil), secret, keyA, now, false},
		{"stored certificate expired", tok(func(t *store.Token) { t.ExpiresAt = now.Add(48 * time.Hour) }), dev(nil), secret, keyA, now.Add(25 * time.Hour), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := enrollReplay(tc.tok, tc.dev, tc.secret, tc.key, tc.at) != nil; got != tc.replay {
				t.Fatalf("replay %v, want %v", got, tc.replay)
			}
		})
	}
}
