package tpm

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// TestClassify is the table of TPM failures an operator can act on: each
// must map to its sentinel and say what to do.
func TestClassify(t *testing.T) {
	dev := env{device: "/dev/tpmrm0", group: "tss", dir: "/var/lib/edgeagent"}
	// TPM format-1 codes carry the failing handle/parameter in extra bits;
	// classification must see through them.
	fmt1 := func(rc tpm2.TPMRC, bits uint32) error { return fmt.Errorf("wrapped: %w", tpm2.TPMRC(uint32(rc)|bits)) }
	tests := []struct {
		name string
		op   opKind
		env  env
		err  error
		kind error
		want []string
	}{
		{"no device", opOpen, dev, &fs.PathError{Op: "stat", Path: "/dev/tpmrm0", Err: syscall.ENOENT}, ErrNoDevice,
			[]string{"/dev/tpmrm0 is missing", "tpm_tis", "tpm_crb"}},
		{"permission denied", opOpen, dev, &fs.PathError{Op: "open", Path: "/dev/tpmrm0", Err: syscall.EACCES}, ErrPermission,
			[]string{"group tss", "add the service user"}},
		{"permission denied, root-owned device", opOpen, env{device: "/dev/tpmrm0", group: "root"}, &fs.PathError{Op: "open", Path: "/dev/tpmrm0", Err: syscall.EACCES}, ErrPermission,
			[]string{"group tss"}},
		{"lockout on sign", opUseKey, dev, tpm2.TPMRCLockout, ErrLockout,
			[]string{"lockout", "tpm2_dictionarylockout"}},
		{"lockout on load", opLoad, dev, tpm2.TPMRCLockout, ErrLockout, []string{"lockout"}},
		{"owner bad auth", opOwner, dev, fmt1(tpm2.TPMRCBadAuth, 0x100|0x800), ErrOwnerAuth,
			[]string{"owner", "password"}},
		{"owner auth fail", opOwner, dev, fmt1(tpm2.TPMRCAuthFail, 0x900), ErrOwnerAuth, []string{"owner"}},
		{"key auth fail", opUseKey, dev, fmt1(tpm2.TPMRCAuthFail, 0x900), ErrKeyAuth, []string{"auth value"}},
		{"blobs of another TPM", opLoad, dev, fmt1(tpm2.TPMRCIntegrity, 0x100|0x40), ErrForeignKey,
			[]string{"key blobs in /var/lib/edgeagent were made by a different TPM or the TPM was cleared; re-enroll"}},
		{"unsupported key size", opOther, dev, fmt1(tpm2.TPMRCKeySize, 0x140), ErrUnsupported, []string{"ecdsa-p256"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.op, "doing it", tc.err, tc.env)
			if !errors.Is(got, tc.kind) {
				t.Fatalf("classify = %v, want %v", got, tc.kind)
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("classify lost the cause: errors.Is(%v, %v) = false", got, tc.err)
			}
			for _, w := range tc.want {
				if !strings.Contains(got.Error(), w) {
					t.Errorf("%q does not say %q", got, w)
				}
			}
		})
	}

	// Errors that are none of the above keep their cause and no sentinel.
	other := classify(opUseKey, "sign", tpm2.TPMRCValue, dev)
	for _, s := range []error{ErrNoDevice, ErrPermission, ErrLockout, ErrOwnerAuth, ErrKeyAuth, ErrForeignKey} {
		if errors.Is(other, s) {
			t.Errorf("TPM_RC_VALUE classified as %v", s)
		}
	}
	if !errors.Is(other, tpm2.TPMRCValue) {
		t.Errorf("classify lost the cause: %v", other)
	}
	if classify(opOther, "x", nil, dev) != nil {
		t.Error("classify(nil) != nil")
	}
	// The same code means different things in different places: a bad
	// auth during Load is not the owner's.
	if errors.Is(classify(opUseKey, "x", tpm2.TPMRCBadAuth, dev), ErrOwnerAuth) {
		t.Error("key auth failure classified as owner auth")
	}
	if errors.Is(classify(opOther, "x", tpm2.TPMRCIntegrity, dev), ErrForeignKey) {
		t.Error("an integrity error outside Load classified as foreign blobs")
	}
}

// TestOpenErrors opens real missing and unreadable devices and a dead
// simulator address.
func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "tpmrm0")
	_, err := Open(Options{Device: missing, Dir: dir})
	if !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), missing+" is missing") || !strings.Contains(err.Error(), "address") {
		t.Errorf("Open(missing device) = %v, want ErrNoDevice naming the device and the simulator option", err)
	}

	// A closed port: listen, note the address, close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := Open(Options{Address: addr, Dir: dir}); !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), addr) {
		t.Errorf("Open(dead address) = %v, want ErrNoDevice naming %s", err, addr)
	}

	if os.Geteuid() != 0 {
		// Root opens any file; only a non-root run can see EACCES.
		f := filepath.Join(dir, "noaccess")
		if err := os.WriteFile(f, nil, 0o000); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(Options{Device: f, Dir: dir}); err == nil {
			t.Error("Open(unreadable device) succeeded")
		}
	}

	for _, o := range []Options{
		{Address: "127.0.0.1:1"},
		{Device: "/dev/tpmrm0", Address: "127.0.0.1:1", Dir: dir},
		{Address: "127.0.0.1:1", Dir: dir, PersistentHandle: 0x80000001},
	} {
		if _, err := Open(o); err == nil {
			t.Errorf("Open(%+v) accepted an invalid configuration", o)
		}
	}
}

