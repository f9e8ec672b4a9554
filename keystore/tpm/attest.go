package tpm

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// TCG EK Credential Profile: the standard NV indices of the EK certificates
// and the persistent handle where provisioning leaves the RSA EK.
const (
	NVRSAEKCert  uint32 = 0x01C00002
	NVECCEKCert  uint32 = 0x01C0000A // low range, ECC P-256
	NVECC384Cert uint32 = 0x01C00016 // high range, ECC P-384 (as swtpm_setup writes it)
	RSAEKHandle  uint32 = 0x81010001
	// ECCEKHandle is where provisioning (swtpm_setup among others) leaves
	// the ECC P-384 EK of the high-range template.
	ECCEKHandle uint32 = 0x81010016
)

// maxNVCertBytes bounds an EK certificate read from NV; real ones are
// 1-2 KiB.
const maxNVCertBytes = 8 << 10

// Endorsement is what the TPM shows to prove it is a TPM: the RSA EK's
// public area (TPMT_PUBLIC) and, when the manufacturer provisioned them, the
// EK certificates found in NV.
type Endorsement struct {
	Public  []byte // marshalled TPMT_PUBLIC of the RSA EK
	RSACert []byte // DER, nil if NV 0x01C00002 is empty
	ECCCert []byte // DER of the ECC EK certificate, nil if none
	// ECCPublic is the persistent ECC EK's TPMT_PUBLIC (0x81010016), nil
	// when the TPM has none.
	ECCPublic []byte
}

// Choose returns the EK to attest with: the RSA EK if it has a
// certificate or the ECC EK has none, else the ECC EK.
func (e *Endorsement) Choose() (cert, public []byte) {
	if e.RSACert == nil && e.ECCCert != nil && e.ECCPublic != nil {
		return e.ECCCert, e.ECCPublic
	}
	return e.RSACert, e.Public
}

// AKTemplate is the attestation key: a restricted ECDSA P-256 signing key
// (it signs only TPM-generated structures such as Certify's, which is what
// lets a verifier trust TPMS_ATTEST's magic), fixedTPM, fixedParent,
// sensitiveDataOrigin. It is a primary key of the endorsement hierarchy, so
// CreatePrimary derives the same AK from the endorsement seed every time and
// nothing about it is stored.
var AKTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		Restricted:          true,
		SignEncrypt:         true,
		NoDA:                true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// ReadEndorsement reads the EK certificates from NV and the RSA EK's public
// area (the persistent EK at 0x81010001 if there is one, else the TCG
// template's EK recreated from the endorsement seed and flushed).
func ReadEndorsement(t transport.TPM) (*Endorsement, error) {
	var e Endorsement
	var err error
	if e.RSACert, err = ReadNVCert(t, NVRSAEKCert); err != nil {
		return nil, err
	}
	for _, idx := range []uint32{NVECC384Cert, NVECCEKCert} {
		if e.ECCCert, err = ReadNVCert(t, idx); err != nil {
			return nil, err
		}
		if e.ECCCert != nil {
			break
		}
	}
	ek, err := loadEK(t)
	if err != nil {
		return nil, err
	}
	defer ek.flush(t)
	e.Public = ek.pub.Bytes()
	rp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(ECCEKHandle)}.Execute(t)
	switch {
	case err == nil:
		e.ECCPublic = rp.OutPublic.Bytes()
	case !errors.Is(err, tpm2.TPMRCHandle):
		return nil, fmt.Errorf("keystore: tpm: read persistent ECC EK 0x%08x: %w", ECCEKHandle, err)
	}
	return &e, nil
}

// loadEKFor returns the EK whose public area is ekPublic: the RSA EK, or
// the persistent ECC EK.
func loadEKFor(t transport.TPM, ekPublic []byte) (*object, error) {
	rp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(ECCEKHandle)}.Execute(t)
	if err == nil && bytes.Equal(rp.OutPublic.Bytes(), ekPublic) {
		return &object{handle: tpm2.TPMHandle(ECCEKHandle), name: rp.Name, pub: rp.OutPublic, persistent: true}, nil
	}
	ek, err := loadEK(t)
	if err != nil {
		return nil, err
	}
	if ekPublic != nil && !bytes.Equal(ek.pub.Bytes(), ekPublic) {
		ek.flush(t)
		return nil, errors.New("keystore: tpm: the challenge is for an EK this TPM does not have")
	}
	return ek, nil
}

