package swtpm

import (
	"bytes"
	"crypto/x509"
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

// TestManufacturedEKCerts: swtpm_setup with a private swtpm_localca writes
// RSA and ECC EK certificates to their NV indices, signed by the
// manufacturer's issuing CA, which chains to its root.
func TestManufacturedEKCerts(t *testing.T) {
	m := TestManufacturer(t)
	s := StartWithEK(t, m)
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	tp := transport.FromReadWriteCloser(conn)
	defer tp.Close()
	for _, tc := range []struct {
		name  string
		index uint32
	}{{"rsa", NVRSAEKCert}, {"ecc", NVECCEKCert}} {
		t.Run(tc.name, func(t *testing.T) {
			der := readNV(t, tp, tc.index)
			c, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatalf("EK certificate at 0x%08x: %v", tc.index, err)
			}
			if err := c.CheckSignatureFrom(m.Issuer); err != nil {
				t.Fatalf("EK certificate not signed by the manufacturer's issuer: %v", err)
			}
			if err := m.Issuer.CheckSignatureFrom(m.Root); err != nil {
				t.Fatalf("issuer not signed by the manufacturer root: %v", err)
			}
		})
	}
}

func readNV(t *testing.T, tp transport.TPM, index uint32) []byte {
	t.Helper()
	h := tpm2.TPMHandle(index)
	rp, err := tpm2.NVReadPublic{NVIndex: h}.Execute(tp)
	if err != nil {
		t.Fatalf("NV 0x%08x: %v", index, err)
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for off := 0; off < int(pub.DataSize); {
		n := min(int(pub.DataSize)-off, 1024)
		r, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: h, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: h, Name: rp.NVName},
			Size:       uint16(n), Offset: uint16(off),
		}.Execute(tp)
		if err != nil {
			t.Fatalf("NV read 0x%08x: %v", index, err)
		}
		out = append(out, r.Data.Buffer...)
		off += n
	}
	return out
}
