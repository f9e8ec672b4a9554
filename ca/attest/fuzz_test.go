package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeagent/edgeagent/enroll/attest"
)

// FuzzStart feeds hostile public areas and EK certificates to Start, which
// an unauthenticated peer reaches: errors, never a panic.
func FuzzStart(f *testing.F) {
	ak := tpm2.Marshal(&tpm2.TPMTPublic{Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{CurveID: tpm2.TPMECCNistP256}),
		Unique:     tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})})
	ek := tpm2.Marshal(&tpm2.RSAEKTemplate)
	f.Add(ek, ak, []byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.Add([]byte{0, 1}, []byte{0, 0x23, 0, 0xb}, []byte(nil))
	v := New(Config{Allowlist: map[[32]byte]bool{}})
	f.Fuzz(func(t *testing.T, ekPub, akPub, cert []byte) {
		_, _ = v.Start(attest.StartRequest{EKCert: cert, EKPublic: ekPub, AKPublic: akPub})
	})
}

// FuzzCheckCertify feeds hostile TPMS_ATTEST and signatures to the check
// that runs on attest/finish.
func FuzzCheckCertify(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	akPub := &tpm2.TPMTPublic{Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{CurveID: tpm2.TPMECCNistP256}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, 32))},
			Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, 32))}})}
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x17}, []byte{0, 0x18, 0, 0xb, 0, 1, 1, 0, 1, 1}, []byte("nonce"))
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x17}, tpm2.Marshal(akPub), []byte("nonce"))
	f.Fuzz(func(t *testing.T, info, sig, nonce []byte) {
		_ = CheckCertify(akPub, info, sig, nonce, akPub)
		_, _ = ParseEKCert(info)
		_ = checkTPMSAN(info)
		// A hostile AK or device key public area reaches the checks, the
		// name computation and the signature verification.
		if p, err := parsePublic(sig, "ak", "fuzz"); err == nil {
			_ = CheckAK(p)
			_ = CheckDeviceKey(p)
			_, _ = tpm2.ObjectName(p)
			_ = CheckCertify(p, info, nonce, nonce, p)
		}
	})
}
