// Package attest is edgeca's side of attested enrollment (see
// enroll/attest for the wire protocol): it checks that an EK belongs to a
// genuine TPM (its certificate chains to a configured manufacturer root, or
// its public key hash is on an allowlist), challenges the AK with a
// credential only that TPM can activate, and checks TPM2_Certify's proof
// that the device key is a fixedTPM key of the same TPM. It needs no TPM:
// the credential is made in software (go-tpm's CreateCredential).
package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeagent/edgeagent/enroll/attest"
)

// Defaults for Config.
const (
	DefaultNonceTTL   = 2 * time.Minute
	DefaultMaxPending = 4096
	nonceBytes        = 32
)

// Error is a refusal; Reason says which check failed, for the client and
// the audit log alike (nothing in it is secret).
type Error struct {
	Stage  string // "ek", "ak", "challenge", "certify", "key"
	Reason string
}

func (e *Error) Error() string { return "attestation refused (" + e.Stage + "): " + e.Reason }

func refuse(stage, format string, a ...any) error {
	return &Error{Stage: stage, Reason: fmt.Sprintf(format, a...)}
}

// ErrBusy is returned by Start when too many challenges are pending.
var ErrBusy = errors.New("too many attestations in progress")

// Config configures a Verifier.
type Config struct {
	// Roots are the TPM manufacturers' root CAs; Intermediates their
	// issuing CAs (also accepted from the roots file when not self-signed).
	Roots, Intermediates *x509.CertPool
	// Allowlist holds SHA-256 hashes of EK public keys (PKIX DER) accepted
	// without a certificate.
	Allowlist map[[32]byte]bool
	NonceTTL  time.Duration
	// MaxPending bounds the challenges held at once: an unauthenticated
	// peer can make us hold one each.
	MaxPending int
	Now        func() time.Time
}

// Verifier holds the pending challenges.
type Verifier struct {
	cfg     Config
	mu      sync.Mutex
	pending map[string]*challenge
}

type challenge struct {
	nonce, secret []byte
	akPub         *tpm2.TPMTPublic
	ekHash        [32]byte
	expires       time.Time
}

// New returns a Verifier.
func New(cfg Config) *Verifier {
	if cfg.NonceTTL <= 0 {
		cfg.NonceTTL = DefaultNonceTTL
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{cfg: cfg, pending: map[string]*challenge{}}
}

// Start checks the EK and the AK and returns the challenge.
func (v *Verifier) Start(req attest.StartRequest) (resp *attest.StartResponse, err error) {
	defer recoverRefusal("ak", &err)
	ekPub, err := parsePublic(req.EKPublic, "ek", "EK public area")
	if err != nil {
		return nil, err
	}
	ekHash, err := v.checkEK(req.EKCert, ekPub)
	if err != nil {
		return nil, err
	}
	akPub, err := parsePublic(req.AKPublic, "ak", "AK public area")
	if err != nil {
		return nil, err
	}
	if err := CheckAK(akPub); err != nil {
		return nil, err
	}
	akName, err := tpm2.ObjectName(akPub)
	if err != nil {
		return nil, refuse("ak", "cannot compute the AK's name: %v", err)
	}
	kem, err := tpm2.ImportEncapsulationKey(ekPub)
	if err != nil {
		return nil, refuse("ek", "the EK cannot receive a credential: %v", err)
	}
	secret := make([]byte, 32)
	nonce := make([]byte, nonceBytes)
	idb := make([]byte, 16)
	for _, b := range [][]byte{secret, nonce, idb} {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("attest: random: %w", err)
		}
	}
	blob, enc, err := tpm2.CreateCredential(rand.Reader, kem, akName.Buffer, secret)
	if err != nil {
		return nil, fmt.Errorf("attest: create credential: %w", err)
	}
	id := hex.EncodeToString(idb)
	now := v.cfg.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.pending) >= v.cfg.MaxPending {
		for k, c := range v.pending {
			if !now.Before(c.expires) {
				delete(v.pending, k)
			}
		}
		if len(v.pending) >= v.cfg.MaxPending {
			return nil, ErrBusy
		}
	}
	v.pending[id] = &challenge{nonce: nonce, secret: secret, akPub: akPub, ekHash: ekHash, expires: now.Add(v.cfg.NonceTTL)}
	return &attest.StartResponse{ID: id, Nonce: nonce, CredentialBlob: blob, EncryptedSecret: enc,
		ExpiresInSeconds: int(v.cfg.NonceTTL / time.Second)}, nil
}

