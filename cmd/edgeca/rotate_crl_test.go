package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/revocation/mosquittosync"
)

// TestRetiringIntermediateCRL: after a rotation the CA keeps signing a
// CRL for the retiring intermediate (/crl/retiring.pem), so that openssl
// with CRL checks (what mosquitto's crlfile does) still accepts a device
// certificate it issued, and refuses one revoked after the rotation;
// without that CRL it refuses every such certificate ("unable to get
// certificate CRL").
func TestRetiringIntermediateCRL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed; `make test` installs it (scripts/test-deps.sh)")
	}
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "init", "--dir", dir)
	crlURL := "--crl-url=http://127.0.0.1:1" // the same distribution point across restarts
	u := serveStoppable(t, dir, crlURL)
	tok := newToken(t, dir, "--url", u.url, "--uses", "2", "--pattern", "dev-*")
	root := readRoot(t, dir)
	a, err := enrollDevice(u.url, tok, root, "dev-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := enrollDevice(u.url, tok, root, "dev-b")
	if err != nil {
		t.Fatal(err)
	}
	u.stop()
	mustRun(t, "rotate", "intermediate", "--dir", dir)
	u = serveStoppable(t, dir, crlURL)

	work := t.TempDir()
	bundle := filepath.Join(work, "bundle.pem")
	mustRun(t, "cacerts", "--dir", dir, "--out", bundle)
	leafFile := func(d *testDevice) string {
		p := filepath.Join(work, d.id+".pem")
		if err := os.WriteFile(p, pemOf(d.chain[0]), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	retiring := func() []byte {
		resp, err := httpsClient([]*x509.Certificate{root}, nil).Get(u.url + "/crl/retiring.pem")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /crl/retiring.pem: %d %s", resp.StatusCode, body)
		}
		return body
	}
	verify := func(crls []byte, leaf string) (bool, string) {
		f := filepath.Join(work, "crls.pem")
		if err := os.WriteFile(f, crls, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("openssl", "verify", "-crl_check", "-CAfile", bundle, "-CRLfile", f, leaf).CombinedOutput()
		return err == nil, string(out)
	}
	current := []byte(mustRun(t, "crl", "--dir", dir))
	if ok, out := verify(current, leafFile(b)); ok {
		t.Errorf("openssl accepted a certificate of the retiring intermediate with no CRL for it: %s", out)
	}
	if ok, out := verify(append(current, retiring()...), leafFile(b)); !ok {
		t.Fatalf("with the retiring intermediate's CRL, openssl refuses its certificate: %s", out)
	}
	mustRun(t, "device", "revoke", "--dir", dir, "dev-a")
	serial := a.chain[0].SerialNumber
	deadline := time.Now().Add(20 * time.Second)
	for {
		rest, listed := retiring(), false
		for {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			crl, err := x509.ParseRevocationList(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if err := crl.CheckSignatureFrom(mustCerts(t, filepath.Join(dir, "previous.pem"))[0]); err != nil {
				t.Fatalf("retiring CRL not signed by the retiring intermediate: %v", err)
			}
			for _, e := range crl.RevokedCertificateEntries {
				listed = listed || e.SerialNumber.Cmp(serial) == 0
			}
		}
		if listed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the revoked certificate of the retiring intermediate never reached its CRL")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// mosquitto's crlfile as edgeca mosquitto-sync writes it.
	mustRun(t, "enforcer", "create", "--dir", dir, "--out", work, "gw-1")
	cert, err := tls.LoadX509KeyPair(filepath.Join(work, "gw-1.pem"), filepath.Join(work, "gw-1-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 4)
	signal.Notify(hup, syscall.SIGHUP) // the "broker" the syncer reloads is this process
	defer signal.Stop(hup)
	crlFile := filepath.Join(work, "mosquitto-crl.pem")
	syncer, err := mosquittosync.New(mosquittosync.Options{CAURL: u.url, CRLFile: crlFile, Pid: func() (int, error) { return os.Getpid(), nil },
		TLS: &tls.Config{RootCAs: pool(root), Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	if err := syncer.UpdateCRL(context.Background()); err != nil {
		t.Fatal(err)
	}
	crls, err := os.ReadFile(crlFile)
	if err != nil {
		t.Fatal(err)
	}
	if ok, out := verify(crls, leafFile(a)); ok || !strings.Contains(out, "revoked") {
		t.Errorf("openssl with mosquitto-sync's crlfile on the revoked certificate of the retiring intermediate: %v %s", ok, out)
	}
	if ok, out := verify(crls, leafFile(b)); !ok {
		t.Errorf("openssl with mosquitto-sync's crlfile refuses the other device's certificate: %s", out)
	}
	u.stop()
}
