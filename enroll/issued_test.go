package enroll

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/testpki"
)

// TestCheckIssuedWith: the answer to enroll or reenroll may hold the leaf
// only (RFC 7030 §4.2.3) and the chain is then built from /cacerts; a
// renewal under a rotated intermediate verifies through the fresh
// /cacerts, and the bundle kept ends at a trust anchor.
func TestCheckIssuedWith(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	other := newPKI(t, "127.0.0.1")
	inter2CA := p.rootCA.Intermediate(t, "rotated issuing")
	inter2 := inter2CA.Cert
	dev := mustKey(t)
	uri, _ := url.Parse(DeviceURIPrefix + "dev-1")
	tmpl := func() testpki.Leaf {
		return testpki.Leaf{Subject: pkix.Name{CommonName: "dev-1", Organization: []string{"Added by the CA"}}, URIs: []*url.URL{uri}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	}
	leaf1 := issue(t, p.interCA, tmpl(), &dev.PublicKey)
	leaf2 := issue(t, inter2CA, tmpl(), &dev.PublicKey)
	foreign := issue(t, other.interCA, tmpl(), &dev.PublicKey)
	certs := func(c ...*x509.Certificate) []*x509.Certificate { return c }
	cases := []struct {
		name           string
		answer         []*x509.Certificate
		fresh, current []*x509.Certificate
		wantChain      []*x509.Certificate
		wantBundle     []*x509.Certificate
		wantErr        bool
	}{
		{name: "leaf only, chain from cacerts", answer: certs(leaf1), current: certs(p.inter, p.root), wantChain: certs(leaf1, p.inter), wantBundle: certs(p.inter, p.root)},
		{name: "leaf and chain in the answer", answer: certs(leaf1, p.inter, p.root), current: certs(p.root), wantChain: certs(leaf1, p.inter), wantBundle: certs(p.root)},
		{name: "chain in the answer, out of order", answer: certs(p.inter, leaf1), current: certs(p.root), wantChain: certs(leaf1, p.inter), wantBundle: certs(p.root)},
		{name: "renewal, leaf only, fresh cacerts", answer: certs(leaf1), fresh: certs(p.inter, p.root), current: certs(p.inter, p.root), wantChain: certs(leaf1, p.inter), wantBundle: certs(p.inter, p.root)},
		{name: "renewal under a rotated intermediate", answer: certs(leaf2), fresh: certs(inter2, p.root), current: certs(p.inter, p.root), wantChain: certs(leaf2, inter2), wantBundle: certs(inter2, p.root)},
		{name: "rotated intermediate, root not published", answer: certs(leaf2), fresh: certs(inter2), current: certs(p.inter, p.root), wantChain: certs(leaf2, inter2), wantBundle: certs(inter2, p.root)},
		{name: "rotated intermediate unknown", answer: certs(leaf2), current: certs(p.inter, p.root), wantErr: true},
		{name: "issued under another CA", answer: certs(foreign), fresh: certs(p.inter, p.root), current: certs(p.inter, p.root), wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			chain, bundle, err := CheckIssuedWith(c.answer, dev.Public(), "dev-1", c.fresh, c.current, time.Now())
			if c.wantErr {
				if !errors.Is(err, ErrResponse) {
					t.Fatalf("err = %v, want ErrResponse", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !sameCerts(chain, c.wantChain) {
				t.Fatalf("chain %v, want %v", names(chain), names(c.wantChain))
			}
			if !sameCerts(bundle, c.wantBundle) {
				t.Fatalf("bundle %v, want %v", names(bundle), names(c.wantBundle))
			}
		})
	}
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

func names(cs []*x509.Certificate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Subject.CommonName
	}
	return out
}
