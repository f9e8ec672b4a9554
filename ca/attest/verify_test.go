package attest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeagent/edgeagent/ca/attest"
	wire "github.com/edgeagent/edgeagent/enroll/attest"
	"github.com/edgeagent/edgeagent/keystore/tpm"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// rig is one manufactured swtpm spoken to with raw commands, so that the
// tests can make evidence the agent never would.
type rig struct {
	tp  transport.TPM
	m   *swtpm.Manufacturer
	end *tpm.Endorsement
}

func newRig(t *testing.T, m *swtpm.Manufacturer) *rig {
	t.Helper()
	s := swtpm.StartWithEK(t, m)
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	tp := transport.FromReadWriteCloser(conn)
	t.Cleanup(func() { tp.Close() })
	end, err := tpm.ReadEndorsement(tp)
	if err != nil {
		t.Fatal(err)
	}
	if end.RSACert == nil || end.ECCCert == nil || end.ECCPublic == nil {
		t.Fatalf("manufactured swtpm lacks EK certificates: rsa %v ecc %v", end.RSACert != nil, end.ECCCert != nil)
	}
	return &rig{tp: tp, m: m, end: end}
}

// deviceKey creates and loads a signing key under the SRK; fixed false
// makes a duplicable one.
func (r *rig) deviceKey(t *testing.T, fixed bool) (tpm2.AuthHandle, []byte, crypto.PublicKey) {
	t.Helper()
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(r.tp)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(r.tp)
	tmpl := tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: fixed, FixedParent: fixed, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true},
		Parameters:       tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{CurveID: tpm2.TPMECCNistP256}),
		Unique:           tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
	parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
	c, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(tmpl)}.Execute(r.tp)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tpm2.Load{ParentHandle: parent, InPrivate: c.OutPrivate, InPublic: c.OutPublic}.Execute(r.tp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm2.FlushContext{FlushHandle: l.ObjectHandle}.Execute(r.tp) })
	pa, _ := c.OutPublic.Contents()
	pk, err := tpm2.Pub(*pa)
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.AuthHandle{Handle: l.ObjectHandle, Name: l.Name, Auth: tpm2.PasswordAuth(nil)}, c.OutPublic.Bytes(), pk
}

func config(roots ...*swtpm.Manufacturer) attest.Config {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, m := range roots {
		rp.AddCert(m.Root)
		ip.AddCert(m.Issuer)
	}
	return attest.Config{Roots: rp, Intermediates: ip}
}

// flow runs start, activation, Certify and finish, with knobs that break
// one step each.
type knobs struct {
	noCert       bool
	akTemplate   *tpm2.TPMTPublic
	wrongSecret  bool
	notFixed     bool
	eccEK        bool
	otherCSRKey  bool
	finishTwice  bool
	advanceClock time.Duration
}

func run(t *testing.T, r *rig, v *attest.Verifier, clock *time.Time, k knobs) (*attest.Result, error) {
	t.Helper()
	akT := tpm.AKTemplate
	if k.akTemplate != nil {
		akT = *k.akTemplate
	}
	akPub, err := tpm.AKPublic(r.tp, akT)
	if err != nil {
		t.Fatal(err)
	}
	req := wire.StartRequest{EKCert: r.end.RSACert, EKPublic: r.end.Public, AKPublic: akPub}
	if k.eccEK {
		req.EKCert, req.EKPublic = r.end.ECCCert, r.end.ECCPublic
	}
	if k.noCert {
		req.EKCert = nil
	}
	ch, err := v.Start(req)
	if err != nil {
		return nil, err
	}
	secret, err := tpm.ActivateCredential(r.tp, akT, req.EKPublic, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatalf("activate: %v", err)
	}
	if k.wrongSecret {
		secret[0] ^= 1
	}
	key, keyPub, pk := r.deviceKey(t, !k.notFixed)
	cert, err := tpm.CertifyKey(r.tp, akT, key, keyPub, ch.Nonce)
	if err != nil {
		t.Fatalf("certify: %v", err)
	}
	if k.otherCSRKey {
		sk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		pk = sk.Public()
	}
	*clock = clock.Add(k.advanceClock)
	fin := wire.FinishRequest{ID: ch.ID, Secret: secret, CertifyInfo: cert.Attest, CertifySignature: cert.Signature, KeyPublic: cert.KeyPublic}
	res, err := v.Finish(fin, pk)
	if k.finishTwice && err == nil {
		return v.Finish(fin, pk)
	}
	return res, err
}

