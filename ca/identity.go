package ca

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"slices"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// AuthChallenge is the WWW-Authenticate value of every 401.
const AuthChallenge = `Basic realm="edgeca", charset="UTF-8"`

// sameIdentity reports how a reenrollment CSR's Subject and SubjectAltName
// differ from the certificate being renewed (RFC 7030 §4.2.2: they MUST be
// identical). The Subject is compared as a distinguished name, not as
// bytes, so a CSR that encodes the same CN as a UTF8String where the
// certificate has a PrintableString is the same subject.
func sameIdentity(csr *x509.CertificateRequest, cert *x509.Certificate) error {
	if got, want := csr.Subject.String(), cert.Subject.String(); got != want {
		return fmt.Errorf("CSR Subject %q, certificate Subject %q", clip(got), clip(want))
	}
	if got, want := sanOf(csr.DNSNames, csr.EmailAddresses, csr.IPAddresses, csr.URIs), sanOf(cert.DNSNames, cert.EmailAddresses, cert.IPAddresses, cert.URIs); !slices.Equal(got, want) {
		return fmt.Errorf("CSR SubjectAltName %q, certificate SubjectAltName %q", clipAll(got), clipAll(want))
	}
	return nil
}

func clipAll(s []string) []string {
	if len(s) > 4 {
		s = append(s[:4:4], "...")
	}
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = clip(x)
	}
	return out
}

// clip bounds a client-supplied string quoted in a message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// sanOf is a SubjectAltName as a sorted list of "type:value".
func sanOf[IP fmt.Stringer, U fmt.Stringer](dns, email []string, ips []IP, uris []U) []string {
	var out []string
	for _, d := range dns {
		out = append(out, "DNS:"+d)
	}
	for _, e := range email {
		out = append(out, "email:"+e)
	}
	for _, ip := range ips {
		out = append(out, "IP:"+ip.String())
	}
	for _, u := range uris {
		out = append(out, "URI:"+u.String())
	}
	slices.Sort(out)
	return out
}

// OIDs of what edgeca asks for in /csrattrs.
var (
	oidCommonName      = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidECPublicKey     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidP256            = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
)

// csrAttrs is what edgeca tells a client through /csrattrs (RFC 7030
// §4.5.2, RFC 8951 §3.5): the subject commonName (the device id: the one
// thing a CSR must carry), and the key it recommends, ECDSA on P-256 signed
// with SHA-256 (what a TPM holds and every broker verifies). ParseCSR also
// accepts P-384 and RSA 2048-4096, so a client that keeps another accepted
// key is still served: the answer says what edgeca prefers, not all it
// takes. It returns the base64 response body.
func csrAttrs() ([]byte, error) {
	curve, err := asn1.Marshal(oidP256)
	if err != nil {
		return nil, fmt.Errorf("csrattrs: %w", err)
	}
	der, err := est.EncodeCSRAttrs(est.CSRAttrs{
		OIDs:       []asn1.ObjectIdentifier{oidCommonName, oidECDSAWithSHA256},
		Attributes: []est.Attribute{{Type: oidECPublicKey, Values: []asn1.RawValue{{FullBytes: curve}}}},
	})
	if err != nil {
		return nil, err
	}
	return est.EncodeBase64(der), nil
}
