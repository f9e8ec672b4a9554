package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca"
	enrollpkg "github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// testDevice is a device as the agent keeps it: key, chain and the CA
// bundle it trusts, renewed the agent's way (fresh /cacerts over TLS the
// current bundle authenticates, enrollpkg.CheckIssuedWith).
type testDevice struct {
	id     string
	key    *ecdsa.PrivateKey
	chain  []*x509.Certificate
	bundle []*x509.Certificate
}

func httpsClient(trust []*x509.Certificate, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	for _, c := range trust {
		pool.AddCert(c)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
}

func estCall(c *http.Client, method, u string, op string, body []byte, tok *token.Token) (int, []*x509.Certificate, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(est.EncodeBase64(body))
	}
	req, err := http.NewRequest(method, u+est.Path("", op), r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", est.MediaPKCS10)
	}
	if tok != nil {
		req.SetBasicAuth(tok.ID, tok.Secret)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, fmt.Errorf("%s %s: %d %s %v", method, op, resp.StatusCode, b, err)
	}
	raw, err := est.DecodeBase64(b)
	if err != nil {
		return 0, nil, err
	}
	certs, err := est.DecodeCertsOnly(raw)
	return resp.StatusCode, certs, err
}

func deviceCSR(key *ecdsa.PrivateKey, id string) ([]byte, error) {
	u, _ := url.Parse(ca.DeviceURIPrefix + id)
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}, URIs: []*url.URL{u}}, key)
}

// enrollDevice enrolls id with tok, trusting the pinned root only; it
// returns an error instead of failing (it runs on goroutines).
func enrollDevice(u string, tok token.Token, root *x509.Certificate, id string) (*testDevice, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := deviceCSR(key, id)
	if err != nil {
		return nil, err
	}
	c := httpsClient([]*x509.Certificate{root}, nil)
	_, fresh, err := estCall(c, http.MethodGet, u, est.OpCACerts, nil, nil)
	if err != nil {
		return nil, err
	}
	_, certs, err := estCall(c, http.MethodPost, u, est.OpSimpleEnroll, csr, &tok)
	if err != nil {
		return nil, err
	}
	chain, bundle, err := enrollpkg.CheckIssuedWith(certs, key.Public(), id, fresh, []*x509.Certificate{root}, time.Now())
	if err != nil {
		return nil, err
	}
	return &testDevice{id: id, key: key, chain: chain, bundle: bundle}, nil
}

// renew renews d at u as the agent does: /cacerts and simplereenroll over
// mutual TLS that d's current bundle authenticates.
func (d *testDevice) renew(u string) error {
	cert := &tls.Certificate{PrivateKey: d.key, Leaf: d.chain[0]}
	for _, c := range d.chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	c := httpsClient(d.bundle, cert)
	_, fresh, err := estCall(c, http.MethodGet, u, est.OpCACerts, nil, nil)
	if err != nil {
		return fmt.Errorf("renew %s: %w", d.id, err)
	}
	csr, err := deviceCSR(d.key, d.id)
	if err != nil {
		return err
	}
	_, certs, err := estCall(c, http.MethodPost, u, est.OpSimpleReenroll, csr, nil)
	if err != nil {
		return fmt.Errorf("renew %s: %w", d.id, err)
	}
	chain, bundle, err := enrollpkg.CheckIssuedWith(certs, d.key.Public(), d.id, fresh, d.bundle, time.Now())
	if err != nil {
		return fmt.Errorf("renew %s: %w", d.id, err)
	}
	d.chain, d.bundle = chain, bundle
	return nil
}

func readRoot(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	c, err := readPEMCerts(filepath.Join(dir, ca.RootCertFile))
	if err != nil || len(c) == 0 {
		t.Fatalf("read root: %v", err)
	}
	return c[0]
}

func readPEMCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

