// Command peer is the `make bench` row that puts edgeca beside another EST
// server driven by the same clients: GlobalSign's est server
// (est.NewRouter) with a Go crypto/x509 CA behind it, run as a process of
// its own (this program with -serve-peer), and a separately built `edgeca
// serve` process, both behind TLS on 127.0.0.1; each server's CPU is its
// process's, the clients run in this one.
// Two clients drive each: a device-like net/http client doing a full EST
// enrollment (a fresh P-256 key, a CSR, a new TLS connection, the PKCS#7
// answer parsed), and GlobalSign's own est.Client, at concurrency 1 and 16.
// The device client also drives smallstep's step-ca (stepca.go), a CA that
// stores what it issues, in step-ca's protocol instead of EST.
//
// It is a module of its own for the reason ca/interop is: GlobalSign's est
// needs go-tpm v0.3, which cannot share a build with the agent's go-tpm
// v0.9, so nothing here links edgeagent code; edgeca is built from the
// parent module with `go build` and run as a process.
//
// The comparison is not like for like, and the output says so: edgeca
// checks a token, writes the device, the token use, the audit record and
// the issued certificate, and fsyncs before it answers; the peer checks a
// fixed password and stores nothing; step-ca checks a one-time token and
// stores its use and the certificate, synchronously (stepcaStores).
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/globalsign/est"
	"go.mozilla.org/pkcs7"
)

