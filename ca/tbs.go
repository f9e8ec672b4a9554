package ca

import (
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
	oidECDSAWithSHA256   = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidExtKeyUsage       = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstr    = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtAuthorityKeyID = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidClientAuth        = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

type tbsCertificate struct {
	Version            int `asn1:"optional,explicit,default:0,tag:0"`
	SerialNumber       *big.Int
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Issuer             asn1.RawValue
	Validity           validity
	Subject            asn1.RawValue
	PublicKey          asn1.RawValue
	Extensions         []pkix.Extension `asn1:"omitempty,optional,explicit,tag:3"`
}

type validity struct {
	NotBefore, NotAfter time.Time
}

type certificate struct {
	TBSCertificate     asn1.RawValue
	SignatureAlgorithm pkix.AlgorithmIdentifier
	SignatureValue     asn1.BitString
}

type authKeyID struct {
	ID []byte `asn1:"optional,tag:0"`
}

// fastSigner returns the issuing key when the fast path applies to it.
func (a *authority) fastSigner() (*ecdsa.PrivateKey, bool) {
	k, ok := a.signer.(*ecdsa.PrivateKey)
	return k, ok && k.Curve == elliptic.P256()
}

// leafDER builds and signs a device certificate from tmpl (as filled in by
// issueLeaf) with the ECDSA P-256 issuing key.
func (a *authority) leafDER(tmpl *x509.Certificate, pubDER []byte, key *ecdsa.PrivateKey) ([]byte, error) {
	subject, err := asn1.Marshal(tmpl.Subject.ToRDNSequence())
	if err != nil {
		return nil, err
	}
	exts, err := leafExtensions(tmpl, a.intermediate.SubjectKeyId)
	if err != nil {
		return nil, err
	}
	sigAlg := pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA256}
	tbs, err := asn1.Marshal(tbsCertificate{
		Version:            2,
		SerialNumber:       tmpl.SerialNumber,
		SignatureAlgorithm: sigAlg,
		Issuer:             asn1.RawValue{FullBytes: a.intermediate.RawSubject},
		Validity:           validity{tmpl.NotBefore.UTC().Truncate(time.Second), tmpl.NotAfter.UTC().Truncate(time.Second)},
		Subject:            asn1.RawValue{FullBytes: subject},
		PublicKey:          asn1.RawValue{FullBytes: pubDER},
		Extensions:         exts,
	})
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(tbs)
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(certificate{
		TBSCertificate:     asn1.RawValue{FullBytes: tbs},
		SignatureAlgorithm: sigAlg,
		SignatureValue:     asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
}

// leafExtensions encodes the extensions of a device certificate in the
// order CreateCertificate writes them.
func leafExtensions(tmpl *x509.Certificate, authorityKeyID []byte) ([]pkix.Extension, error) {
	var exts []pkix.Extension
	add := func(id asn1.ObjectIdentifier, critical bool, v any) error {
		b, err := asn1.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode extension %v: %w", id, err)
		}
		exts = append(exts, pkix.Extension{Id: id, Critical: critical, Value: b})
		return nil
	}
	if err := add(oidExtKeyUsage, true, keyUsageBits(tmpl.KeyUsage)); err != nil {
		return nil, err
	}
	if len(tmpl.ExtKeyUsage) != 1 || tmpl.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		return nil, fmt.Errorf("leaf template: unexpected extended key usage %v", tmpl.ExtKeyUsage)
	}
	if err := add(oidExtExtKeyUsage, false, []asn1.ObjectIdentifier{oidClientAuth}); err != nil {
		return nil, err
	}
	// BasicConstraints with cA FALSE (the default) is an empty SEQUENCE.
	if err := add(oidExtBasicConstr, true, struct{}{}); err != nil {
		return nil, err
	}
	if len(authorityKeyID) > 0 {
		if err := add(oidExtAuthorityKeyID, false, authKeyID{ID: authorityKeyID}); err != nil {
			return nil, err
		}
	}
	var names []asn1.RawValue
	for _, u := range tmpl.URIs {
		names = append(names, asn1.RawValue{Tag: 6, Class: asn1.ClassContextSpecific, Bytes: []byte(u.String())})
	}
	if err := add(oidExtSubjectAltName, false, names); err != nil {
		return nil, err
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
