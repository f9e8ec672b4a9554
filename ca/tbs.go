package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// Device certificates are built here rather than with x509.CreateCertificate
// when the issuing key is an in-memory ECDSA P-256 key (what `edgeca init`
// creates): CreateCertificate verifies every signature it makes, a guard
// against faulty hardware signers that costs a second ECDSA operation,
// about half of all the CA's own work per enrollment. The TBSCertificate
// below is byte-for-byte what CreateCertificate produces for the same
// template (a test holds us to that); other issuing keys use
// CreateCertificate.

var (
	oidExtKeyUsage       = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstr    = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtAuthorityKeyID = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidClientAuth        = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// fastSigner returns the issuing key when the fast path applies to it.
func (a *authority) fastSigner() (*ecdsa.PrivateKey, bool) {
	k, ok := a.signer.(*ecdsa.PrivateKey)
	return k, ok && k.Curve == elliptic.P256()
}

// leafDER builds and signs a device certificate from tmpl (as filled in by
// issueLeaf) with the ECDSA P-256 issuing key. The DER is written by hand
// (est.AppendTLV) rather than with encoding/asn1, whose reflection cost about
// as much CPU as the signature itself; TestLeafDERMatchesCreateCertificate
// holds the bytes to CreateCertificate's.
func (a *authority) leafDER(tmpl *x509.Certificate, pubDER []byte, key *ecdsa.PrivateKey) ([]byte, error) {
	if tmpl.SerialNumber == nil || tmpl.SerialNumber.Sign() <= 0 {
		return nil, fmt.Errorf("leaf template: serial must be positive")
	}
	if len(tmpl.Subject.Names) != 0 || len(tmpl.Subject.ExtraNames) != 0 || len(tmpl.Subject.Organization) != 0 || len(tmpl.URIs) != 1 {
		return nil, fmt.Errorf("leaf template: unexpected subject or names")
	}
	exts, err := leafExtensions(tmpl, a.intermediate.SubjectKeyId)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 0, 512)
	body = append(body, 0xa0, 0x03, 0x02, 0x01, 0x02) // [0] EXPLICIT INTEGER 2 (v3)
	body = est.AppendTLV(body, 0x02, serialContent(tmpl.SerialNumber))
	body = append(body, derECDSAWithSHA256...)
	body = append(body, a.intermediate.RawSubject...)
	var validity []byte
	validity = appendTime(validity, tmpl.NotBefore.UTC().Truncate(time.Second))
	validity = appendTime(validity, tmpl.NotAfter.UTC().Truncate(time.Second))
	body = est.AppendTLV(body, 0x30, validity)
	body = est.AppendTLV(body, 0x30, commonNameRDN(tmpl.Subject.CommonName))
	body = append(body, pubDER...)
	var extSeq []byte
	for _, e := range exts {
		var ext []byte
		ext = est.AppendTLV(ext, 0x06, oidContent(e.Id))
		if e.Critical {
			ext = append(ext, 0x01, 0x01, 0xff)
		}
		ext = est.AppendTLV(ext, 0x04, e.Value)
		extSeq = est.AppendTLV(extSeq, 0x30, ext)
	}
	body = est.AppendTLV(body, 0xa3, est.AppendTLV(nil, 0x30, extSeq))
	tbs := est.AppendTLV(make([]byte, 0, len(body)+4), 0x30, body)

	digest := sha256.Sum256(tbs)
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return nil, err
	}
	cert := make([]byte, 0, len(tbs)+len(derECDSAWithSHA256)+len(sig)+8)
	cert = append(cert, tbs...)
	cert = append(cert, derECDSAWithSHA256...)
	cert = est.AppendTLV(cert, 0x03, append([]byte{0}, sig...)) // BIT STRING, no unused bits
	return est.AppendTLV(make([]byte, 0, len(cert)+4), 0x30, cert), nil
}

// marshalSPKI is x509.MarshalPKIXPublicKey, with the common case (a P-256
// device key) written directly: a fixed prefix and the uncompressed point.
func marshalSPKI(pub crypto.PublicKey) ([]byte, error) {
	if k, ok := pub.(*ecdsa.PublicKey); ok && k.Curve == elliptic.P256() {
		point, err := k.Bytes()
		if err != nil {
			return nil, err
		}
		return append(append([]byte(nil), derP256SPKIPrefix...), point...), nil
	}
	return x509.MarshalPKIXPublicKey(pub)
}

// derP256SPKIPrefix starts a P-256 SubjectPublicKeyInfo: SEQUENCE {
// SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) of
// the 65-byte uncompressed point }.
var derP256SPKIPrefix = []byte{
	0x30, 0x59, 0x30, 0x13,
	0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
	0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
	0x03, 0x42, 0x00,
}

// derECDSAWithSHA256 is the AlgorithmIdentifier SEQUENCE { OID
// ecdsa-with-SHA256 } (no parameters), in TBSCertificate and Certificate.
var derECDSAWithSHA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}