func main() {
	repo := flag.String("repo", filepath.Join("..", "..", ".."), "the edgeagent module to build edgeca from")
	n1 := flag.Int("n1", 150, "enrollments per run at concurrency 1")
	n16 := flag.Int("n16", 600, "enrollments per run at concurrency 16")
	prebuilt := flag.String("edgeca", "", "a built edgeca binary to run instead of building one from -repo (to profile it, or to compare two builds)")
	stepcaBin := flag.String("step-ca", "", "a built step-ca binary to run instead of building the one pinned in -repo's tools/bench/stepca")
	servePeer := flag.String("serve-peer", "", "internal: serve the peer EST server, writing its address and root to this directory, until SIGTERM")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *servePeer != "" {
		if err := runPeer(ctx, *servePeer); err != nil {
			fmt.Fprintln(os.Stderr, "bench peer server:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, os.Stdout, *repo, *prebuilt, *stepcaBin, *n1, *n16); err != nil {
		fmt.Fprintln(os.Stderr, "bench peer:", err)
		os.Exit(1)
	}
}

// warmup enrollments precede every timed row, untimed; startWarmup more
// precede the first, for every server: a CA that has just started is
// still growing its files (edgeca's SQLite WAL until its first
// checkpoint, where an fsync that extends the file costs more than one
// that overwrites it; step-ca's badger tables) and its heap, which a CA
// that has run for a day has done. Each server gets the same.
const (
	warmup      = 20
	startWarmup = 300
)

func run(ctx context.Context, w io.Writer, repo, prebuilt, stepcaBin string, n1, n16 int) error {
	dir, err := os.MkdirTemp("", "edgeca-bench-peer-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := prebuilt
	if bin == "" {
		bin = filepath.Join(dir, "edgeca")
		if err := buildEdgeca(ctx, repo, bin); err != nil {
			return err
		}
	}
	if stepcaBin == "" {
		stepcaBin = filepath.Join(dir, "step-ca")
		mod := filepath.Join(repo, "tools", "bench", "stepca")
		fmt.Fprintf(os.Stderr, "building step-ca from %s (the first time downloads and compiles ~600 modules: minutes)\n", mod)
		if err := buildStepca(ctx, mod, stepcaBin); err != nil {
			return err
		}
	}
	total := 2*(n1+n16) + 4*warmup + startWarmup
	ed, err := startEdgeca(ctx, bin, filepath.Join(dir, "ca"), total)
	if err != nil {
		return err
	}
	defer ed.stop()
	pr, err := startPeerProc(ctx, filepath.Join(dir, "peer"))
	if err != nil {
		return err
	}
	defer pr.stop()
	sc, err := startStepca(ctx, stepcaBin, filepath.Join(dir, "stepca"))
	if err != nil {
		return err
	}
	defer sc.stop()

	for i, srv := range []target{ed.target(), pr.target(), sc.target()} {
		ids := func(n int) string { return fmt.Sprintf("bench-warm-%d-%d", i, n) }
		enroll, err := enrollerFor(deviceClient, srv, ids, startWarmup)
		if err != nil {
			return err
		}
		if _, err := drive(ctx, enroll, ids, startWarmup, 4, nil); err != nil {
			return fmt.Errorf("%s warm-up: %w", srv.name, err)
		}
	}

	fmt.Fprintf(w, "== edgeca beside GlobalSign est %s and step-ca %s (same clients, TLS on 127.0.0.1) ==\n", "v1.0.6", sc.version)
	fmt.Fprintf(w, "%s/%s, GOMAXPROCS=%d, %s; edgeca: its own process (SQLite, synchronous=FULL, shedding off); peer: est.NewRouter + crypto/x509 CA, its own process; step-ca: its own process (badger %s, JWK provisioner)\n",
		runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.Version(), sc.badger)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "client\tc\tserver\tenrollments\tenroll/s\tp50 ms\tp99 ms\tserver CPU us/enroll\tedgeca/peer enroll/s\tedgeca/peer CPU/enroll\tedgeca/step-ca enroll/s\tedgeca/step-ca CPU/enroll\t\n")
	seq := 0
	for _, c := range []struct{ conc, n int }{{1, n1}, {16, n16}} {
		for _, cl := range []clientKind{deviceClient, globalsignClient} {
			servers := []target{ed.target(), pr.target()}
			if cl == deviceClient { // step-ca does not speak EST
				servers = append(servers, sc.target())
			}
			rows := make([]result, len(servers))
			for i, srv := range servers {
				seq++
				ids := func(i int) string { return fmt.Sprintf("bench-%d-%d", seq, i) }
				enroll, err := enrollerFor(cl, srv, ids, warmup)
				if err != nil {
					return err
				}
				if _, err := drive(ctx, enroll, ids, warmup, min(c.conc, 4), nil); err != nil {
					return fmt.Errorf("%s → %s warm-up: %w", cl, srv.name, err)
				}
				seq++
				// Before the timed loop: step-ca's tokens are minted here,
				// as an operator mints one per device before it enrolls.
				if enroll, err = enrollerFor(cl, srv, ids, c.n); err != nil {
					return err
				}
				res, err := drive(ctx, enroll, ids, c.n, c.conc, srv.cpu)
				if err != nil {
					return fmt.Errorf("%s → %s, c=%d: %w", cl, srv.name, c.conc, err)
				}
				rows[i] = res
			}
			ed := rows[0]
			ratios := func(o result) (string, string) {
				return fmt.Sprintf("%.2f", ed.rate/o.rate), fmt.Sprintf("%.2f", float64(ed.serverCPU)/float64(o.serverCPU))
			}
			for i, r := range rows {
				var cells [4]string
				if i == 0 {
					cells[0], cells[1] = ratios(rows[1])
					if len(rows) > 2 {
						cells[2], cells[3] = ratios(rows[2])
					}
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%.0f\t%.2f\t%.2f\t%.0f\t%s\t%s\t%s\t%s\t\n", cl, c.conc, servers[i].name, c.n, r.rate, ms(r.p50), ms(r.p99), us(r.serverCPU), cells[0], cells[1], cells[2], cells[3])
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "not like for like: edgeca checks a token and commits the token use, the device, the audit record and the issued certificate with an fsync before each answer (group commit under concurrency); the peer checks a fixed password and stores nothing.")
	fmt.Fprintln(w, stepcaStores(sc.version, sc.badger))
	fmt.Fprintln(w, "step-ca's client is the device client in step-ca's protocol: one POST /1.0/sign of a PEM CSR and a one-time token (an ES256 JWT, one per enrollment, minted before the timed loop); GlobalSign's client speaks only EST, so it has no step-ca row.")
	fmt.Fprintln(w, "CPU: each server process's user+system time from /proc/PID/stat (10 ms ticks), the clients run in this process. Each enrollment is a new TLS connection (full handshake), as a device's is.")
	fmt.Fprintf(w, "Warm-up, untimed, the same for every server: %d device enrollments before the first row, %d before each row.\n", startWarmup, warmup)
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func buildEdgeca(ctx context.Context, repo, bin string) error {
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-trimpath", "-o", bin, "./cmd/edgeca")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build edgeca in %s: %w\n%s", repo, err, out)
	}
	return nil
}

// target is one server the clients drive.
type target struct {
	name       string
	addr       string
	roots      *x509.CertPool
	user, pass string
	// cpu returns the server's CPU time so far, nil when it runs in this
	// process.
	cpu func() (time.Duration, error)
	// mint, set for step-ca, makes a one-time token for a device id.
	mint func(id string) (string, error)
}

// edgecaProc is a running `edgeca serve`.
type edgecaProc struct {
	cmd        *exec.Cmd
	addr       string
	roots      *x509.CertPool
	user, pass string
	logs       *bytes.Buffer
	cancel     context.CancelFunc
}

func startEdgeca(ctx context.Context, bin, dir string, uses int) (*edgecaProc, error) {
	if out, err := exec.CommandContext(ctx, bin, "init", "--dir", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("edgeca init: %w\n%s", err, out)
	}
	addrFile := filepath.Join(dir, "addr")
	sctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(sctx, bin, "serve", "--dir", dir, "--listen", "127.0.0.1:0", "--addr-file", addrFile,
		"--health-listen", "off", "--shed-off", "--max-conns-per-peer", "4096", "--log-level", "warn")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	logs := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	p := &edgecaProc{cmd: cmd, logs: logs, cancel: cancel}
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(addrFile)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			p.addr = strings.TrimSpace(string(b))
			break
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("edgeca serve did not write %s: %v\n%s", addrFile, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond) // polling for the file, with a deadline
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, "root.pem"))
	if err != nil {
		p.stop()
		return nil, err
	}
	p.roots = x509.NewCertPool()
	p.roots.AppendCertsFromPEM(rootPEM)
	// One fleet token for every enrollment of the run, as an operator
	// enrolling a batch of devices would make.
	out, err := exec.CommandContext(ctx, bin, "token", "create", "--dir", dir, "--pattern", "bench-*", "--uses", strconv.Itoa(uses), "--url", "https://"+p.addr).Output()
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("edgeca token create: %w", err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(string(out)), "edgetok1."))
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("token %q: %w", out, err)
	}
	var tok struct{ ID, Secret string }
	if err := json.Unmarshal(raw, &tok); err != nil {
		p.stop()
		return nil, err
	}
	p.user, p.pass = tok.ID, tok.Secret
	return p, nil
}