func TestAttestation(t *testing.T) {
	good := swtpm.TestManufacturer(t)
	other := swtpm.TestManufacturer(t)
	r := newRig(t, good)
	stranger := newRig(t, other)

	unrestricted := tpm.AKTemplate
	unrestricted.ObjectAttributes.Restricted = false
	unrestricted.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{CurveID: tpm2.TPMECCNistP256})

	ekPub, _ := tpm2.Unmarshal[tpm2.TPMTPublic](r.end.Public)
	pk, _ := tpm2.Pub(*ekPub)
	ekHash, _ := attest.EKHash(pk)
	eccPub, _ := tpm2.Unmarshal[tpm2.TPMTPublic](r.end.ECCPublic)
	eccPK, _ := tpm2.Pub(*eccPub)
	eccHash, _ := attest.EKHash(eccPK)

	for _, tc := range []struct {
		name      string
		rig       *rig
		allow     bool
		k         knobs
		wantStage string
		wantIn    string
	}{
		{name: "by certificate", rig: r},
		{name: "by ECC P-384 EK certificate", rig: r, k: knobs{eccEK: true}},
		{name: "by allowlist, no certificate", rig: r, allow: true, k: knobs{noCert: true}},
		{name: "other manufacturer", rig: stranger, wantStage: "ek", wantIn: "does not chain"},
		{name: "not on allowlist", rig: r, k: knobs{noCert: true}, wantStage: "ek", wantIn: "not on the allowlist"},
		{name: "replayed nonce", rig: r, k: knobs{finishTwice: true}, wantStage: "challenge", wantIn: "already used"},
		{name: "expired nonce", rig: r, k: knobs{advanceClock: attest.DefaultNonceTTL + time.Second}, wantStage: "challenge", wantIn: "expired"},
		{name: "AK not restricted", rig: r, k: knobs{akTemplate: &unrestricted}, wantStage: "ak", wantIn: "lack restricted"},
		{name: "device key not fixedTPM", rig: r, k: knobs{notFixed: true}, wantStage: "key", wantIn: "lack fixedTPM"},
		{name: "CSR key not the certified key", rig: r, k: knobs{otherCSRKey: true}, wantStage: "key", wantIn: "not the certified TPM key"},
		{name: "wrong activation answer", rig: r, k: knobs{wrongSecret: true}, wantStage: "challenge", wantIn: "wrong credential activation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(good)
			clock := time.Now()
			cfg.Now = func() time.Time { return clock }
			if tc.allow {
				cfg.Allowlist = map[[32]byte]bool{ekHash: true}
			}
			res, err := run(t, tc.rig, attest.New(cfg), &clock, tc.k)
			if tc.wantStage == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				want := ekHash
				if tc.k.eccEK {
					want = eccHash
				}
				if res.EKHash != want {
					t.Fatalf("EK hash %x, want %x", res.EKHash, want)
				}
				return
			}
			ae, ok := err.(*attest.Error)
			if !ok {
				t.Fatalf("got %v (%T), want a refusal at %s", err, err, tc.wantStage)
			}
			if ae.Stage != tc.wantStage || !strings.Contains(ae.Reason, tc.wantIn) {
				t.Fatalf("refused with %v, want stage %s containing %q", err, tc.wantStage, tc.wantIn)
			}
		})
	}
}

func TestParseEKCertKeepsOtherCriticalExtensions(t *testing.T) {
	m := swtpm.TestManufacturer(t)
	r := newRig(t, m)
	c, err := attest.ParseEKCert(r.end.RSACert)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := x509.ParseCertificate(r.end.RSACert)
	if len(raw.UnhandledCriticalExtensions) == 0 {
		t.Fatal("expected Go to list the TCG SAN as unhandled critical; the test premise changed")
	}
	if len(c.UnhandledCriticalExtensions) != 0 {
		t.Fatalf("unhandled after parse: %v", c.UnhandledCriticalExtensions)
	}
}

// TestAllowlistedEKWithoutCertificate: a TPM with no EK certificate and no
// persistent EK (a plain swtpm): the agent derives the RSA EK from the
// TCG template, and the CA accepts it by its allowlisted hash only.
func TestAllowlistedEKWithoutCertificate(t *testing.T) {
	s := swtpm.Start(t)
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	tp := transport.FromReadWriteCloser(conn)
	defer tp.Close()
	end, err := tpm.ReadEndorsement(tp)
	if err != nil {
		t.Fatal(err)
	}
	if end.RSACert != nil || end.ECCCert != nil || end.ECCPublic != nil || end.Public == nil {
		t.Fatalf("plain swtpm endorsement: %+v", end)
	}
	r := &rig{tp: tp, end: end}
	ekPub, _ := tpm2.Unmarshal[tpm2.TPMTPublic](end.Public)
	pk, _ := tpm2.Pub(*ekPub)
	h, _ := attest.EKHash(pk)
	for _, tc := range []struct {
		name  string
		allow map[[32]byte]bool
		ok    bool
	}{{"allowlisted", map[[32]byte]bool{h: true}, true}, {"not allowlisted", map[[32]byte]bool{{1}: true}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			clock := time.Now()
			v := attest.New(attest.Config{Allowlist: tc.allow, Now: func() time.Time { return clock }})
			res, err := run(t, r, v, &clock, knobs{noCert: true})
			if tc.ok != (err == nil) {
				t.Fatalf("err %v, want ok %v", err, tc.ok)
			}
			if tc.ok && res.EKHash != h {
				t.Fatalf("EK hash %x, want %x", res.EKHash, h)
			}
		})
	}
	// The EK and AK were flushed: no transient object is left behind.
	if n := transients(t, tp); n > 0 {
		t.Fatalf("%d transient objects left loaded", n)
	}
	// (and the count sees one when there is one)
	p, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: p.ObjectHandle}.Execute(tp)
	if n := transients(t, tp); n != 1 {
		t.Fatalf("%d transient objects listed, want 1", n)
	}
}

func transients(t *testing.T, tp transport.TPM) int {
	t.Helper()
	caps, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(tpm2.TPMHTTransient) << 24, PropertyCount: 16}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := caps.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return len(hs.Handle)
}