// ekAuth authorizes the EK for ActivateCredential: the low-range templates
// (userWithAuth clear) only through their policy, PolicySecret on the
// endorsement hierarchy, in a session of the EK's name algorithm; the
// high-range ones (userWithAuth set) also by their empty authValue.
func ekAuth(ek *object) (tpm2.Session, error) {
	pa, err := ek.pub.Contents()
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: EK public area: %w", err)
	}
	if pa.ObjectAttributes.UserWithAuth {
		return tpm2.PasswordAuth(nil), nil
	}
	return tpm2.Policy(pa.NameAlg, 16, func(t transport.TPM, s tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
		_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: s, NonceTPM: nonce}.Execute(t)
		return err
	}), nil
}

// ReadNVCert reads a certificate from an NV index; nil, nil when the index
// is not defined.
func ReadNVCert(t transport.TPM, index uint32) ([]byte, error) {
	h := tpm2.TPMHandle(index)
	rp, err := tpm2.NVReadPublic{NVIndex: h}.Execute(t)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: read public area of NV index 0x%08x (EK certificate): %w", index, err)
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: NV index 0x%08x: %w", index, err)
	}
	if pub.DataSize > maxNVCertBytes {
		return nil, fmt.Errorf("keystore: tpm: NV index 0x%08x holds %d bytes, more than an EK certificate", index, pub.DataSize)
	}
	// TPM2_NVRead returns at most MAX_NV_BUFFER_SIZE (1024 on the
	// reference TPM) per call.
	var out []byte
	for off := 0; off < int(pub.DataSize); {
		n := min(int(pub.DataSize)-off, 1024)
		r, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: h, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: h, Name: rp.NVName},
			Size:       uint16(n),
			Offset:     uint16(off),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("keystore: tpm: read EK certificate from NV index 0x%08x: %w", index, err)
		}
		out = append(out, r.Data.Buffer...)
		off += n
	}
	return out, nil
}

// object is a loaded TPM object; flush releases its slot unless it is
// persistent.
type object struct {
	handle     tpm2.TPMHandle
	name       tpm2.TPM2BName
	pub        tpm2.TPM2BPublic
	persistent bool
}

func (o *object) flush(t transport.TPM) {
	if o.persistent || o.handle == 0 {
		return
	}
	_, _ = tpm2.FlushContext{FlushHandle: o.handle}.Execute(t)
	o.handle = 0
}

// loadEK returns the RSA EK: the persistent one when provisioning left it,
// else one derived from the TCG template (a transient object to flush).
func loadEK(t transport.TPM) (*object, error) {
	rp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(RSAEKHandle)}.Execute(t)
	if err == nil {
		return &object{handle: tpm2.TPMHandle(RSAEKHandle), name: rp.Name, pub: rp.OutPublic, persistent: true}, nil
	}
	if !errors.Is(err, tpm2.TPMRCHandle) {
		return nil, fmt.Errorf("keystore: tpm: read persistent EK 0x%08x: %w", RSAEKHandle, err)
	}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tpm2.RSAEKTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: create the RSA EK (endorsement hierarchy; an endorsement password is not supported): %w", err)
	}
	return &object{handle: rsp.ObjectHandle, name: rsp.Name, pub: rsp.OutPublic}, nil
}

// CreateAK derives the attestation key from tmpl (AKTemplate; tests pass
// others to see the CA refuse them). The caller flushes it.
func createAK(t transport.TPM, tmpl tpm2.TPMTPublic) (*object, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: create attestation key (endorsement hierarchy): %w", err)
	}
	return &object{handle: rsp.ObjectHandle, name: rsp.Name, pub: rsp.OutPublic}, nil
}

// AKPublic returns the marshalled TPMT_PUBLIC of the AK made from tmpl.
func AKPublic(t transport.TPM, tmpl tpm2.TPMTPublic) ([]byte, error) {
	ak, err := createAK(t, tmpl)
	if err != nil {
		return nil, err
	}
	defer ak.flush(t)
	return ak.pub.Bytes(), nil
}