func (p *edgecaProc) stop() {
	p.cancel()
	_ = p.cmd.Wait()
}

func (p *edgecaProc) target() target {
	return target{name: "edgeca", addr: p.addr, roots: p.roots, user: p.user, pass: p.pass, cpu: func() (time.Duration, error) { return procCPU(p.cmd.Process.Pid) }}
}

// procCPU is a process's user+system CPU time from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime+stime out of a /proc/PID/stat line.
func parseStatCPU(s string) (time.Duration, error) {
	// The command name (field 2) may hold spaces and parentheses: count
	// from after its last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc stat line without a command name: %q", s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat line with %d fields after the command name: %q", len(f), s)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc stat line: %w", err)
	}
	const clkTck = 100 // USER_HZ on every Linux this runs on
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// peer is GlobalSign's EST server with a Go x509 CA that stores nothing.
type peer struct {
	srv  *http.Server
	addr string
	root *x509.Certificate
}

const (
	peerUser = "bench"
	peerPass = "bench-password-0123456789abcdef"
)

func startPeer() (*peer, error) {
	ca, err := newPeerCA()
	if err != nil {
		return nil, err
	}
	router, err := est.NewRouter(&est.ServerConfig{
		CA:      ca,
		Timeout: 30 * time.Second,
		CheckBasicAuth: func(_ context.Context, _ *http.Request, _, u, p string) error {
			if subtle.ConstantTimeCompare([]byte(u), []byte(peerUser))&subtle.ConstantTimeCompare([]byte(p), []byte(peerPass)) != 1 {
				return errors.New("bad credentials")
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	sk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	leaf, err := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "peer EST server"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca.inter, &sk.PublicKey, ca.interKey)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler:           router,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw, ca.inter.Raw}, PrivateKey: sk}}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go srv.ServeTLS(ln, "", "")
	return &peer{srv: srv, addr: ln.Addr().String(), root: ca.root}, nil
}

