package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeagent/edgeagent/keystore"
)

// template returns the public template of a device key: an unrestricted
// signing key (it signs arbitrary digests, which TLS and CSRs need) that can
// never leave this TPM (fixedTPM, fixedParent) and whose private part the TPM
// generated itself (sensitiveDataOrigin). The scheme is left NULL so each
// Sign picks the hash and, for RSA, PKCS#1 v1.5 or PSS.
func template(alg keystore.Algorithm) (tpm2.TPMTPublic, error) {
	attrs := tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		SignEncrypt:         true,
		Decrypt:             false,
		Restricted:          false,
	}
	switch alg {
	case keystore.ECDSAP256, "":
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgECC,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				CurveID: tpm2.TPMECCNistP256,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
		}, nil
	case keystore.RSA2048, keystore.RSA3072:
		bits := tpm2.TPMKeyBits(2048)
		if alg == keystore.RSA3072 {
			bits = 3072
		}
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgRSA,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				KeyBits: bits,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
		}, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("keystore: tpm: unsupported key algorithm %q: use %s, %s or %s", alg, keystore.ECDSAP256, keystore.RSA2048, keystore.RSA3072)
}

// publicKey converts a TPM public area into a Go public key, validating the
// point or modulus on the way.
func publicKey(pub *tpm2.TPMTPublic) (crypto.PublicKey, error) {
	switch pub.Type {
	case tpm2.TPMAlgECC:
		parms, err := pub.Parameters.ECCDetail()
		if err != nil {
			return nil, err
		}
		if parms.CurveID != tpm2.TPMECCNistP256 {
			return nil, fmt.Errorf("ECC curve %v is not supported, only NIST P-256", parms.CurveID)
		}
		pt, err := pub.Unique.ECC()
		if err != nil {
			return nil, err
		}
		if len(pt.X.Buffer) > 32 || len(pt.Y.Buffer) > 32 {
			return nil, errors.New("ECC point coordinates longer than 32 bytes")
		}
		// Uncompressed SEC 1 encoding, so the standard library checks the
		// point is on the curve.
		raw := make([]byte, 65)
		raw[0] = 4
		copy(raw[1+32-len(pt.X.Buffer):33], pt.X.Buffer)
		copy(raw[33+32-len(pt.Y.Buffer):], pt.Y.Buffer)
		return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	case tpm2.TPMAlgRSA:
		parms, err := pub.Parameters.RSADetail()
		if err != nil {
			return nil, err
		}
		n, err := pub.Unique.RSA()
		if err != nil {
			return nil, err
		}
		return tpm2.RSAPub(parms, n)
	}
	return nil, fmt.Errorf("key type %v is not supported", pub.Type)
}

// tpmHash maps a Go hash to the TPM algorithm id.
func tpmHash(h crypto.Hash) (tpm2.TPMIAlgHash, error) {
	switch h {
	case crypto.SHA256:
		return tpm2.TPMAlgSHA256, nil
	case crypto.SHA384:
		return tpm2.TPMAlgSHA384, nil
	case crypto.SHA512:
		return tpm2.TPMAlgSHA512, nil
	case crypto.SHA1:
		return tpm2.TPMAlgSHA1, nil
	}
	return 0, fmt.Errorf("keystore: tpm: hash %v is not supported for TPM signatures; use SHA-256, SHA-384 or SHA-512", h)
}

// key is one device key: its blobs (or persistent handle) and, once used, the
// transient handle it is loaded at. It is the crypto.Signer handed out.
type key struct {
	s      *Store
	pub    tpm2.TPM2BPublic
	priv   tpm2.TPM2BPrivate // empty for a persistent key
	public crypto.PublicKey
	// persistent is the key's persistent handle, 0 for a blob key.
	persistent tpm2.TPMHandle

	// Guarded by s.mu.
	handle  tpm2.TPMHandle // loaded handle, 0 when not loaded
	name    tpm2.TPM2BName
	retired bool
}

var _ crypto.Signer = (*key)(nil)

