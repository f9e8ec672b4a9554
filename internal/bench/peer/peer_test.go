package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// startServers starts edgeca and the GlobalSign server for one test.
func startServers(t *testing.T) []*server {
	t.Helper()
	ctx := t.Context()
	ec, err := startEdgeCA(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ec.stop)
	gs, err := startGlobalSign(ca.DefaultCertTTL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gs.stop)
	return []*server{ec, gs}
}

func clientOf(t *testing.T, s *server, kind string) enrollFunc {
	t.Helper()
	if kind == "lean" {
		e, err := newWireEnroller(t.Context(), s)
		if err != nil {
			t.Fatal(err)
		}
		return e.enroll
	}
	do, closeIdle := deviceClient(s)
	t.Cleanup(closeIdle)
	return do
}

// TestEachServerIssuesVerifiableCertificates: both servers, driven by both
// load generators, answer every enrollment with a certificate that
// verifies to their root for TLS client use and holds the CSR's key; the
// trial ends when the jobs run out, not at its (long) duration.
func TestEachServerIssuesVerifiableCertificates(t *testing.T) {
	for _, s := range startServers(t) {
		for _, kind := range clientKinds {
			t.Run(s.name+"/"+kind, func(t *testing.T) {
				jobs, err := s.prepare(t.Context(), 6)
				if err != nil {
					t.Fatal(err)
				}
				r, err := runFor(t.Context(), clientOf(t, s, kind), jobs, 2, time.Hour, s.issuer)
				if err != nil {
					t.Fatal(err)
				}
				if r.n != len(jobs) || !r.ranOut {
					t.Fatalf("%d of %d enrollments done (ran out %v)", r.n, len(jobs), r.ranOut)
				}
				roots, inter := x509.NewCertPool(), x509.NewCertPool()
				roots.AddCert(s.root)
				inter.AddCert(s.issuer)
				for i, j := range jobs {
					der, err := est.DecodeBase64(j.answer)
					if err != nil {
						t.Fatal(err)
					}
					certs, err := est.DecodeCertsOnly(der)
					if err != nil {
						t.Fatal(err)
					}
					leaf := certs[0]
					if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
						t.Fatalf("enrollment %d: %v", i, err)
					}
					if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(j.pub) {
						t.Fatalf("enrollment %d: the certificate is not for the CSR's key", i)
					}
				}
			})
		}
	}
}

// TestSameHandshake: both servers negotiate the same TLS with the bench's
// clients: TLS 1.3, X25519, an ECDSA P-256 server key, a chain of leaf and
// issuing CA, no session ticket.
func TestSameHandshake(t *testing.T) {
	for _, s := range startServers(t) {
		t.Run(s.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", s.addr, &tls.Config{RootCAs: s.roots, CurvePreferences: enroll.KeyExchanges(false)})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			st := conn.ConnectionState()
			key, ok := st.PeerCertificates[0].PublicKey.(*ecdsa.PublicKey)
			switch {
			case st.Version != tls.VersionTLS13:
				t.Errorf("TLS version %x", st.Version)
			case st.CurveID != tls.X25519:
				t.Errorf("key exchange %v", st.CurveID)
			case !ok || key.Curve != elliptic.P256():
				t.Errorf("server key %T", st.PeerCertificates[0].PublicKey)
			case len(st.PeerCertificates) != 2 || !st.PeerCertificates[1].Equal(s.issuer):
				t.Errorf("chain of %d certificates", len(st.PeerCertificates))
			}
		})
	}
}

// TestFailuresAreNotCounted: a refused enrollment ends the trial with an
// error, and an answer that is not a certificate for the job's key fails
// the check every trial ends with.
func TestFailuresAreNotCounted(t *testing.T) {
	servers := startServers(t)
	for _, s := range servers {
		for _, kind := range clientKinds {
			t.Run(s.name+"/"+kind+"/bad password", func(t *testing.T) {
				jobs, err := s.prepare(t.Context(), 3)
				if err != nil {
					t.Fatal(err)
				}
				jobs[1].pass += "x"
				_, err = runFor(t.Context(), clientOf(t, s, kind), jobs, 1, time.Hour, s.issuer)
				if err == nil || !strings.Contains(err.Error(), "401") {
					t.Fatalf("trial with a wrong password: %v, want a 401", err)
				}
			})
		}
	}
	s := servers[1]
	jobs, err := s.prepare(t.Context(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runFor(t.Context(), clientOf(t, s, "lean"), jobs, 1, time.Hour, s.issuer); err != nil {
		t.Fatal(err)
	}
	other, err := newGSCA(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		j      job
		issuer *x509.Certificate
		want   string
	}{
		{"good", jobs[0], s.issuer, ""},
		{"another job's certificate", job{answer: jobs[1].answer, pub: jobs[0].pub}, s.issuer, "CSR's key"},
		{"another CA's issuer", jobs[0], other.inter, "verification"},
		{"not base64", job{answer: []byte("<html>ok</html>"), pub: jobs[0].pub}, s.issuer, "base64"},
		{"no answer", job{pub: jobs[0].pub}, s.issuer, "no answer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkAnswer(&c.j, c.issuer)
			if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("checkAnswer: %v, want %q", err, c.want)
			}
		})
	}
}