// runPeer is the peer's process: it serves until ctx is done, having
// written its address and root (PEM) into dir.
func runPeer(ctx context.Context, dir string) error {
	p, err := startPeer()
	if err != nil {
		return err
	}
	defer p.srv.Close()
	for _, f := range []struct{ name, body string }{
		{"root.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.root.Raw}))},
		{"addr", p.addr + "\n"}, // last: its presence says the peer is up
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.body), 0o600); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

// peerProc is the peer running as a process of its own (this program
// with -serve-peer), so that its CPU is measured as edgeca's is.
type peerProc struct {
	cmd    *exec.Cmd
	addr   string
	roots  *x509.CertPool
	cancel context.CancelFunc
}

func startPeerProc(ctx context.Context, dir string) (*peerProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(sctx, self, "-serve-peer", dir)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	logs := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	p := &peerProc{cmd: cmd, cancel: cancel}
	addr, err := waitFile(filepath.Join(dir, "addr"), logs)
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("peer: %w", err)
	}
	p.addr = addr
	rootPEM, err := os.ReadFile(filepath.Join(dir, "root.pem"))
	if err != nil {
		p.stop()
		return nil, err
	}
	p.roots = x509.NewCertPool()
	if !p.roots.AppendCertsFromPEM(rootPEM) {
		p.stop()
		return nil, errors.New("peer: no root in root.pem")
	}
	return p, nil
}

func (p *peerProc) stop() {
	p.cancel()
	_ = p.cmd.Wait()
}

func (p *peerProc) target() target {
	return target{name: "peer", addr: p.addr, roots: p.roots, user: peerUser, pass: peerPass, cpu: func() (time.Duration, error) { return procCPU(p.cmd.Process.Pid) }}
}

// waitFile waits (polling, with a deadline) for a process to write a
// one-line file, and returns the line.
func waitFile(path string, logs *bytes.Buffer) (string, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			return strings.TrimSpace(string(b)), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s not written: %v\n%s", path, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond) // polling for the file, with a deadline
	}
}

// peerCA is the peer's CA: a P-256 root and intermediate, as edgeca's, and
// 24-hour client certificates with the CSR's subject. It keeps nothing.
type peerCA struct {
	root, inter *x509.Certificate
	interKey    *ecdsa.PrivateKey
}

func newPeerCA() (*peerCA, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	root, err := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "peer bench root"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, nil, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	inter, err := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "peer bench issuing CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, root, &interKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	return &peerCA{root: root, inter: inter, interKey: interKey}, nil
}