// Result is what a successful Finish proved.
type Result struct {
	// EKHash is the SHA-256 of the EK public key (PKIX DER): the TPM's
	// identity, recorded with the device.
	EKHash [32]byte
}

// Finish checks the answers: the challenge is taken (single use, whatever
// the outcome), the activated secret must match, Certify must be signed by
// the AK over the nonce and name the device key, which must be a fixedTPM
// signing key whose public key is csrKey.
func (v *Verifier) Finish(req attest.FinishRequest, csrKey crypto.PublicKey) (res *Result, err error) {
	defer recoverRefusal("key", &err)
	now := v.cfg.Now()
	v.mu.Lock()
	c, ok := v.pending[req.ID]
	delete(v.pending, req.ID)
	v.mu.Unlock()
	if !ok {
		return nil, refuse("challenge", "unknown or already used attestation id: start again (nonces are single-use)")
	}
	if !now.Before(c.expires) {
		return nil, refuse("challenge", "the nonce expired at %s: start again", c.expires.UTC().Format(time.RFC3339))
	}
	if subtle.ConstantTimeCompare(req.Secret, c.secret) != 1 {
		return nil, refuse("challenge", "wrong credential activation answer: the AK is not in the TPM that holds this EK")
	}
	keyPub, err := parsePublic(req.KeyPublic, "key", "device key public area")
	if err != nil {
		return nil, err
	}
	if err := CheckDeviceKey(keyPub); err != nil {
		return nil, err
	}
	if err := CheckCertify(c.akPub, req.CertifyInfo, req.CertifySignature, c.nonce, keyPub); err != nil {
		return nil, err
	}
	kp, err := tpm2.Pub(*keyPub)
	if err != nil {
		return nil, refuse("key", "device key public area: %v", err)
	}
	if !samePublicKey(kp, csrKey) {
		return nil, refuse("key", "the CSR's public key is not the certified TPM key")
	}
	return &Result{EKHash: c.ekHash}, nil
}

// recoverRefusal turns a panic of go-tpm's reflection-based code on a
// hostile public area (none is known; the fuzz tests look for them) into a
// refusal.
func recoverRefusal(stage string, err *error) {
	if r := recover(); r != nil {
		*err = refuse(stage, "malformed TPM structure (%v)", r)
	}
}

func samePublicKey(a, b crypto.PublicKey) bool {
	type eq interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(eq)
	return ok && ea.Equal(b)
}

// parsePublic decodes a TPMT_PUBLIC, refusing trailing or non-canonical
// bytes (go-tpm's decoder is not written for hostile input: recover).
func parsePublic(b []byte, stage, what string) (pub *tpm2.TPMTPublic, err error) {
	defer func() {
		if r := recover(); r != nil {
			pub, err = nil, refuse(stage, "%s is malformed (%v)", what, r)
		}
	}()
	if len(b) == 0 {
		return nil, refuse(stage, "%s is missing", what)
	}
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, refuse(stage, "%s is malformed: %v", what, err)
	}
	if !bytes.Equal(tpm2.Marshal(p), b) {
		return nil, refuse(stage, "%s has trailing or non-canonical bytes", what)
	}
	return p, nil
}

// EKHash is the SHA-256 of the public key's PKIX DER, as the allowlist and
// the device registry hold it.
func EKHash(pub crypto.PublicKey) ([32]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(der), nil
}

