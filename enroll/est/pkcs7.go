package est

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

// ErrCMS is wrapped by DecodeCertsOnly errors.
var ErrCMS = errors.New("malformed certs-only CMS")

// contentInfo is CMS ContentInfo (RFC 5652 §3).
type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,tag:0"`
}

// signedData is CMS SignedData (RFC 5652 §5.1) reduced to what a certs-only
// ("degenerate") message carries: no digest algorithms, no content, no
// signers, just certificates (and CRLs, which we ignore).
type signedData struct {
	Version          int
	DigestAlgorithms asn1.RawValue
	EncapContentInfo encapContentInfo
	Certificates     asn1.RawValue `asn1:"optional,tag:0"`
	CRLs             asn1.RawValue `asn1:"optional,tag:1"`
	SignerInfos      asn1.RawValue
}

type encapContentInfo struct {
	EContentType asn1.ObjectIdentifier
	EContent     asn1.RawValue `asn1:"optional,explicit,tag:0"`
}

// EncodeCertsOnly builds the DER of a certs-only CMS SignedData holding
// certs, in order (RFC 7030 §4.1.3, §4.2.3). The structure is fixed but for
// the certificates, so it is written directly (an EST server answers every
// enrollment with one; encoding/asn1's reflection showed in its profile).
func EncodeCertsOnly(certs []*x509.Certificate) ([]byte, error) {
	var raw []byte
	for _, c := range certs {
		if len(c.Raw) == 0 {
			return nil, errors.New("encode certs-only CMS: a certificate has no DER (Raw)")
		}
		raw = append(raw, c.Raw...)
	}
	var sd []byte
	sd = append(sd, 0x02, 0x01, 0x01) // version 1
	sd = append(sd, 0x31, 0x00)       // digestAlgorithms: empty SET
	sd = AppendTLV(sd, 0x30, derOIDData)
	sd = AppendTLV(sd, 0xa0, raw) // certificates [0] IMPLICIT
	sd = append(sd, 0x31, 0x00)   // signerInfos: empty SET
	ci := append([]byte(nil), derOIDSignedData...)
	ci = AppendTLV(ci, 0xa0, AppendTLV(nil, 0x30, sd)) // content [0] EXPLICIT
	return AppendTLV(nil, 0x30, ci), nil
}

// The OBJECT IDENTIFIERs id-signedData (1.2.840.113549.1.7.2) and id-data
// (1.2.840.113549.1.7.1), tag and length included.
var (
	derOIDSignedData = []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02}
	derOIDData       = []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01}
)

// AppendTLV appends a DER tag, definite length and content (edgeca writes
// its certificates with it too).
func AppendTLV(b []byte, tag byte, content []byte) []byte {
	b = append(b, tag)
	switch n := len(content); {
	case n < 0x80:
		b = append(b, byte(n))
	case n < 0x100:
		b = append(b, 0x81, byte(n))
	case n < 0x10000:
		b = append(b, 0x82, byte(n>>8), byte(n))
	case n < 0x1000000:
		b = append(b, 0x83, byte(n>>16), byte(n>>8), byte(n))
	default:
		b = append(b, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, content...)
}

// DecodeCertsOnly parses the DER of a certs-only CMS SignedData and returns
// its certificates in the order they appear. It accepts DER only; the
// certificates must each parse.
func DecodeCertsOnly(der []byte) ([]*x509.Certificate, error) {
	var ci contentInfo
	rest, err := asn1.Unmarshal(der, &ci)
	if err != nil {
		return nil, fmt.Errorf("%w: ContentInfo: %v", ErrCMS, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after ContentInfo", ErrCMS, len(rest))
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("%w: content type %v is not SignedData", ErrCMS, ci.ContentType)
	}
	var sd signedData
	rest, err = asn1.Unmarshal(ci.Content.Bytes, &sd)
	if err != nil {
		return nil, fmt.Errorf("%w: SignedData: %v", ErrCMS, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: trailing bytes after SignedData", ErrCMS)
	}
	if sd.Certificates.Tag != 0 || sd.Certificates.Class != asn1.ClassContextSpecific || len(sd.Certificates.Bytes) == 0 {
		return nil, fmt.Errorf("%w: no certificates", ErrCMS)
	}
	certs, err := x509.ParseCertificates(sd.Certificates.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate: %v", ErrCMS, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no certificates", ErrCMS)
	}
	return certs, nil
}