func sign(tmpl, parent *x509.Certificate, pub any, key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

type estError struct {
	status int
	msg    string
}

func (e estError) StatusCode() int { return e.status }
func (e estError) Error() string   { return e.msg }

func (ca *peerCA) CACerts(context.Context, string, *http.Request) ([]*x509.Certificate, error) {
	return []*x509.Certificate{ca.inter, ca.root}, nil
}

func (ca *peerCA) CSRAttrs(context.Context, string, *http.Request) (est.CSRAttrs, error) {
	return est.CSRAttrs{}, nil
}

// Enroll does not check the CSR's signature: GlobalSign's server has
// (readCSRRequest with checkSignature, before it calls the CA), and a
// second check would charge the peer twice for it.
func (ca *peerCA) Enroll(_ context.Context, csr *x509.CertificateRequest, _ string, _ *http.Request) (*x509.Certificate, error) {
	now := time.Now()
	c, err := sign(&x509.Certificate{Subject: csr.Subject, URIs: csr.URIs, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca.inter, csr.PublicKey, ca.interKey)
	if err != nil {
		return nil, estError{http.StatusBadRequest, "issue: " + err.Error()}
	}
	return c, nil
}

func (ca *peerCA) Reenroll(ctx context.Context, _ *x509.Certificate, csr *x509.CertificateRequest, aps string, r *http.Request) (*x509.Certificate, error) {
	return ca.Enroll(ctx, csr, aps, r)
}

func (ca *peerCA) ServerKeyGen(context.Context, *x509.CertificateRequest, string, *http.Request) (*x509.Certificate, []byte, error) {
	return nil, nil, estError{http.StatusNotImplemented, "serverkeygen is not offered"}
}

func (ca *peerCA) TPMEnroll(context.Context, *x509.CertificateRequest, []*x509.Certificate, []byte, []byte, string, *http.Request) ([]byte, []byte, []byte, error) {
	return nil, nil, nil, estError{http.StatusNotImplemented, "tpmenroll is not offered"}
}

// clientKind is one of the two clients.
type clientKind string

const (
	deviceClient     clientKind = "device net/http"
	globalsignClient clientKind = "globalsign est.Client"
)

// result is one run.
type result struct {
	rate      float64
	p50, p99  time.Duration
	serverCPU time.Duration // per enrollment
}

// enrollerFor is kind's enrollment against srv, for the first n ids; for
// step-ca it mints their tokens first.
func enrollerFor(kind clientKind, srv target, id func(int) string, n int) (func(context.Context, string) error, error) {
	if srv.mint != nil {
		if kind != deviceClient {
			return nil, fmt.Errorf("%s cannot drive %s", kind, srv.name)
		}
		tokens := make(map[string]string, n)
		for i := range n {
			tok, err := srv.mint(id(i))
			if err != nil {
				return nil, fmt.Errorf("token for %s: %w", id(i), err)
			}
			tokens[id(i)] = tok
		}
		return stepcaEnroller(srv, tokens), nil
	}
	if kind == globalsignClient {
		return globalsignEnroller(srv), nil
	}
	return deviceEnroller(srv), nil
}

// drive runs n enrollments of fresh device ids with concurrency workers.
// cpu (nil: not measured) is the server's CPU clock.
func drive(ctx context.Context, enroll func(context.Context, string) error, id func(int) string, n, concurrency int, cpu func() (time.Duration, error)) (result, error) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var srv0 time.Duration
	if cpu != nil {
		var err error
		if srv0, err = cpu(); err != nil {
			return result{}, err
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := enroll(ctx, id(i)); err != nil {
					once.Do(func() { firstErr = fmt.Errorf("enrollment %d: %w", i, err); cancel() })
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return result{}, firstErr
	}
	res := result{rate: float64(n) / elapsed.Seconds()}
	if cpu != nil {
		srv1, err := cpu()
		if err != nil {
			return result{}, err
		}
		res.serverCPU = (srv1 - srv0) / time.Duration(n)
	}
	slices.Sort(lat)
	res.p50, res.p99 = lat[n/2], lat[min(n-1, n*99/100)]
	return res, nil
}

// newCSR makes a fresh P-256 key and a CSR for id, as a device does.
func newCSR(id string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	return key, der, err
}

// deviceEnroller is a device's enrollment over net/http: a new TLS
// connection (TLS 1.2+, the server verified against the pinned root), a
// POST of the base64 CSR with Basic credentials, and the PKCS#7 answer
// decoded and checked to hold a certificate for the key.
func deviceEnroller(srv target) func(context.Context, string) error {
	client := deviceHTTPClient(srv.roots)
	url := "https://" + srv.addr + "/.well-known/est/simpleenroll"
	return func(ctx context.Context, id string) error {
		key, der, err := newCSR(id)
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(base64.StdEncoding.EncodeToString(der)))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/pkcs10")
		req.Header.Set("Content-Transfer-Encoding", "base64")
		req.SetBasicAuth(srv.user, srv.pass)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
		}
		p7der, err := base64.StdEncoding.DecodeString(string(bytes.Join(bytes.Fields(body), nil)))
		if err != nil {
			return fmt.Errorf("answer: %w", err)
		}
		p7, err := pkcs7.Parse(p7der)
		if err != nil {
			return fmt.Errorf("answer: %w", err)
		}
		return checkCert(p7.Certificates, key)
	}
}

// deviceHTTPClient is a device's HTTP client: a new TLS connection (full
// handshake) per request, the server verified against roots.
func deviceHTTPClient(roots *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: deviceTLS(roots), DisableKeepAlives: true}}
}

func deviceTLS(roots *x509.CertPool) *tls.Config {
	// edgeagent's key exchanges (enroll.KeyExchanges(false)): X25519
	// first, no post-quantum hybrid unless configured.
	return &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}}
}

// globalsignEnroller is GlobalSign's own client's Enroll.
func globalsignEnroller(srv target) func(context.Context, string) error {
	c := &est.Client{Host: srv.addr, ExplicitAnchor: srv.roots, Username: srv.user, Password: srv.pass, DisableKeepAlives: true}
	return func(ctx context.Context, id string) error {
		key, der, err := newCSR(id)
		if err != nil {
			return err
		}
		r, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return err
		}
		cert, err := c.Enroll(ctx, r)
		if err != nil {
			return err
		}
		return checkCert([]*x509.Certificate{cert}, key)
	}
}

func checkCert(certs []*x509.Certificate, key *ecdsa.PrivateKey) error {
	if len(certs) == 0 {
		return errors.New("answer holds no certificate")
	}
	if pub, ok := certs[0].PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return errors.New("the certificate is not for the CSR's key")
	}
	return nil
}
