package est

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"testing"
)

// encodeCertsOnlyASN1 is EncodeCertsOnly as first written, with
// encoding/asn1: the reference the hand-written DER is held to.
func encodeCertsOnlyASN1(certs []*x509.Certificate) ([]byte, error) {
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

func TestEncodeCertsOnlyMatchesASN1(t *testing.T) {
	a := selfSigned(t, "a")
	many := make([]*x509.Certificate, 400) // over 64 KiB: a 3-byte length
	for i := range many {
		many[i] = a
	}
	for _, certs := range [][]*x509.Certificate{
		nil,
		{a},
		{a, selfSigned(t, "b")},
		many,
	} {
		t.Run(fmt.Sprint(len(certs)), func(t *testing.T) {
			got, err := EncodeCertsOnly(certs)
			if err != nil {
				t.Fatal(err)
			}
			want, err := encodeCertsOnlyASN1(certs)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("DER differs from encoding/asn1's:\ngot  %x\nwant %x", got, want)
			}
			if len(certs) == 0 {
				return // DecodeCertsOnly refuses an empty bag, by design
			}
			back, err := DecodeCertsOnly(got)
			if err != nil || len(back) != len(certs) {
				t.Fatalf("decode: %d certificates, %v", len(back), err)
			}
		})
	}
}