func TestInfo(t *testing.T) {
	sw := swtpm.Start(t)
	s := openStore(t, sw, t.TempDir())
	info := s.Info()
	if info.Backend != "tpm" {
		t.Errorf("Backend = %q", info.Backend)
	}
	d := info.Details
	t.Logf("TPM info: %v", d)
	// swtpm (libtpms) reports IBM as the manufacturer.
	if d["manufacturer"] != "IBM" {
		t.Errorf("manufacturer = %q, want IBM (swtpm)", d["manufacturer"])
	}
	if d["firmware"] == "" || d["firmware"] == "0.0.0.0" {
		t.Errorf("firmware = %q", d["firmware"])
	}
	if d["vendor"] == "" {
		t.Errorf("vendor = %q", d["vendor"])
	}
	if d["address"] != sw.Addr() {
		t.Errorf("address = %q, want %q", d["address"], sw.Addr())
	}
	d["manufacturer"] = "changed"
	if s.Info().Details["manufacturer"] == "changed" {
		t.Error("Info hands out its internal map")
	}
}

func TestFourCCAndFirmware(t *testing.T) {
	for _, tc := range []struct {
		v    uint32
		want string
	}{
		{0x49424d00, "IBM"},
		{0x494e5443, "INTC"},
		{0x53544d20, "STM"},
		{0, ""},
	} {
		if got := fourCC(tc.v); got != tc.want {
			t.Errorf("fourCC(%#x) = %q, want %q", tc.v, got, tc.want)
		}
	}
	if got := firmwareVersion(0x00070055, 0x00110000); got != "7.85.17.0" {
		t.Errorf("firmwareVersion = %q", got)
	}
}

// TestPSSSaltLength: the TPM (swtpm follows FIPS 186-4: salt = hash
// length) satisfies TLS 1.3's requirement; a salt length it cannot produce
// is a clear error, not a signature the peer rejects.
func TestPSSSaltLength(t *testing.T) {
	sw := swtpm.Start(t)
	s := openStore(t, sw, t.TempDir())
	k, err := s.Create(keystore.RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("pss"))
	sig, err := k.Sign(rand.Reader, d[:], &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: rsa.PSSSaltLengthAuto})
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public().(*rsa.PublicKey)
	if err := rsa.VerifyPSS(pub, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: 32}); err != nil {
		t.Fatalf("swtpm's PSS salt is not the hash length: %v", err)
	}
	_, err = k.Sign(rand.Reader, d[:], &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: 20})
	if !errors.Is(err, ErrPSSSaltLength) || !strings.Contains(err.Error(), "20") {
		t.Fatalf("Sign with salt length 20: got %v, want ErrPSSSaltLength", err)
	}

	// A TPM that uses the maximum salt length (TPM 2.0 Part 1 without
	// FIPS 186-4), simulated with a software signature: checkPSSSalt must
	// name what it found.
	sk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	maxSig, err := rsa.SignPSS(rand.Reader, sk, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
	if err != nil {
		t.Fatal(err)
	}
	err = checkPSSSalt(&sk.PublicKey, crypto.SHA256, d[:], maxSig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	if !errors.Is(err, ErrPSSSaltLength) || !strings.Contains(err.Error(), "maximum salt length (222 bytes)") || !strings.Contains(err.Error(), "TLS 1.3") {
		t.Fatalf("checkPSSSalt(max salt) = %v", err)
	}
	if err := checkPSSSalt(&sk.PublicKey, crypto.SHA256, d[:], maxSig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}); err != nil {
		t.Fatalf("checkPSSSalt(auto) = %v", err)
	}
}

func TestSignRejectsBadInput(t *testing.T) {
	sw := swtpm.Start(t)
	s := openStore(t, sw, t.TempDir())
	k, err := s.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		digest []byte
		opts   crypto.SignerOpts
	}{
		{"no hash", make([]byte, 32), crypto.Hash(0)},
		{"short digest", make([]byte, 31), crypto.SHA256},
		{"unsupported hash", make([]byte, 28), crypto.SHA224},
	} {
		if _, err := k.Sign(rand.Reader, tc.digest, tc.opts); err == nil {
			t.Errorf("%s: Sign succeeded", tc.name)
		}
	}
	if _, err := s.Create(keystore.Algorithm("ed25519")); err == nil {
		t.Error("Create(ed25519) succeeded")
	}
}
