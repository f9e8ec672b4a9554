package agent

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestWithPinned: cacerts must contain the pinned certificate or chain to
// it; in the second case the pinned root completes the bundle.
func TestWithPinned(t *testing.T) {
	rootCA := testpki.New(t, "root")
	root, inter, other := rootCA.Cert, rootCA.Intermediate(t, "issuing").Cert, testpki.New(t, "other root").Cert
	now := time.Now()
	cases := []struct {
		name   string
		bundle []*x509.Certificate
		pinned *x509.Certificate
		want   []*x509.Certificate
		err    string
	}{
		{"pinned root published", []*x509.Certificate{inter, root}, root, []*x509.Certificate{inter, root}, ""},
		{"pinned intermediate published", []*x509.Certificate{inter, root}, inter, []*x509.Certificate{inter, root}, ""},
		{"root not published", []*x509.Certificate{inter}, root, []*x509.Certificate{inter, root}, ""},
		{"unrelated CA published", []*x509.Certificate{inter, other}, root, nil, `"CN=other root"`},
		{"other CA entirely", []*x509.Certificate{other}, root, nil, "neither the pinned"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := withPinned(c.bundle, c.pinned, now)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "--ca-bundle") {
					t.Fatalf("err = %v, want it to contain %q and advice", err, c.err)
				}
				return
			}
			if err != nil || len(got) != len(c.want) {
				t.Fatalf("got %d certs, %v", len(got), err)
			}
			for i := range got {
				if !got[i].Equal(c.want[i]) {
					t.Fatalf("cert %d is %s", i, got[i].Subject)
				}
			}
		})
	}
}

func TestIdentityAccessors(t *testing.T) {
	rootCA := testpki.New(t, "root")
	root, leaf := rootCA.Cert, rootCA.Issue(t, testpki.Leaf{CN: "dev-1"}).Cert
	id := &Identity{Meta: Meta{DeviceID: "dev-1"}, Chain: []*x509.Certificate{leaf}, CABundle: []*x509.Certificate{root}}
	if id.NotAfter() != leaf.NotAfter || id.NotBefore() != leaf.NotBefore || id.Issuer() != "CN=root" {
		t.Fatalf("accessors: %v %v %q", id.NotBefore(), id.NotAfter(), id.Issuer())
	}
	if !strings.HasPrefix(id.Summary(), "device dev-1 serial ") {
		t.Fatalf("summary %q", id.Summary())
	}
	other := testpki.New(t, "tls root").Cert
	id.ServerRoots = []*x509.Certificate{other}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.ESTPool()}); err != nil {
		t.Fatalf("EST pool lacks the CA bundle: %v", err)
	}
	if id.ESTPool().Equal(id.CAPool()) {
		t.Fatal("EST pool lacks the server roots")
	}
}

// TestLoadIdentityBadMeta: identity.json that is not JSON, or lacks what
// renewal needs, is an error naming the file.
func TestLoadIdentityBadMeta(t *testing.T) {
	for _, c := range []struct{ name, body, want string }{
		{"not json", "{device_id", IdentityFile},
		{"no server", `{"device_id":"d"}`, "lacks device_id or server"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			rootCA := testpki.New(t, "root")
			root, leaf := rootCA.Cert, rootCA.Issue(t, testpki.Leaf{CN: "dev-1"}).Cert
			if err := saveIdentity(dir, Meta{DeviceID: "dev-1", Server: "https://ca"}, []*x509.Certificate{leaf}, []*x509.Certificate{root}, nil); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, IdentityFile), []byte(c.body), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadIdentity(dir, nil); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}
