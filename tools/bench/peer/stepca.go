package main

// The step-ca row: smallstep's step-ca (pinned in tools/bench/stepca, a
// module of its own), a CA that keeps what it issues, built and run as a
// process beside edgeca and driven by the device client speaking
// step-ca's protocol: one POST /1.0/sign of a PEM CSR and a one-time token
// (an ES256 JWT of a JWK provisioner whose key this program holds).

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"
)

const (
	stepcaModule      = "github.com/smallstep/certificates"
	stepcaProvisioner = "bench"
	// The badger whose SyncWrites default the output states (read from
	// its source, see stepcaStores).
	stepcaBadgerChecked = "v1.6.2"
)

// buildStepca builds step-ca's command from the module that pins it.
func buildStepca(ctx context.Context, moduleDir, bin string) error {
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-trimpath", "-o", bin, stepcaModule+"/cmd/step-ca")
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build step-ca in %s: %w\n%s", moduleDir, err, out)
	}
	return nil
}

// stepcaVersions reads the versions of step-ca and of the badger it links
// out of a built binary.
func stepcaVersions(bin string) (stepca, badger string, err error) {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "", "", fmt.Errorf("step-ca build info: %w", err)
	}
	// Built from tools/bench/stepca, step-ca's module is the binary's
	// main module (the one holding the main package), not a dependency.
	for _, d := range append([]*debug.Module{&info.Main}, info.Deps...) {
		if d.Replace != nil {
			d = d.Replace
		}
		switch d.Path {
		case stepcaModule:
			stepca = d.Version
		case "github.com/dgraph-io/badger":
			badger = d.Version
		}
	}
	if stepca == "" {
		return "", "", fmt.Errorf("%s does not link %s", bin, stepcaModule)
	}
	return stepca, badger, nil
}

// stepcaStores is what the output says step-ca stores and syncs, for the
// badger version found in the binary. The claim is from the source:
// smallstep/nosql v0.8.0 opens badger (v1, the "badger" type) with
// badger.DefaultOptions, whose SyncWrites is true; badger v1.6.2 then opens
// its value log with O_DSYNC on Linux (y/file_dsync.go), so the one write(2)
// of each batch of commits returns only once on disk. Per enrollment
// step-ca commits twice: the used token (UseToken, a compare-and-swap on
// the jti) and the certificate with its provisioner (StoreCertificateChain).
func stepcaStores(version, badger string) string {
	s := fmt.Sprintf("step-ca %s checks the one-time token (ES256, JWK provisioner) and commits two badger %s transactions before each answer: the token's jti as used, and the issued certificate with its provisioner; ", version, badger)
	if badger == stepcaBadgerChecked {
		s += "SyncWrites is on (badger's default, nosql keeps it): the value log is opened O_DSYNC, so each commit is on disk before the answer, concurrent commits sharing a write (group commit). "
	} else {
		s += fmt.Sprintf("whether it syncs was checked for badger %s only: re-read badger's SyncWrites for this one. ", stepcaBadgerChecked)
	}
	return s + "It keeps no device record and no audit table; it logs every request (text, to a file: it has no log level; edgeca runs at warn)."
}

