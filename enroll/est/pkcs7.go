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
// certs, in order (RFC 7030 §4.1.3, §4.2.3).
func EncodeCertsOnly(certs []*x509.Certificate) ([]byte, error) {
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	emptySet := asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: []byte{}}
	sd := signedData{
		Version:          1,
		DigestAlgorithms: emptySet,
		EncapContentInfo: encapContentInfo{EContentType: oidData},
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: raw},
		SignerInfos:      emptySet,
	}
	sdDER, err := asn1.Marshal(sd)
	if err != nil {
		return nil, fmt.Errorf("encode certs-only CMS: %w", err)
	}
	// ContentInfo's [0] is EXPLICIT, so it wraps the SignedData TLV.
	wrapped, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: sdDER})
	if err != nil {
		return nil, fmt.Errorf("encode certs-only CMS: %w", err)
	}
	oid, err := asn1.Marshal(oidSignedData)
	if err != nil {
		return nil, fmt.Errorf("encode certs-only CMS: %w", err)
	}
	out, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: append(oid, wrapped...)})
	if err != nil {
		return nil, fmt.Errorf("encode certs-only CMS: %w", err)
	}
	return out, nil
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