// Public returns the key's public half, read from the TPM public area.
func (k *key) Public() crypto.PublicKey { return k.public }

// Sign signs digest in the TPM. For ECDSA it returns an ASN.1 DER
// signature; for RSA a PKCS#1 v1.5 signature, or PSS when opts is a
// *rsa.PSSOptions. rand is ignored: the TPM draws its own randomness.
func (k *key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h := opts.HashFunc()
	if h == 0 {
		return nil, errors.New("keystore: tpm: signing needs a digest and its hash function; raw messages are not supported")
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("keystore: tpm: digest is %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	halg, err := tpmHash(h)
	if err != nil {
		return nil, err
	}
	pss, isPSS := opts.(*rsa.PSSOptions)
	var scheme tpm2.TPMTSigScheme
	switch k.public.(type) {
	case *ecdsa.PublicKey:
		scheme = tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: halg}),
		}
	case *rsa.PublicKey:
		alg := tpm2.TPMAlgRSASSA
		if isPSS {
			alg = tpm2.TPMAlgRSAPSS
		}
		scheme = tpm2.TPMTSigScheme{
			Scheme:  alg,
			Details: tpm2.NewTPMUSigScheme(alg, &tpm2.TPMSSchemeHash{HashAlg: halg}),
		}
	}

	sig, err := k.s.sign(k, digest, scheme)
	if err != nil {
		return nil, err
	}
	switch scheme.Scheme {
	case tpm2.TPMAlgECDSA:
		e, err := sig.Signature.Signature.ECDSA()
		if err != nil {
			return nil, fmt.Errorf("keystore: tpm: decode ECDSA signature: %w", err)
		}
		return asn1.Marshal(struct{ R, S *big.Int }{
			new(big.Int).SetBytes(e.SignatureR.Buffer),
			new(big.Int).SetBytes(e.SignatureS.Buffer),
		})
	case tpm2.TPMAlgRSASSA:
		r, err := sig.Signature.Signature.RSASSA()
		if err != nil {
			return nil, fmt.Errorf("keystore: tpm: decode RSA signature: %w", err)
		}
		return r.Sig.Buffer, nil
	default: // PSS
		r, err := sig.Signature.Signature.RSAPSS()
		if err != nil {
			return nil, fmt.Errorf("keystore: tpm: decode RSA-PSS signature: %w", err)
		}
		if err := checkPSSSalt(k.public.(*rsa.PublicKey), h, digest, r.Sig.Buffer, pss); err != nil {
			return nil, err
		}
		return r.Sig.Buffer, nil
	}
}

// checkPSSSalt makes sure a TPM PSS signature has the salt length the caller
// asked for. The TPM picks the salt length itself: TPM 2.0 Part 1 says the
// largest the key allows, unless the TPM follows FIPS 186-4, which caps it at
// the hash length. TLS 1.3 requires exactly the hash length, so a TPM of the
// first kind cannot serve TLS 1.3 with an RSA key; verifying here turns that
// into a clear error instead of a handshake the peer rejects. swtpm
// (libtpms) uses the hash length, as tests check.
func checkPSSSalt(pub *rsa.PublicKey, h crypto.Hash, digest, sig []byte, opts *rsa.PSSOptions) error {
	want := opts.SaltLength
	if want == rsa.PSSSaltLengthAuto {
		return nil
	}
	if want == rsa.PSSSaltLengthEqualsHash {
		want = h.Size()
	}
	if rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{SaltLength: want}) == nil {
		return nil
	}
	got := "an unknown salt length"
	if max := pub.Size() - h.Size() - 2; rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{SaltLength: max}) == nil {
		got = fmt.Sprintf("the maximum salt length (%d bytes)", max)
	} else if rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) != nil {
		return fmt.Errorf("keystore: tpm: RSA-PSS signature from the TPM does not verify")
	}
	return fmt.Errorf("keystore: tpm: %w: it uses %s, the caller needs %d bytes (TLS 1.3 needs the hash length); use an %s key or a TPM that follows FIPS 186-4", ErrPSSSaltLength, got, want, keystore.ECDSAP256)
}