// jwk is a P-256 public key as a JSON Web Key (RFC 7517).
type jwk struct {
	Use string `json:"use"`
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Crv string `json:"crv"`
	Alg string `json:"alg"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// ecJWK is pub as a JWK whose kid is its RFC 7638 thumbprint, as the step
// CLI names provisioner keys.
func ecJWK(pub *ecdsa.PublicKey) (jwk, error) {
	if pub.Curve != elliptic.P256() {
		return jwk{}, errors.New("provisioner key: want P-256")
	}
	k, err := pub.ECDH()
	if err != nil {
		return jwk{}, fmt.Errorf("provisioner key: %w", err)
	}
	pt := k.Bytes() // 0x04 || X || Y
	b64 := base64.RawURLEncoding.EncodeToString
	j := jwk{Use: "sig", Kty: "EC", Crv: "P-256", Alg: "ES256", X: b64(pt[1:33]), Y: b64(pt[33:65])}
	// RFC 7638: the required members, in lexical order, no spaces.
	sum := sha256.Sum256([]byte(`{"crv":"P-256","kty":"EC","x":"` + j.X + `","y":"` + j.Y + `"}`))
	j.Kid = b64(sum[:])
	return j, nil
}

// stepcaConfig is step-ca's ca.json for a CA whose files are in dir,
// listening on addr: the root, intermediate and its key as written by
// writeStepcaFiles, badger in dir/db (step-ca's default database), one JWK
// provisioner with key prov issuing 24-hour certificates, and step-ca's
// default TLS options (1.2 to 1.3, ECDHE AEAD suites).
func stepcaConfig(dir, addr string, prov jwk) ([]byte, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("step-ca address: %w", err)
	}
	type claims struct {
		Min     string `json:"minTLSCertDuration"`
		Max     string `json:"maxTLSCertDuration"`
		Default string `json:"defaultTLSCertDuration"`
	}
	type provisioner struct {
		Type   string `json:"type"`
		Name   string `json:"name"`
		Key    jwk    `json:"key"`
		Claims claims `json:"claims"`
	}
	cfg := struct {
		Root     string   `json:"root"`
		Crt      string   `json:"crt"`
		Key      string   `json:"key"`
		Address  string   `json:"address"`
		DNSNames []string `json:"dnsNames"`
		Logger   struct {
			Format string `json:"format"`
		} `json:"logger"`
		DB struct {
			Type       string `json:"type"`
			DataSource string `json:"dataSource"`
		} `json:"db"`
		Authority struct {
			Provisioners []provisioner `json:"provisioners"`
		} `json:"authority"`
	}{
		Root: filepath.Join(dir, "root.pem"), Crt: filepath.Join(dir, "intermediate.pem"), Key: filepath.Join(dir, "intermediate_key.pem"),
		Address: addr, DNSNames: []string{host},
	}
	cfg.Logger.Format = "text"
	cfg.DB.Type, cfg.DB.DataSource = "badger", filepath.Join(dir, "db")
	cfg.Authority.Provisioners = []provisioner{{Type: "JWK", Name: stepcaProvisioner, Key: prov,
		Claims: claims{Min: "5m", Max: "24h", Default: "24h"}}}
	return json.MarshalIndent(cfg, "", "  ")
}

// ottClaims are the claims of step-ca's one-time token, as `step ca token`
// writes them.
type ottClaims struct {
	Issuer    string   `json:"iss"`
	Audience  string   `json:"aud"`
	Subject   string   `json:"sub"`
	SANs      []string `json:"sans"`
	ID        string   `json:"jti"`
	NotBefore int64    `json:"nbf"`
	IssuedAt  int64    `json:"iat"`
	Expiry    int64    `json:"exp"`
}

// mintOTT is a one-time token for sub (its only SAN), signed ES256 by key
// (JWS compact serialization, the signature r||s). Written by hand with the
// standard library rather than linking go-jose into this module: it is
// twenty lines, and step-ca's own go-jose verifies every token in the run.
func mintOTT(key *ecdsa.PrivateKey, kid, aud, sub string, now time.Time, ttl time.Duration) (string, error) {
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	header, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{"ES256", kid, "JWT"})
	if err != nil {
		return "", err
	}
	claims, err := json.Marshal(ottClaims{Issuer: stepcaProvisioner, Audience: aud, Subject: sub, SANs: []string{sub}, ID: hex.EncodeToString(jti),
		NotBefore: now.Unix(), IssuedAt: now.Unix(), Expiry: now.Add(ttl).Unix()})
	if err != nil {
		return "", err
	}
	b64 := base64.RawURLEncoding.EncodeToString
	input := b64(header) + "." + b64(claims)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + b64(sig), nil
}

// stepcaProc is a running step-ca.
type stepcaProc struct {
	cmd             *exec.Cmd
	done            chan struct{} // closed once cmd has exited
	addr            string
	roots           *x509.CertPool
	key             *ecdsa.PrivateKey // the provisioner's
	kid             string
	version, badger string
	cancel          context.CancelFunc
}

// errNotServing is a step-ca that is not serving its address: another
// process took the port between freeAddr and step-ca's bind (step-ca then
// neither exits nor logs it: it waits for its other servers), so another
// port is tried.
var errNotServing = errors.New("step-ca is not serving its address")

// startStepca writes a CA into dir and runs step-ca on it. ca.json needs a
// fixed address, so a free port is found by listening on :0 and closing;
// if something takes it before step-ca binds it, another is tried.
const stepcaAttempts = 4

func startStepca(ctx context.Context, bin, dir string) (*stepcaProc, error) {
	version, badger, err := stepcaVersions(bin)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := newPeerCA() // a P-256 root and intermediate, as the others'
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.interKey)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name  string
		block *pem.Block
	}{
		{"root.pem", &pem.Block{Type: "CERTIFICATE", Bytes: ca.root.Raw}},
		{"intermediate.pem", &pem.Block{Type: "CERTIFICATE", Bytes: ca.inter.Raw}},
		{"intermediate_key.pem", &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), pem.EncodeToMemory(f.block), 0o600); err != nil {
			return nil, err
		}
	}
	provKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	prov, err := ecJWK(&provKey.PublicKey)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.root)
	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		cfg, err := stepcaConfig(dir, addr, prov)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, "ca.json"), cfg, 0o600); err != nil {
			return nil, err
		}
		p := &stepcaProc{addr: addr, roots: roots, key: provKey, kid: prov.Kid, version: version, badger: badger}
		err = p.start(ctx, bin, dir, attempt)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, errNotServing) || attempt == stepcaAttempts {
			return nil, err
		}
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// start runs step-ca and waits (polling /health, with a deadline) until it
// answers over TLS verified against this run's root, or has exited. A
// server there that fails that verification, or silence until the
// deadline, is another process on the port (errNotServing).
func (p *stepcaProc) start(ctx context.Context, bin, dir string, attempt int) error {
	// A file, not a pipe into this process: copying step-ca's request log
	// would cost the clients' CPU.
	logPath := filepath.Join(dir, fmt.Sprintf("step-ca-%d.log", attempt))
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child holds its own descriptor
	sctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(sctx, bin, filepath.Join(dir, "ca.json"))
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Env = append(os.Environ(), "STEPPATH="+dir, "NO_COLOR=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		cancel()
		return err
	}
	p.cmd, p.cancel, p.done = cmd, cancel, make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.done) }()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: deviceTLS(p.roots), DisableKeepAlives: true}}
	const wait = 30 * time.Second
	deadline := time.Now().Add(wait)
	for {
		resp, err := client.Get("https://" + p.addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			p.stop()
			return fmt.Errorf("on %s another server answers (%v): %w", p.addr, err, errNotServing)
		}
		select {
		case <-p.done:
			cancel()
			logs, _ := os.ReadFile(logPath)
			return fmt.Errorf("step-ca exited before answering on %s:\n%s", p.addr, logs)
		default:
		}
		if time.Now().After(deadline) {
			p.stop()
			logs, _ := os.ReadFile(logPath)
			return fmt.Errorf("no answer on %s after %v (last: %v): %w\n%s", p.addr, wait, err, errNotServing, logs)
		}
		time.Sleep(20 * time.Millisecond) // polling for readiness, with a deadline
	}
}

func (p *stepcaProc) stop() {
	p.cancel()
	<-p.done
}

func (p *stepcaProc) target() target {
	aud := "https://" + p.addr + "/1.0/sign"
	return target{name: "step-ca", addr: p.addr, roots: p.roots,
		cpu: func() (time.Duration, error) { return procCPU(p.cmd.Process.Pid) },
		// An hour: longer than any run, as an operator's token outlives
		// the device's trip to the CA.
		mint: func(id string) (string, error) { return mintOTT(p.key, p.kid, aud, id, time.Now(), time.Hour) },
	}
}

// stepcaEnroller is the device client against step-ca: the same work as
// deviceEnroller (a fresh P-256 key and CSR, a new TLS connection verified
// against the root, one POST, the certificate parsed and checked to be for
// the key) in step-ca's protocol, with a token minted beforehand per id.
func stepcaEnroller(srv target, tokens map[string]string) func(context.Context, string) error {
	client := deviceHTTPClient(srv.roots)
	url := "https://" + srv.addr + "/1.0/sign"
	return func(ctx context.Context, id string) error {
		ott, ok := tokens[id]
		if !ok {
			return fmt.Errorf("no token minted for %s", id)
		}
		key, der, err := newCSR(id)
		if err != nil {
			return err
		}
		body, err := json.Marshal(struct {
			CSR string `json:"csr"`
			OTT string `json:"ott"`
		}{string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), ott})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		ans, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(ans))
		}
		cert, err := parseSignAnswer(ans)
		if err != nil {
			return err
		}
		return checkCert([]*x509.Certificate{cert}, key)
	}
}

// parseSignAnswer is the certificate ("crt", PEM) of step-ca's answer to
// /1.0/sign.
func parseSignAnswer(body []byte) (*x509.Certificate, error) {
	var ans struct {
		Crt string `json:"crt"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("answer: %w", err)
	}
	block, _ := pem.Decode([]byte(ans.Crt))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("answer: no PEM certificate in crt (%.80q)", strings.TrimSpace(ans.Crt))
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("answer: %w", err)
	}
	return cert, nil
}