// checkEK accepts the EK by certificate chain or allowlist and returns its
// hash.
func (v *Verifier) checkEK(certDER []byte, ekPub *tpm2.TPMTPublic) ([32]byte, error) {
	a := ekPub.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.Restricted || !a.Decrypt || a.SignEncrypt {
		return [32]byte{}, refuse("ek", "the EK public area is not a restricted decryption key fixed to its TPM")
	}
	pk, err := tpm2.Pub(*ekPub)
	if err != nil {
		return [32]byte{}, refuse("ek", "EK public key: %v", err)
	}
	h, err := EKHash(pk)
	if err != nil {
		return [32]byte{}, refuse("ek", "EK public key: %v", err)
	}
	if v.cfg.Allowlist[h] {
		return h, nil
	}
	if len(certDER) == 0 {
		return h, refuse("ek", "the TPM sent no EK certificate and its EK (sha256 %x) is not on the allowlist", h)
	}
	if v.cfg.Roots == nil {
		return h, refuse("ek", "no manufacturer roots are configured and the EK (sha256 %x) is not on the allowlist", h)
	}
	cert, err := ParseEKCert(certDER)
	if err != nil {
		return h, refuse("ek", "%v", err)
	}
	if !samePublicKey(pk, cert.PublicKey) {
		return h, refuse("ek", "the EK certificate is for another key than the EK public area sent")
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:         v.cfg.Roots,
		Intermediates: v.cfg.Intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		CurrentTime:   v.cfg.Now(),
	}); err != nil {
		return h, refuse("ek", "the EK certificate (issuer %q) does not chain to a configured manufacturer root: %v", cert.Issuer, err)
	}
	return h, nil
}

var (
	oidSAN          = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufact  = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel     = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion   = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	dirNameTag      = 4
	maxEKCertBytes  = 8 << 10
	errNoTPMSANInfo = errors.New("the critical SubjectAltName holds no TPM manufacturer, model and version")
)

// ParseEKCert parses a TCG EK certificate. Its subject is empty and its
// SubjectAltName, marked critical, holds only a directoryName with the TPM
// manufacturer, model and version (TCG EK Credential Profile 3.2.9), which
// Go's x509 does not understand and so lists as an unhandled critical
// extension, failing every Verify. Here the SAN is checked to be exactly
// that, and only then taken off the unhandled list; any other unhandled
// critical extension still fails verification.
func ParseEKCert(der []byte) (*x509.Certificate, error) {
	if len(der) > maxEKCertBytes {
		return nil, fmt.Errorf("the EK certificate is %d bytes, over the %d byte limit", len(der), maxEKCertBytes)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("the EK certificate does not parse: %w", err)
	}
	var keep []asn1.ObjectIdentifier
	for _, oid := range cert.UnhandledCriticalExtensions {
		if !oid.Equal(oidSAN) {
			keep = append(keep, oid)
			continue
		}
		for _, e := range cert.Extensions {
			if e.Id.Equal(oidSAN) {
				if err := checkTPMSAN(e.Value); err != nil {
					return nil, fmt.Errorf("EK certificate: %w", err)
				}
			}
		}
	}
	cp := *cert
	cp.UnhandledCriticalExtensions = keep
	return &cp, nil
}

// checkTPMSAN accepts a SAN of directoryNames that carry the TCG TPM
// attributes.
func checkTPMSAN(v []byte) error {
	var names []asn1.RawValue
	if rest, err := asn1.Unmarshal(v, &names); err != nil || len(rest) != 0 {
		return fmt.Errorf("the SubjectAltName is malformed")
	}
	seen := map[string]bool{}
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific || n.Tag != dirNameTag {
			return fmt.Errorf("the critical SubjectAltName holds a name other than the TPM's directoryName")
		}
		var rdn []asn1.RawValue // RDNSequence: SET OF AttributeTypeAndValue
		if rest, err := asn1.Unmarshal(n.Bytes, &rdn); err != nil || len(rest) != 0 {
			return fmt.Errorf("the SubjectAltName directoryName is malformed")
		}
		for _, set := range rdn {
			var atvs []struct {
				Type  asn1.ObjectIdentifier
				Value asn1.RawValue
			}
			if _, err := asn1.UnmarshalWithParams(set.FullBytes, &atvs, "set"); err != nil {
				return fmt.Errorf("the SubjectAltName directoryName is malformed")
			}
			for _, a := range atvs {
				for _, o := range []asn1.ObjectIdentifier{oidTPMManufact, oidTPMModel, oidTPMVersion} {
					if a.Type.Equal(o) {
						seen[o.String()] = true
					}
				}
			}
		}
	}
	if len(seen) != 3 {
		return errNoTPMSANInfo
	}
	return nil
}

