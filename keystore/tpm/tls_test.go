package tpm

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestTLSHandshakeWithTPMKey runs real mutual-TLS handshakes in which the
// client proves possession of the TPM key: the server requires and verifies
// a client certificate issued for the TPM public key.
func TestTLSHandshakeWithTPMKey(t *testing.T) {
	sw := swtpm.Start(t)
	ca := testpki.New(t, "tpm test CA")
	srvCert := *ca.Server(t).TLS

	tests := []struct {
		name    string
		alg     keystore.Algorithm
		version uint16
	}{
		{"ecdsa-tls13", keystore.ECDSAP256, tls.VersionTLS13},
		{"rsa-tls13-pss", keystore.RSA2048, tls.VersionTLS13},
		{"ecdsa-tls12", keystore.ECDSAP256, tls.VersionTLS12},
		{"rsa-tls12", keystore.RSA2048, tls.VersionTLS12},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, sw, t.TempDir())
			k, err := s.Create(tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			// The device obtains its certificate through a CSR signed by
			// the TPM key, as enrollment does.
			csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device-1"}}, k)
			if err != nil {
				t.Fatalf("CSR signed by the TPM: %v", err)
			}
			csr, err := x509.ParseCertificateRequest(csrDER)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Fatalf("CSR signature: %v", err)
			}
			clientLeaf := ca.Issue(t, testpki.Leaf{CN: "device-1", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, PublicKey: csr.PublicKey})
			clientCert := tls.Certificate{Certificate: [][]byte{clientLeaf.Cert.Raw}, PrivateKey: k}

			peer, state := handshake(t, srvCert, clientCert, ca.Pool(), tc.version)
			if state.Version != tc.version {
				t.Fatalf("negotiated TLS version %x, want %x", state.Version, tc.version)
			}
			if peer == nil || peer.Subject.CommonName != "device-1" {
				t.Fatalf("server saw client certificate %v", peer)
			}
			pub, _ := x509.MarshalPKIXPublicKey(peer.PublicKey)
			if !bytes.Equal(pub, pubDER(t, k)) {
				t.Fatal("the server verified a different key than the TPM key")
			}
		})
	}
}

// handshake runs a TLS server on 127.0.0.1:0 that requires and verifies a
// client certificate, connects a client with clientCert, exchanges a byte
// and returns the client certificate the server verified and the client's
// connection state.
func handshake(t *testing.T, srvCert, clientCert tls.Certificate, pool *x509.CertPool, version uint16) (*x509.Certificate, tls.ConnectionState) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   version,
		MaxVersion:   version,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		peer *x509.Certificate
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(tc, b); err != nil {
			done <- result{err: err}
			return
		}
		_, err = tc.Write(b)
		done <- result{peer: tc.ConnectionState().PeerCertificates[0], err: err}
	}()

	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{clientCert},
		RootCAs:      pool,
		ServerName:   "127.0.0.1",
		MinVersion:   version,
		MaxVersion:   version,
	})
	if err != nil {
		ln.Close()
		r := <-done
		t.Fatalf("client handshake: %v (server: %v)", err, r.err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	// In TLS 1.3 the server checks the client's certificate after the
	// client's handshake returns: a round trip makes sure it did.
	if _, err := c.Write([]byte{42}); err != nil {
		t.Fatalf("client write: %v", err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		r := <-done
		t.Fatalf("client read: %v (server: %v)", err, r.err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("server: %v", r.err)
	}
	return r.peer, c.ConnectionState()
}