func newToken(t *testing.T, dir string, args ...string) token.Token {
	t.Helper()
	out := mustRun(t, append([]string{"token", "create", "--dir", dir}, args...)...)
	tok, err := token.Parse(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestBackupWhileEnrolling backs a SQLite CA up while enrollments stream
// into its running server, restores the backup into a new directory and
// serves from it: every enrollment answered before the backup began is
// there with the serial it was answered with, nothing is there that was
// not answered, the token's use count matches the devices it enrolled, and
// a device enrolled before the backup renews against the restored CA.
func TestBackupWhileEnrolling(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	u := serve(t, dir, "--health-listen", "off")
	tok := newToken(t, dir, "--url", u, "--uses", "100000", "--pattern", "dev-*")
	root := readRoot(t, dir)

	type answered struct {
		dev    *testDevice
		serial string
	}
	var mu sync.Mutex
	var got []answered
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d, err := enrollDevice(u, tok, root, fmt.Sprintf("dev-%d-%d", w, i))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				got = append(got, answered{d, ca.SerialHex(d.chain[0].SerialNumber)})
				mu.Unlock()
			}
		}()
	}
	waitFor := func(n int) {
		deadline := time.Now().Add(60 * time.Second)
		for {
			mu.Lock()
			k := len(got)
			mu.Unlock()
			if k >= n {
				return
			}
			select {
			case err := <-errs:
				t.Fatal(err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d enrollments answered", k)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(10)
	mu.Lock()
	before := append([]answered(nil), got...)
	mu.Unlock()
	backup := filepath.Join(t.TempDir(), "backup")
	out := mustRun(t, "backup", "--dir", dir, "--out", backup, "--json")
	waitFor(len(before) + 5) // enrollments went on during the backup
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}

	var m ca.Manifest
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("backup --json: %v\n%s", err, out)
	}
	if m.Store != "sqlite" || len(m.Files) < 4 {
		t.Fatalf("manifest: %+v", m)
	}
	for _, f := range m.Files {
		fi, err := os.Stat(filepath.Join(backup, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		if (strings.Contains(f.Name, "key") || f.Name == ca.DBFile) && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", f.Name, fi.Mode().Perm())
		}
	}
	// A backup never lands on an existing one.
	if code, _, errOut := edgeca(t, "backup", "--dir", dir, "--out", backup); code == 0 || !strings.Contains(errOut, "not empty") {
		t.Errorf("backup over a backup: %d %s", code, errOut)
	}

	restored := filepath.Join(t.TempDir(), "restored")
	mustRun(t, "restore", "--from", backup, "--dir", restored)
	if code, _, errOut := edgeca(t, "restore", "--from", backup, "--dir", restored); code == 0 || !strings.Contains(errOut, "--force") {
		t.Errorf("restore over a CA directory: %d %s", code, errOut)
	}
	mustRun(t, "restore", "--from", backup, "--dir", restored, "--force")

	var devs []deviceJSON
	if err := json.Unmarshal([]byte(mustRun(t, "device", "list", "--dir", restored, "--json")), &devs); err != nil {
		t.Fatal(err)
	}
	inBackup := map[string]string{}
	for _, d := range devs {
		inBackup[d.ID] = d.Serial
	}
	all := map[string]string{}
	mu.Lock()
	for _, a := range got {
		all[a.dev.id] = a.serial
	}
	mu.Unlock()
	for _, a := range before {
		if s, ok := inBackup[a.dev.id]; !ok || s != a.serial {
			t.Errorf("device %s answered (serial %s) before the backup: in the backup with serial %q", a.dev.id, a.serial, s)
		}
	}
	for id, s := range inBackup {
		if all[id] != s {
			t.Errorf("device %s (serial %s) is in the backup but was answered with %q", id, s, all[id])
		}
	}
	var toks []tokenJSON
	if err := json.Unmarshal([]byte(mustRun(t, "token", "list", "--dir", restored, "--json")), &toks); err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].Uses != len(devs) {
		t.Errorf("restored token uses %+v, want %d (the devices it enrolled)", toks, len(devs))
	}
	t.Logf("%d enrollments answered before the backup, %d in it, %d answered in all", len(before), len(devs), len(all))

	u2 := serve(t, restored, "--health-listen", "off")
	if err := before[0].dev.renew(u2); err != nil {
		t.Fatalf("a device enrolled before the backup renews against the restored CA: %v", err)
	}
}