// serialContent is the content octets of a positive INTEGER.
func serialContent(n *big.Int) []byte {
	b := n.Bytes()
	if b[0]&0x80 != 0 {
		b = append([]byte{0}, b...)
	}
	return b
}

// oidContent is the content octets of an OBJECT IDENTIFIER.
func oidContent(oid asn1.ObjectIdentifier) []byte {
	b := []byte{byte(oid[0]*40 + oid[1])}
	for _, v := range oid[2:] {
		var tmp [5]byte
		i := len(tmp) - 1
		tmp[i] = byte(v & 0x7f)
		for v >>= 7; v > 0; v >>= 7 {
			i--
			tmp[i] = byte(v&0x7f) | 0x80
		}
		b = append(b, tmp[i:]...)
	}
	return b
}

// appendTime encodes t (UTC, whole seconds) as encoding/asn1 does:
// UTCTime from 1950 to 2049, GeneralizedTime otherwise.
func appendTime(b []byte, t time.Time) []byte {
	if y := t.Year(); y >= 1950 && y < 2050 {
		return est.AppendTLV(b, 0x17, []byte(t.Format("060102150405Z")))
	}
	return est.AppendTLV(b, 0x18, []byte(t.Format("20060102150405Z")))
}

// commonNameRDN is the content of a Name holding only CN=cn: a
// PrintableString when cn allows one, else a UTF8String, as
// encoding/asn1 chooses for pkix.Name.
func commonNameRDN(cn string) []byte {
	tag := byte(0x13) // PrintableString
	for i := 0; i < len(cn); i++ {
		if !isPrintable(cn[i]) {
			tag = 0x0c // UTF8String
			break
		}
	}
	atv := est.AppendTLV([]byte{0x06, 0x03, 0x55, 0x04, 0x03}, tag, []byte(cn))
	return est.AppendTLV(nil, 0x31, est.AppendTLV(nil, 0x30, atv))
}

// isPrintable reports whether PrintableString allows c.
func isPrintable(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		'\'' <= c && c <= ')' || '+' <= c && c <= '/' || c == ' ' || c == ':' || c == '=' || c == '?'
}

// leafExtensions encodes the extensions of a device certificate in the
// order CreateCertificate writes them.
func leafExtensions(tmpl *x509.Certificate, authorityKeyID []byte) ([]pkix.Extension, error) {
	if len(tmpl.ExtKeyUsage) != 1 || tmpl.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		return nil, fmt.Errorf("leaf template: unexpected extended key usage %v", tmpl.ExtKeyUsage)
	}
	ku := keyUsageBits(tmpl.KeyUsage)
	exts := make([]pkix.Extension, 0, 6)
	exts = append(exts,
		pkix.Extension{Id: oidExtKeyUsage, Critical: true,
			Value: est.AppendTLV(nil, 0x03, append([]byte{byte(8*len(ku.Bytes) - ku.BitLength)}, ku.Bytes...))},
		pkix.Extension{Id: oidExtExtKeyUsage, Value: est.AppendTLV(nil, 0x30, est.AppendTLV(nil, 0x06, oidContent(oidClientAuth)))},
		// BasicConstraints with cA FALSE (the default) is an empty SEQUENCE.
		pkix.Extension{Id: oidExtBasicConstr, Critical: true, Value: []byte{0x30, 0x00}},
	)
	if len(authorityKeyID) > 0 {
		// AuthorityKeyIdentifier { keyIdentifier [0] IMPLICIT OCTET STRING }
		exts = append(exts, pkix.Extension{Id: oidExtAuthorityKeyID, Value: est.AppendTLV(nil, 0x30, est.AppendTLV(nil, 0x80, authorityKeyID))})
	}
	var names []byte
	for _, u := range tmpl.URIs {
		names = est.AppendTLV(names, 0x86, []byte(u.String())) // uniformResourceIdentifier [6] IA5String
	}
	exts = append(exts, pkix.Extension{Id: oidExtSubjectAltName, Value: est.AppendTLV(nil, 0x30, names)})
	if len(tmpl.CRLDistributionPoints) > 1 {
		return nil, fmt.Errorf("leaf template: more than one CRL distribution point")
	}
	for _, u := range tmpl.CRLDistributionPoints {
		exts = append(exts, cdpExtension(u))
	}
	return exts, nil
}

// keyUsageBits encodes a KeyUsage as the shortest BIT STRING, as
// CreateCertificate does.
func keyUsageBits(ku x509.KeyUsage) asn1.BitString {
	var b [2]byte
	n := 0
	for i := range 9 {
		if ku&(1<<i) != 0 {
			b[i/8] |= 0x80 >> (i % 8)
			n = i + 1
		}
	}
	return asn1.BitString{Bytes: b[:(n+7)/8], BitLength: n}
}