// CheckAK refuses an AK that is not a restricted signing key created in and
// fixed to its TPM: only a restricted key refuses to sign data that looks
// like TPMS_ATTEST, which is what makes Certify's answer evidence.
func CheckAK(p *tpm2.TPMTPublic) error {
	a := p.ObjectAttributes
	var missing []string
	for _, c := range []struct {
		ok   bool
		name string
	}{
		{a.Restricted, "restricted"}, {a.SignEncrypt, "sign"}, {!a.Decrypt, "not decrypt"},
		{a.FixedTPM, "fixedTPM"}, {a.FixedParent, "fixedParent"}, {a.SensitiveDataOrigin, "sensitiveDataOrigin"},
	} {
		if !c.ok {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return refuse("ak", "the AK is not an attestation key: its attributes lack %s", strings.Join(missing, ", "))
	}
	if p.NameAlg != tpm2.TPMAlgSHA256 {
		return refuse("ak", "the AK's name algorithm must be SHA-256")
	}
	return nil
}

// CheckDeviceKey refuses a device key that could leave the TPM or was
// imported.
func CheckDeviceKey(p *tpm2.TPMTPublic) error {
	a := p.ObjectAttributes
	var missing []string
	for _, c := range []struct {
		ok   bool
		name string
	}{
		{a.FixedTPM, "fixedTPM"}, {a.FixedParent, "fixedParent"}, {a.SensitiveDataOrigin, "sensitiveDataOrigin"},
		{a.SignEncrypt, "sign"},
	} {
		if !c.ok {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return refuse("key", "the device key is not bound to the TPM: its attributes lack %s", strings.Join(missing, ", "))
	}
	return nil
}

// CheckCertify verifies TPM2_Certify's answer: signed by the AK, made by a
// TPM (magic), of type certify, over nonce, naming the key whose public area
// is keyPub.
func CheckCertify(akPub *tpm2.TPMTPublic, info, sig, nonce []byte, keyPub *tpm2.TPMTPublic) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = refuse("certify", "Certify's answer is malformed (%v)", r)
		}
	}()
	ak, err := tpm2.Pub(*akPub)
	if err != nil {
		return refuse("ak", "AK public key: %v", err)
	}
	s, err := tpm2.Unmarshal[tpm2.TPMTSignature](sig)
	if err != nil {
		return refuse("certify", "Certify's signature is malformed: %v", err)
	}
	digest := sha256.Sum256(info)
	switch k := ak.(type) {
	case *ecdsa.PublicKey:
		e, err := s.Signature.ECDSA()
		if err != nil || s.SigAlg != tpm2.TPMAlgECDSA || e.Hash != tpm2.TPMAlgSHA256 {
			return refuse("certify", "Certify's signature is not ECDSA with SHA-256, as the AK's")
		}
		r, ss := new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)
		if !ecdsa.Verify(k, digest[:], r, ss) {
			return refuse("certify", "Certify's signature does not verify with the AK")
		}
	case *rsa.PublicKey:
		r, err := s.Signature.RSASSA()
		if err != nil || s.SigAlg != tpm2.TPMAlgRSASSA || r.Hash != tpm2.TPMAlgSHA256 {
			return refuse("certify", "Certify's signature is not RSASSA with SHA-256, as the AK's")
		}
		if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], r.Sig.Buffer); err != nil {
			return refuse("certify", "Certify's signature does not verify with the AK")
		}
	default:
		return refuse("ak", "unsupported AK key type")
	}
	// Decoded only after the signature verified: the bytes are the TPM's.
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](info)
	if err != nil {
		return refuse("certify", "Certify's TPMS_ATTEST is malformed (or its magic is not TPM_GENERATED): %v", err)
	}
	if att.Magic != tpm2.TPMGeneratedValue {
		return refuse("certify", "TPMS_ATTEST magic is 0x%08x, not TPM_GENERATED", uint32(att.Magic))
	}
	if att.Type != tpm2.TPMSTAttestCertify {
		return refuse("certify", "TPMS_ATTEST is of type 0x%04x, not a certification", uint16(att.Type))
	}
	if subtle.ConstantTimeCompare(att.ExtraData.Buffer, nonce) != 1 {
		return refuse("certify", "Certify's qualifying data is not this attempt's nonce (a replayed Certify?)")
	}
	ci, err := att.Attested.Certify()
	if err != nil {
		return refuse("certify", "TPMS_ATTEST holds no certify info: %v", err)
	}
	name, err := tpm2.ObjectName(keyPub)
	if err != nil {
		return refuse("key", "cannot compute the device key's name: %v", err)
	}
	if !bytes.Equal(ci.Name.Buffer, name.Buffer) {
		return refuse("certify", "Certify names another key than the device key public area sent")
	}
	return nil
}