// ActivateCredential answers the CA's credential challenge: the TPM
// releases the secret only if the AK named in the challenge is loaded in
// the TPM that holds the EK's private key. The EK is authorized by its
// standard policy, PolicySecret on the endorsement hierarchy.
func ActivateCredential(t transport.TPM, tmpl tpm2.TPMTPublic, ekPublic, credBlob, encSecret []byte) ([]byte, error) {
	ak, err := createAK(t, tmpl)
	if err != nil {
		return nil, err
	}
	defer ak.flush(t)
	return activate(t, ak, ekPublic, credBlob, encSecret)
}

func activate(t transport.TPM, ak *object, ekPublic, credBlob, encSecret []byte) ([]byte, error) {
	ek, err := loadEKFor(t, ekPublic)
	if err != nil {
		return nil, err
	}
	defer ek.flush(t)
	auth, err := ekAuth(ek)
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle:      tpm2.AuthHandle{Handle: ek.handle, Name: ek.name, Auth: auth},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: credBlob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: activate credential (the challenge was not made for this TPM's EK and AK, or it is damaged): %w", err)
	}
	return rsp.CertInfo.Buffer, nil
}

// Certification is TPM2_Certify's answer: the TPMS_ATTEST the AK signed and
// its TPMT_SIGNATURE, both marshalled, and the certified key's public area.
type Certification struct {
	Attest    []byte
	Signature []byte
	KeyPublic []byte
}

// CertifyKey has the AK certify the loaded object key (authorized by
// keyAuth) with nonce as qualifying data.
func CertifyKey(t transport.TPM, tmpl tpm2.TPMTPublic, key tpm2.AuthHandle, keyPub []byte, nonce []byte) (*Certification, error) {
	ak, err := createAK(t, tmpl)
	if err != nil {
		return nil, err
	}
	defer ak.flush(t)
	return certify(t, ak, key, keyPub, nonce)
}

func certify(t transport.TPM, ak *object, key tpm2.AuthHandle, keyPub []byte, nonce []byte) (*Certification, error) {
	rsp, err := tpm2.Certify{
		ObjectHandle:   key,
		SignHandle:     tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: certify the device key with the attestation key: %w", err)
	}
	return &Certification{Attest: rsp.CertifyInfo.Bytes(), Signature: tpm2.Marshal(rsp.Signature), KeyPublic: keyPub}, nil
}

// Endorsement reads this TPM's EK certificates and EK public area.
func (s *Store) Endorsement() (*Endorsement, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, ErrClosed
	}
	return ReadEndorsement(s.tpm)
}

// AKPublic returns the attestation key's public area (TPMT_PUBLIC).
func (s *Store) AKPublic() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, ErrClosed
	}
	return AKPublic(s.tpm, AKTemplate)
}

// ActivateCredential answers a credential challenge for this TPM's AK.
func (s *Store) ActivateCredential(ekPublic, credBlob, encSecret []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, ErrClosed
	}
	// The EK and the AK need two object slots: the device key leaves its
	// own (it is loaded again when it next signs).
	if s.cur != nil {
		s.unloadLocked(s.cur)
	}
	s.dropAKLocked()
	ak, err := createAK(s.tpm, AKTemplate)
	if err != nil {
		return nil, err
	}
	secret, err := activate(s.tpm, ak, ekPublic, credBlob, encSecret)
	if err != nil {
		ak.flush(s.tpm)
		return nil, err
	}
	// Kept for the Certify that follows at once (no round trip in
	// between): one AK derivation less, which is what costs on a TPM.
	s.ak = ak
	return secret, nil
}

// Certify has the AK certify the current device key with nonce. The device
// key is flushed first and loaded again after: Certify needs the AK and the
// key at once, and the reference TPM has only three object slots.
func (s *Store) Certify(nonce []byte) (*Certification, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, ErrClosed
	}
	k := s.cur
	if k == nil {
		return nil, errors.New("keystore: tpm: certify: no current device key (call Current or Create first)")
	}
	if err := s.loadLocked(k); err != nil {
		return nil, err
	}
	ak := s.ak
	s.ak = nil
	if ak == nil {
		var err error
		if ak, err = createAK(s.tpm, AKTemplate); err != nil {
			return nil, err
		}
	}
	defer ak.flush(s.tpm)
	return certify(s.tpm, ak, tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(s.opts.AuthValue)}, k.pub.Bytes(), nonce)
}

// dropAKLocked flushes the AK kept from ActivateCredential, if any.
func (s *Store) dropAKLocked() {
	if s.ak != nil {
		s.ak.flush(s.tpm)
		s.ak = nil
	}
}
