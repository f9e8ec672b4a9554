package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// TestEnrollClients runs both load generators against a real edgeca over
// TLS on loopback, and checks that the lean one authenticates the server:
// pinned to one CA's server certificate, it refuses another's.
func TestEnrollClients(t *testing.T) {
	ctx := t.Context()
	c, addr, stop, err := startBenchCA(ctx, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	other, otherAddr, stopOther, err := startBenchCA(ctx, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer stopOther()

	jobs, err := prepareEnrollments(ctx, c, "https://"+addr, 8)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Root())
	device := newEnrollClient(roots, false)
	defer device.CloseIdleConnections()
	lean, err := newWireEnroller(ctx, addr, roots, false)
	if err != nil {
		t.Fatal(err)
	}

	r, err := runEnrollments(ctx, lean.enroll, jobs[:4], 2)
	if err != nil {
		t.Fatalf("lean client: %v", err)
	}
	if r.rate <= 0 || r.p99 <= 0 {
		t.Errorf("lean client: result %+v, want a rate and latencies", r)
	}
	if _, err := runEnrollments(ctx, device.enroll("https://"+addr), jobs[4:], 2); err != nil {
		t.Fatalf("device-like client: %v", err)
	}
	// Every token was single-use: a used token with a new key must be
	// refused, so a run cannot count answers that issued nothing. (The same
	// key again is a lost-answer retry and gets the issued certificate.)
	err = lean.enroll(ctx, enrollJob{tok: jobs[0].tok, csr: freshCSR(t, "bench-000000")})
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("reused token with a new key: %v, want a 401 refusal", err)
	}
	if err := lean.enroll(ctx, jobs[0]); err != nil {
		t.Errorf("lost-answer retry (same token, same key): %v, want the issued certificate", err)
	}

	// The other CA's server has a certificate from another root.
	if _, err := newWireEnroller(ctx, otherAddr, roots, false); err == nil {
		t.Error("pinning against the wrong root succeeded")
	}
	impostor := *lean
	impostor.addr = otherAddr
	otherJobs, err := prepareEnrollments(ctx, other, "https://"+otherAddr, 1)
	if err != nil {
		t.Fatal(err)
	}
	err = impostor.enroll(ctx, otherJobs[0])
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("lean client against a server with another certificate: %v, want a certificate error", err)
	}

	if got := handshakeCurve(t, lean); got != tls.X25519 {
		t.Errorf("lean client key exchange: %v, want X25519 as edgeagent offers by default", got)
	}
}

// TestEnrollClientsPostQuantum checks the post-quantum rows measure what
// they say: X25519MLKEM768 on the wire.
func TestEnrollClientsPostQuantum(t *testing.T) {
	ctx := t.Context()
	s, err := newBenchServer(ctx, t.TempDir(), true, enrollWarmup+4)
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	if _, err := runEnrollments(ctx, s.lean.enroll, s.take(4), 2); err != nil {
		t.Fatal(err)
	}
	if got := handshakeCurve(t, s.lean); got != tls.X25519MLKEM768 {
		t.Errorf("key exchange: %v, want X25519MLKEM768", got)
	}
}

func handshakeCurve(t *testing.T, e *wireEnroller) tls.CurveID {
	t.Helper()
	conn, err := tls.Dial("tcp", e.addr, e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().CurveID
}

// freshCSR returns a base64 CSR for a new key with common name cn.
func freshCSR(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return est.EncodeBase64(der)
}

// TestAttestSection runs the attested-enrollment section against a
// manufactured swtpm: every attested enrollment must succeed.
func TestAttestSection(t *testing.T) {
	var b strings.Builder
	if err := attestSection(t.Context(), &b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "attested p50 ms") {
		t.Fatalf("no table:\n%s", b.String())
	}
}
