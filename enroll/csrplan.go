package enroll

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// Object identifiers a /csrattrs answer uses (RFC 7030 §4.5.2, RFC 5912).
var (
	oidECPublicKey       = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidRSAEncryption     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidChallengePassword = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}
	// commonName: the agent always sends one (the device id, or on
	// renewal the current certificate's subject), so asking for it is
	// honoured, not a warning (edgeca's own /csrattrs asks for it).
	oidCommonName       = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidExtensionRequest = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 14}

	curveOIDs = map[string]string{
		"1.2.840.10045.3.1.7": "P-256",
		"1.3.132.0.34":        "P-384",
		"1.3.132.0.35":        "P-521",
	}
	signatureOIDs = map[string]x509.SignatureAlgorithm{
		"1.2.840.10045.4.3.2":   x509.ECDSAWithSHA256,
		"1.2.840.10045.4.3.3":   x509.ECDSAWithSHA384,
		"1.2.840.10045.4.3.4":   x509.ECDSAWithSHA512,
		"1.2.840.113549.1.1.11": x509.SHA256WithRSA,
		"1.2.840.113549.1.1.12": x509.SHA384WithRSA,
		"1.2.840.113549.1.1.13": x509.SHA512WithRSA,
	}
)

// Key algorithms the agent's key stores make (keystore.Algorithm names).
const (
	algECDSAP256 = "ecdsa-p256"
	algRSA2048   = "rsa-2048"
	algRSA3072   = "rsa-3072"
)

// CSRPlan is what a /csrattrs answer asks of the CSR, as far as the agent
// can honour it (RFC 7030 §4.5): the key type and size, the signature
// algorithm and extensions to request. Unhonoured says, one line each,
// what the server asked that the agent does not do; none of it is fatal,
// the CA decides. The zero CSRPlan asks for nothing.
type CSRPlan struct {
	// KeyTypes are the key types the server names ("ecdsa", "rsa"), in
	// its order: any of them will do.
	KeyTypes []string
	// Curve is the named curve the server wants ("P-256"...), if any.
	Curve string
	// RSABits is the RSA modulus size the server wants, if any.
	RSABits int
	// SignatureAlgorithm for the CSR; 0 means SHA-256 for the key type.
	SignatureAlgorithm x509.SignatureAlgorithm
	// Extensions the server asks for in an extensionRequest attribute.
	Extensions []pkix.Extension
	Unhonoured []string

	log *slog.Logger // where signCSR notes what it could not do
}

// PlanCSR reads what attrs asks for.
func PlanCSR(a est.CSRAttrs) CSRPlan {
	var p CSRPlan
	for _, oid := range a.OIDs {
		switch s := oid.String(); {
		case oid.Equal(oidECPublicKey):
			p.wantKey("ecdsa")
		case oid.Equal(oidRSAEncryption):
			p.wantKey("rsa")
		case curveOIDs[s] != "":
			p.wantKey("ecdsa")
			p.Curve = curveOIDs[s]
		case signatureOIDs[s] != x509.UnknownSignatureAlgorithm:
			p.SignatureAlgorithm = signatureOIDs[s]
		case oid.Equal(oidCommonName):
		case oid.Equal(oidChallengePassword):
			p.Unhonoured = append(p.Unhonoured, "challengePassword (tls-unique channel binding, RFC 7030 §3.5) is not sent")
		default:
			p.Unhonoured = append(p.Unhonoured, fmt.Sprintf("attribute %s has no value the agent knows to supply", s))
		}
	}
	for _, at := range a.Attributes {
		switch {
		case at.Type.Equal(oidECPublicKey):
			p.wantKey("ecdsa")
			for _, v := range at.Values {
				var curve asn1.ObjectIdentifier
				if rest, err := asn1.Unmarshal(v.FullBytes, &curve); err != nil || len(rest) != 0 || curveOIDs[curve.String()] == "" {
					p.Unhonoured = append(p.Unhonoured, "id-ecPublicKey asks for a curve the agent does not know")
					continue
				}
				p.Curve = curveOIDs[curve.String()]
			}
		case at.Type.Equal(oidRSAEncryption):
			p.wantKey("rsa")
			for _, v := range at.Values {
				var bits int
				if rest, err := asn1.Unmarshal(v.FullBytes, &bits); err != nil || len(rest) != 0 || bits <= 0 || bits > 1<<16 {
					p.Unhonoured = append(p.Unhonoured, "rsaEncryption asks for a key size that is not a sensible INTEGER")
					continue
				}
				p.RSABits = bits
			}
		case at.Type.Equal(oidCommonName):
		case at.Type.Equal(oidExtensionRequest):
			for _, v := range at.Values {
				var exts []pkix.Extension
				if rest, err := asn1.Unmarshal(v.FullBytes, &exts); err != nil || len(rest) != 0 {
					p.Unhonoured = append(p.Unhonoured, "extensionRequest is not a list of extensions")
					continue
				}
				for _, e := range exts {
					if e.Id.Equal(oidSubjectAltName) {
						p.Unhonoured = append(p.Unhonoured, "a SubjectAltName asked for is not used: the device's names come from its id or its certificate")
						continue
					}
					p.Extensions = append(p.Extensions, e)
				}
			}
		default:
			p.Unhonoured = append(p.Unhonoured, fmt.Sprintf("attribute %s has no value the agent knows to supply", at.Type))
		}
	}
	switch {
	case p.Curve != "" && p.Curve != "P-256":
		p.Unhonoured = append(p.Unhonoured, fmt.Sprintf("a %s key: the agent's key stores make ECDSA P-256 and RSA", p.Curve))
	case p.RSABits > 3072:
		p.Unhonoured = append(p.Unhonoured, fmt.Sprintf("a %d-bit RSA key: the agent makes RSA keys of 2048 and 3072 bits", p.RSABits))
	}
	return p
}

