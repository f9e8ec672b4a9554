package tpm_test

import (
	"bytes"
	"crypto/rand"
	"net"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/keystore/tpm"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// TestStoreAttestsWithinObjectSlots: on a plain swtpm (no persistent EK,
// so the EK is a transient object too) with the device key loaded, the
// Store answers a credential challenge and certifies the key: the EK, the
// AK and the device key fit the reference TPM's three object slots because
// each command flushes what it made.
func TestStoreAttestsWithinObjectSlots(t *testing.T) {
	sim := swtpm.Start(t)
	ks, err := tpm.Open(tpm.Options{Address: sim.Addr(), Dir: filepath.Join(t.TempDir(), "keys")})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	if _, err := ks.Create(keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	end, err := ks.Endorsement()
	if err != nil {
		t.Fatal(err)
	}
	akPub, err := ks.AKPublic()
	if err != nil {
		t.Fatal(err)
	}
	for round := range 3 { // again and again: nothing accumulates
		ek, _ := tpm2.Unmarshal[tpm2.TPMTPublic](end.Public)
		kem, err := tpm2.ImportEncapsulationKey(ek)
		if err != nil {
			t.Fatal(err)
		}
		ak, _ := tpm2.Unmarshal[tpm2.TPMTPublic](akPub)
		name, _ := tpm2.ObjectName(ak)
		secret := []byte("the secret of round x")
		secret[len(secret)-1] = byte('0' + round)
		blob, enc, err := tpm2.CreateCredential(rand.Reader, kem, name.Buffer, secret)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ks.ActivateCredential(end.Public, blob, enc)
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("round %d: activate: %q, %v", round, got, err)
		}
		if _, err := ks.Certify([]byte("nonce")); err != nil {
			t.Fatalf("round %d: certify: %v", round, err)
		}
	}
	// A challenge for another EK is refused by the TPM, with the reason.
	if _, err := ks.ActivateCredential([]byte{0, 1, 2}, []byte{1}, []byte{2}); err == nil {
		t.Fatal("a challenge for another EK was accepted")
	}
}

// TestOpenFlushesWhatAKilledProcessLeft: without a resource manager the
// transient objects of a process that died stay loaded; with all three
// slots taken, Open frees them, and the Store creates and uses its key.
func TestOpenFlushesWhatAKilledProcessLeft(t *testing.T) {
	sim := swtpm.Start(t)
	conn, err := net.Dial("tcp", sim.Addr())
	if err != nil {
		t.Fatal(err)
	}
	raw := transport.FromReadWriteCloser(conn)
	for range 3 {
		if _, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}).Execute(raw); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}).Execute(raw); err == nil {
		t.Fatal("a fourth object fit: the premise (three slots) does not hold")
	}
	raw.Close() // the process dies, its objects stay

	ks, err := tpm.Open(tpm.Options{Address: sim.Addr(), Dir: filepath.Join(t.TempDir(), "keys")})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	if _, err := ks.Create(keystore.ECDSAP256); err != nil {
		t.Fatalf("create after a leak: %v", err)
	}
	if _, err := ks.Certify([]byte("n")); err != nil {
		t.Fatalf("certify after a leak: %v", err)
	}
}
