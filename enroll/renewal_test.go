package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestReenrollBasicAfter401: RFC 7030 §3.2.3 lets a server want HTTP
// Basic on reenroll as well as the client certificate. The client sends
// its configured credentials only after that server's 401 with a Basic
// challenge, and never to a server that did not ask.
func TestReenrollBasicAfter401(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	dev := mustKey(t)
	cur := issue(t, p.interCA, testpki.Leaf{CN: "dev-1", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, &dev.PublicKey)
	tlsCert := &tls.Certificate{Certificate: [][]byte{cur.Raw, p.inter.Raw}, PrivateKey: dev}
	cases := []struct {
		name       string
		challenge  string // the 401's WWW-Authenticate; "" means the server wants no Basic
		user, pass string
		wantOK     bool
		wantLog    []string
		wantErr    string
	}{
		{name: "server wants Basic, configured", challenge: `Basic realm="estserver@127.0.0.1"`, user: "dev", pass: "pw", wantOK: true,
			wantLog: []string{"POST simplereenroll cert", "POST simplereenroll cert+basic"}},
		{name: "two schemes offered", challenge: `Bearer realm="x", Basic realm="est", charset="UTF-8"`, user: "dev", pass: "pw", wantOK: true,
			wantLog: []string{"POST simplereenroll cert", "POST simplereenroll cert+basic"}},
		{name: "server wants Basic, none configured", challenge: `Basic realm="est"`, wantErr: "wants HTTP Basic",
			wantLog: []string{"POST simplereenroll cert"}},
		{name: "wrong credentials", challenge: `Basic realm="est"`, user: "dev", pass: "nope", wantErr: "401",
			wantLog: []string{"POST simplereenroll cert", "POST simplereenroll cert+basic"}},
		{name: "401 without a Basic challenge", challenge: `Bearer realm="x"`, user: "dev", pass: "pw", wantErr: "401",
			wantLog: []string{"POST simplereenroll cert"}},
		{name: "server wants the certificate only", user: "dev", pass: "pw", wantOK: true,
			wantLog: []string{"POST simplereenroll cert"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen []string
			srv := serveTLS(t, p, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				line := r.Method + " " + strings.TrimPrefix(r.URL.Path, "/.well-known/est/")
				if len(r.TLS.PeerCertificates) > 0 {
					line += " cert"
				}
				u, pw, ok := r.BasicAuth()
				if ok {
					line += "+basic"
				}
				mu.Lock()
				seen = append(seen, line)
				mu.Unlock()
				if len(r.TLS.PeerCertificates) == 0 {
					http.Error(w, "no certificate", http.StatusUnauthorized)
					return
				}
				if c.challenge != "" && (!ok || u != "dev" || pw != "pw") {
					w.Header().Set("WWW-Authenticate", c.challenge)
					http.Error(w, "401 authorization required", http.StatusUnauthorized)
					return
				}
				issueFor(t, p, w, r)
			}))
			cl, err := New(Options{Server: srv.URL, Roots: p.pool(), Certificate: func() *tls.Certificate { return tlsCert },
				Timeout: 5 * time.Second, Username: c.user, Password: c.pass})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.CloseIdleConnections()
			csr, err := BuildRenewalCSR(dev, cur, CSRPlan{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.SimpleReenroll(context.Background(), csr)
			if c.wantOK != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("err = %v, want success %v or an error saying %q", err, c.wantOK, c.wantErr)
			}
			mu.Lock()
			defer mu.Unlock()
			if strings.Join(seen, "; ") != strings.Join(c.wantLog, "; ") {
				t.Fatalf("requests %q, want %q", seen, c.wantLog)
			}
		})
	}
	if _, err := New(Options{Server: "https://127.0.0.1", Roots: p.pool(), Username: "a:b"}); err == nil {
		t.Fatal("a user name with ':' accepted")
	}
}

// TestCheckExtended: a renewal that does not move NotAfter forward is a
// typed error that names the CA that capped it.
func TestCheckExtended(t *testing.T) {
	now := time.Now()
	cert := func(cn string, notAfter time.Time) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, NotBefore: now, NotAfter: notAfter}
	}
	cur := cert("dev-1", now.Add(2*time.Hour))
	cur.NotBefore = now.Add(-time.Hour)
	sameSecond := cert("dev-1", cur.NotAfter)
	sameSecond.NotBefore = cur.NotBefore
	for _, c := range []struct {
		name   string
		chain  []*x509.Certificate
		wantCA string // "-" means no error
	}{
		{"extended", []*x509.Certificate{cert("dev-1", now.Add(24*time.Hour)), cert("issuing", now.Add(365*24*time.Hour))}, "-"},
		{"one second later is later", []*x509.Certificate{cert("dev-1", cur.NotAfter.Add(time.Second))}, "-"},
		{"issued in the same second as the current one", []*x509.Certificate{sameSecond}, "-"},
		{"earlier, backdated further", []*x509.Certificate{{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(time.Hour)}}, ""},
		{"same NotAfter, capped by the issuing CA", []*x509.Certificate{cert("dev-1", cur.NotAfter), cert("issuing", cur.NotAfter)}, "CN=issuing"},
		{"earlier, CA unknown", []*x509.Certificate{cert("dev-1", now.Add(time.Hour)), cert("issuing", now.Add(48*time.Hour))}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := CheckExtended(cur, c.chain)
			if c.wantCA == "-" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			ne, ok := err.(*NotExtendedError)
			if !ok || !IsNotExtended(err) {
				t.Fatalf("err = %v, want a *NotExtendedError", err)
			}
			if ne.CA != c.wantCA || !ne.Current.Equal(cur.NotAfter) || !ne.Issued.Equal(c.chain[0].NotAfter) || ne.Shortened != c.chain[0].NotAfter.Before(cur.NotAfter) {
				t.Fatalf("%+v", ne)
			}
		})
	}
}

func FuzzWantsBasic(f *testing.F) {
	f.Add(`Basic realm="est"`)
	f.Add(`Bearer realm="x", Basic realm="a, b", charset="UTF-8"`)
	f.Add("")
	f.Fuzz(func(t *testing.T, challenge string) {
		got := wantsBasic(&ServerError{Status: http.StatusUnauthorized, Challenge: challenge})
		if got && !strings.Contains(strings.ToLower(challenge), "basic") {
			t.Fatalf("%q taken for a Basic challenge", challenge)
		}
	})
}
