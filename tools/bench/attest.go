package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/keystore/tpm"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

const attestRounds = 20

// attestSection times one device's enrollment with TPM attestation
// (attest/start, ActivateCredential, Certify, attest/finish) next to a plain
// simpleenroll of the same swtpm key, against the same edgeca, in the same
// run. swtpm answers in microseconds; a real TPM takes tens to hundreds of
// milliseconds per command (EK and AK creation above all), so these
// figures are a floor.
func attestSection(ctx context.Context, w io.Writer) error {
	dir, err := os.MkdirTemp("", "edgeagent-bench-attest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m, err := swtpm.NewManufacturer(filepath.Join(dir, "manufacturer"))
	if err != nil {
		return err
	}
	sim, err := swtpm.RunManufactured(m, filepath.Join(dir, "swtpm"))
	if err != nil {
		return fmt.Errorf("swtpm with EK certificates (make bench installs swtpm-tools): %w", err)
	}
	defer sim.Stop()

	caDir := filepath.Join(dir, "ca")
	if err := ca.Init(ctx, caDir, ca.InitOptions{}); err != nil {
		return err
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(m.Root)
	inter.AddCert(m.Issuer)
	c, err := ca.Open(ctx, caDir, ca.Options{Logger: slog.New(slog.DiscardHandler), Hostnames: []string{"127.0.0.1"},
		Attestation: &ca.AttestOptions{Roots: roots, Intermediates: inter}})
	if err != nil {
		return err
	}
	defer c.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- c.Serve(sctx, ln) }()
	defer func() { cancel(); <-served }()
	url := "https://" + ln.Addr().String()

	ks, err := tpm.Open(tpm.Options{Address: sim.Addr(), Dir: filepath.Join(dir, "keys")})
	if err != nil {
		return err
	}
	defer ks.Close()
	key, err := ks.Create(keystore.ECDSAP256)
	if err != nil {
		return err
	}
	caRoots := x509.NewCertPool()
	caRoots.AddCert(c.Root())
	cl, err := enroll.New(enroll.Options{Server: url, Roots: caRoots})
	if err != nil {
		return err
	}
	defer cl.CloseIdleConnections()

	var plain, attested []time.Duration
	for i := range attestRounds {
		for _, att := range []bool{false, true} {
			id := fmt.Sprintf("bench-tpm-%d-%v", i, att)
			tok, _, err := c.CreateToken(ctx, ca.TokenOptions{URL: url, Device: id})
			if err != nil {
				return err
			}
			// The CSR is signed outside the timing: both kinds need one.
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
			if err != nil {
				return err
			}
			start := time.Now()
			if att {
				_, err = cl.AttestedEnroll(ctx, ks, csr, tok.ID, tok.Secret)
				attested = append(attested, time.Since(start))
			} else {
				_, err = cl.SimpleEnroll(ctx, csr, tok.ID, tok.Secret)
				plain = append(plain, time.Since(start))
			}
			if err != nil {
				return fmt.Errorf("enrollment %s: %w", id, err)
			}
		}
	}
	p50 := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	pp, pa := p50(plain), p50(attested)
	tw := tabwriter.NewWriter(w, 8, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "enrollments\tplain p50 ms\tattested p50 ms\tratio\t")
	fmt.Fprintf(tw, "%d + %d\t%.1f\t%.1f\t%.1fx\t\n", attestRounds, attestRounds, ms(pp), ms(pa), float64(pa)/float64(pp))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "one device, sequential, swtpm on loopback (RSA EK persistent, the ECC AK derived twice per attestation): a floor, real TPMs are much slower")
	return nil
}
