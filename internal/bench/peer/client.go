package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// The two load generators are internal/bench's (package main there, so
// copied): the same code drives both servers.

// enrollFunc sends one prepared enrollment and keeps the answer in j.
type enrollFunc func(ctx context.Context, j *job) error

// deviceClient enrolls as edgeagent does: net/http, a new connection for
// every request, no TLS session resumption, the server's chain verified
// against the root on every connection, X25519 offered.
func deviceClient(s *server) (enrollFunc, func()) {
	c := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{
				RootCAs:          s.roots,
				MinVersion:       tls.VersionTLS12,
				CurvePreferences: enroll.KeyExchanges(false),
			},
			DisableKeepAlives: true,
		},
	}
	url := s.url() + est.Path("", est.OpSimpleEnroll)
	return func(ctx context.Context, j *job) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(j.csr))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", est.MediaPKCS10)
		req.Header.Set("Content-Transfer-Encoding", est.TransferEncoding)
		req.SetBasicAuth(j.user, j.pass)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		j.answer, err = readAnswer(resp)
		return err
	}, c.CloseIdleConnections
}

// wireEnroller is the lean load generator: a new TCP and TLS connection per
// enrollment (the same handshake as a device's), the request written in one
// TLS record, and the server authenticated by its exact certificate, pinned
// after one full chain verification against the root before timing. It
// spends no more than a client must, so more of the shared cores go to the
// server.
type wireEnroller struct {
	addr   string
	dialer net.Dialer
	cfg    *tls.Config
}

func newWireEnroller(ctx context.Context, s *server) (*wireEnroller, error) {
	host, _, err := net.SplitHostPort(s.addr)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: s.roots, ServerName: host, MinVersion: tls.VersionTLS12, CurvePreferences: enroll.KeyExchanges(false)}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, fmt.Errorf("pin the server certificate of %s: %w", s.name, err)
	}
	leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
	conn.Close()
	pinned := x509.NewCertPool()
	pinned.AddCert(leaf)
	cfg = cfg.Clone()
	cfg.RootCAs = pinned
	return &wireEnroller{addr: s.addr, cfg: cfg, dialer: net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}}, nil
}

func (e *wireEnroller) enroll(ctx context.Context, j *job) error {
	raw, err := e.dialer.DialContext(ctx, "tcp", e.addr)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	conn := tls.Client(raw, e.cfg)
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := conn.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	req := make([]byte, 0, 512+len(j.csr))
	req = append(req, "POST "+est.Path("", est.OpSimpleEnroll)+" HTTP/1.1\r\nHost: "...)
	req = append(req, e.cfg.ServerName...)
	req = append(req, "\r\nAuthorization: Basic "...)
	req = base64.StdEncoding.AppendEncode(req, []byte(j.user+":"+j.pass))
	req = append(req, "\r\nContent-Type: "+est.MediaPKCS10+"\r\nContent-Transfer-Encoding: "+est.TransferEncoding+"\r\nConnection: close\r\nContent-Length: "...)
	req = strconv.AppendInt(req, int64(len(j.csr)), 10)
	req = append(req, "\r\n\r\n"...)
	req = append(req, j.csr...)
	if _, err := conn.Write(req); err != nil {
		return fmt.Errorf("send simpleenroll: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fmt.Errorf("read simpleenroll answer: %w", err)
	}
	defer resp.Body.Close()
	j.answer, err = readAnswer(resp)
	return err
}

func readAnswer(resp *http.Response) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(resp.Body, est.MaxBodyBytes))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("simpleenroll: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// checkAnswer checks that j's answer is a certificate for j's key, for
// TLS client use, signed by issuer: what the bench counts is issued
// certificates, not 200s.
func checkAnswer(j *job, issuer *x509.Certificate) error {
	if j.answer == nil {
		return errors.New("no answer")
	}
	der, err := est.DecodeBase64(j.answer)
	if err != nil {
		return err
	}
	certs, err := est.DecodeCertsOnly(der)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(certs, func(c *x509.Certificate) bool {
		k, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		return ok && k.Equal(j.pub)
	})
	if i < 0 {
		return fmt.Errorf("none of the %d certificates in the answer is for the CSR's key", len(certs))
	}
	leaf := certs[i]
	if err := leaf.CheckSignatureFrom(issuer); err != nil {
		return fmt.Errorf("certificate for %s: %w", leaf.Subject, err)
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("certificate for %s is not for TLS clients", leaf.Subject)
	}
	return nil
}

type result struct {
	n        int // enrollments done
	rate     float64
	p50, p99 time.Duration
	// cpu is the process's CPU time (user + system, server and load
	// generator together) per enrollment.
	cpu time.Duration
	// ranOut: the prepared enrollments ran out before the duration.
	ranOut bool
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runFor sends jobs from concurrency clients for d (or until the jobs run
// out), then checks every answer against issuer. The first failure ends
// the trial with an error: a failed enrollment is never counted.
func runFor(ctx context.Context, do enrollFunc, jobs []job, concurrency int, d time.Duration, issuer *x509.Certificate) (result, error) {
	for i := range jobs {
		jobs[i].answer = nil // reused jobs keep no answer of an earlier trial
	}
	lat := make([]time.Duration, len(jobs))
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	cpu0 := processCPU()
	start := time.Now()
	deadline := start.Add(d)
	for range concurrency {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) {
				i := int(next.Add(1)) - 1
				if i >= len(jobs) {
					return
				}
				t0 := time.Now()
				if err := do(ctx, &jobs[i]); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	if firstErr != nil {
		return result{}, firstErr
	}
	if err := ctx.Err(); err != nil {
		return result{}, err
	}
	n := min(int(next.Load()), len(jobs))
	if n == 0 {
		return result{}, errors.New("no enrollment done")
	}
	for i := range jobs[:n] {
		if err := checkAnswer(&jobs[i], issuer); err != nil {
			return result{}, fmt.Errorf("enrollment %d: %w", i, err)
		}
	}
	lat = lat[:n]
	slices.Sort(lat)
	return result{
		n:      n,
		rate:   float64(n) / elapsed.Seconds(),
		p50:    lat[n*50/100],
		p99:    lat[min(n-1, n*99/100)],
		cpu:    cpu / time.Duration(n),
		ranOut: n == len(jobs),
	}, nil
}
