package mosquittosync

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestUpdateCRL: the CRL is written (with the extra CRLs after it) and
// mosquitto signalled only when the CA's CRL number changes.
func TestUpdateCRL(t *testing.T) {
	issuer := testpki.New(t, "ca")
	var number atomic.Int64
	number.Store(1)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != CRLPath {
			http.NotFound(w, r)
			return
		}
		crl, err := issuer.CRLDER(number.Load())
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Write(crl)
	}))
	defer srv.Close()

	hup := make(chan os.Signal, 4)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	dir := t.TempDir()
	extra := filepath.Join(dir, "other.crl")
	if err := os.WriteFile(extra, []byte("-----BEGIN X509 CRL-----\nb3RoZXI=\n-----END X509 CRL-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	crlFile := filepath.Join(dir, "crl.pem")
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig
	s, err := New(Options{CAURL: srv.URL, TLS: &tls.Config{RootCAs: cfg.RootCAs, Certificates: []tls.Certificate{{}}}, CRLFile: crlFile, ExtraCRLs: []string{extra},
		Pid: func() (int, error) { return os.Getpid(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	got := func() int {
		n := 0
		for {
			select {
			case <-hup:
				n++
			case <-time.After(200 * time.Millisecond):
				return n
			}
		}
	}
	for _, step := range []struct {
		name   string
		number int64
		hups   int
	}{
		{"first CRL", 1, 1},
		{"same number: nothing", 1, 0},
		{"new number", 2, 1},
	} {
		number.Store(step.number)
		if err := s.UpdateCRL(context.Background()); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if n := got(); n != step.hups {
			t.Fatalf("%s: %d SIGHUPs, want %d", step.name, n, step.hups)
		}
	}
	b, err := os.ReadFile(crlFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "X509 CRL" || !strings.Contains(string(rest), "b3RoZXI=") {
		t.Fatalf("crlfile: %q", b)
	}
	if crl, err := x509.ParseRevocationList(blk.Bytes); err != nil || crl.Number.Int64() != 2 {
		t.Fatalf("crlfile's CRL: %v", err)
	}
}
