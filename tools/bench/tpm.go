package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/keystore/file"
	"github.com/edgeagent/edgeagent/keystore/tpm"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// tpmSection measures signatures per second and mutual-TLS handshake
// latency with the device key in swtpm next to the same key type in a
// file, in the same run.
func tpmSection(ctx context.Context, w io.Writer) error {
	dir, err := os.MkdirTemp("", "edgeagent-bench-tpm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sim, err := swtpm.Run(dir + "/swtpm")
	if err != nil {
		return fmt.Errorf("swtpm (make bench installs it): %w", err)
	}
	defer sim.Stop()

	srv, pool, caKey, caCert, err := handshakeServer()
	if err != nil {
		return err
	}
	defer srv.Close()

	tw := tabwriter.NewWriter(w, 8, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "key\tfile sign/s\tswtpm sign/s\tratio\tfile handshake p50 ms\tswtpm handshake p50 ms\tratio\t")
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		soft, err := file.Generate(alg)
		if err != nil {
			return err
		}
		ks, err := tpm.Open(tpm.Options{Address: sim.Addr(), Dir: dir + "/" + string(alg)})
		if err != nil {
			return err
		}
		hard, err := ks.Create(alg)
		if err != nil {
			ks.Close()
			return err
		}
		softRate, err := signRate(ctx, soft, alg)
		if err != nil {
			ks.Close()
			return err
		}
		hardRate, err := signRate(ctx, hard, alg)
		if err != nil {
			ks.Close()
			return err
		}
		softHS, err := handshakeP50(srv.Addr().String(), pool, soft, caCert, caKey, 100)
		if err != nil {
			ks.Close()
			return err
		}
		hardHS, err := handshakeP50(srv.Addr().String(), pool, hard, caCert, caKey, 100)
		ks.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.3f\t%.2f\t%.2f\t%.1f\t\n", alg, softRate, hardRate, hardRate/softRate,
			ms(softHS), ms(hardHS), float64(hardHS)/float64(softHS))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "swtpm is a software TPM on this CPU: its figures are a best case (a floor for the cost); a hardware TPM is usually much slower")
	fmt.Fprintln(w, "handshakes: TLS 1.3, client certificate required, a new connection each, 100 per key; sign/s over 2s, one goroutine")
	return nil
}

func signRate(ctx context.Context, k crypto.Signer, alg keystore.Algorithm) (float64, error) {
	d := sha256.Sum256([]byte("bench"))
	var opts crypto.SignerOpts = crypto.SHA256
	if alg != keystore.ECDSAP256 {
		opts = &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: rsa.PSSSaltLengthEqualsHash}
	}
	start := time.Now()
	n := 0
	for time.Since(start) < 2*time.Second && ctx.Err() == nil {
		if _, err := k.Sign(rand.Reader, d[:], opts); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// handshakeServer is a TLS 1.3 listener that requires a client
// certificate from a fresh CA and completes each handshake.
func handshakeServer() (net.Listener, *x509.CertPool, *ecdsa.PrivateKey, *x509.Certificate, error) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.(*tls.Conn).Handshake()
				_, _ = c.Write([]byte{1})
				c.Close()
			}()
		}
	}()
	return ln, pool, caKey, caCert, nil
}

func handshakeP50(addr string, pool *x509.CertPool, key crypto.Signer, caCert *x509.Certificate, caKey *ecdsa.PrivateKey, n int) (time.Duration, error) {
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "bench-device"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, caCert, key.Public(), caKey)
	if err != nil {
		return 0, err
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			return 0, fmt.Errorf("handshake: %w", err)
		}
		// Reading the server's byte proves it accepted our certificate.
		if _, err := c.Read(make([]byte, 1)); err != nil {
			c.Close()
			return 0, fmt.Errorf("handshake: %w", err)
		}
		lat = append(lat, time.Since(start))
		c.Close()
	}
	slices.Sort(lat)
	return lat[len(lat)/2], nil
}
