package swtpm

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// srkPublic connects to the TPM at addr and returns the marshalled public
// area of the ECC SRK, which is derived from the TPM's storage seed: equal
// bytes mean the same TPM state.
func srkPublic(t *testing.T, addr string) []byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tpm := transport.FromReadWriteCloser(conn)
	defer tpm.Close()
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("CreatePrimary on swtpm at %s: %v", addr, err)
	}
	if _, err := (tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}).Execute(tpm); err != nil {
		t.Fatalf("FlushContext: %v", err)
	}
	return rsp.OutPublic.Bytes()
}

func TestStartRestartKeepsState(t *testing.T) {
	s := Start(t)
	before := srkPublic(t, s.Addr())
	// A second connection after the first closed must work too: swtpm
	// serves one client at a time.
	if again := srkPublic(t, s.Addr()); !bytes.Equal(before, again) {
		t.Fatal("SRK changed between two connections to the same swtpm")
	}
	s.Restart()
	if after := srkPublic(t, s.Addr()); !bytes.Equal(before, after) {
		t.Fatal("SRK changed across Restart: the state directory was not kept")
	}

	other := Start(t)
	if other.StateDir() == s.StateDir() {
		t.Fatal("two swtpm instances share a state directory")
	}
	if fresh := srkPublic(t, other.Addr()); bytes.Equal(before, fresh) {
		t.Fatal("a fresh swtpm produced the same SRK: seeds are not per instance")
	}
}

func TestStopIsIdempotent(t *testing.T) {
	s := Start(t)
	addr := s.Addr()
	s.Stop()
	s.Stop()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("swtpm still accepts on %s after Stop", addr)
	}
}