func (p *CSRPlan) wantKey(t string) {
	if !slices.Contains(p.KeyTypes, t) {
		p.KeyTypes = append(p.KeyTypes, t)
	}
}

// Algorithm is the key algorithm (a keystore.Algorithm name) to make a
// new key with: preferred when it is of a type the server names and fits
// its curve or size, otherwise the first type named that the agent can
// make (the smallest size that fits), otherwise preferred.
func (p CSRPlan) Algorithm(preferred string) string {
	if len(p.KeyTypes) == 0 {
		return preferred
	}
	prefType := "rsa"
	if preferred == algECDSAP256 {
		prefType = "ecdsa"
	}
	for _, t := range append([]string{prefType}, p.KeyTypes...) {
		if !slices.Contains(p.KeyTypes, t) {
			continue
		}
		switch {
		case t == "ecdsa" && (p.Curve == "" || p.Curve == "P-256"):
			return algECDSAP256
		case t == "rsa" && p.RSABits <= 2048 && (preferred == algRSA2048 || preferred == algRSA3072):
			return preferred
		case t == "rsa" && p.RSABits <= 2048:
			return algRSA2048
		case t == "rsa" && p.RSABits <= 3072:
			return algRSA3072
		}
	}
	return preferred
}

// fits says whether pub is the key the server asks for.
func (p CSRPlan) fits(pub crypto.PublicKey) bool {
	if len(p.KeyTypes) == 0 {
		return true
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return slices.Contains(p.KeyTypes, "ecdsa") && (p.Curve == "" || k.Curve == curveByName(p.Curve))
	case *rsa.PublicKey:
		return slices.Contains(p.KeyTypes, "rsa") && k.N.BitLen() >= p.RSABits
	}
	return false
}

func curveByName(n string) elliptic.Curve {
	switch n {
	case "P-256":
		return elliptic.P256()
	case "P-384":
		return elliptic.P384()
	case "P-521":
		return elliptic.P521()
	}
	return nil
}

func (p CSRPlan) noteKey(pub crypto.PublicKey) {
	if !p.fits(pub) {
		want := strings.Join(p.KeyTypes, " or ")
		if p.Curve != "" {
			want += " " + p.Curve
		}
		if p.RSABits > 0 {
			want += fmt.Sprintf(" %d-bit", p.RSABits)
		}
		p.note("the server asks for an %s key; this CSR is for the key the device has (%T): a rekey makes a key that fits when the agent can", want, pub)
	}
}

func (p CSRPlan) note(format string, args ...any) {
	if p.log != nil {
		p.log.Warn("csrattrs: " + fmt.Sprintf(format, args...))
	}
}

// CSRPlan asks the server's /csrattrs (RFC 7030 §4.5: a client SHOULD)
// and returns what it asks for. None (204, 404) is the zero plan; an error
// answer, or one that cannot be read, is logged and also gives the zero
// plan: the CA may still accept the CSR, and says so if not. What cannot
// be honoured is logged on log, now and when the CSR is built. The error
// is only for a server that could not be reached (Unreachable): the
// enrollment or renewal would fail the same way, so it fails now.
func (c *Client) CSRPlan(ctx context.Context, log *slog.Logger) (CSRPlan, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	attrs, err := c.CSRAttrs(ctx)
	if Unreachable(err) {
		return CSRPlan{}, err
	}
	if err != nil {
		log.Warn("csrattrs: cannot read what the server wants in the CSR; building it without", "err", err)
		return CSRPlan{log: log}, nil
	}
	p := PlanCSR(attrs)
	p.log = log
	for _, u := range p.Unhonoured {
		log.Warn("csrattrs: not honoured", "what", u)
	}
	return p, nil
}
