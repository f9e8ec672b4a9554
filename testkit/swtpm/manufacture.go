package swtpm

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Standard TCG NV indices of the EK certificates swtpm_setup writes.
const (
	NVRSAEKCert = 0x01C00002 // RSA 2048 EK certificate
	NVECCEKCert = 0x01C00016 // ECC P-384 EK certificate (as swtpm_setup writes it)
)

// Manufacturer is a throwaway TPM manufacturer CA (swtpm_localca's state):
// a self-signed root and the issuing CA that signs EK certificates.
type Manufacturer struct {
	Dir string
	// Root is the manufacturer's root CA; Issuer the intermediate that
	// signs EK certificates.
	Root, Issuer *x509.Certificate
	// RootPEM and IssuerPEM are their PEM files, as an operator would
	// configure them on edgeca.
	RootPEM, IssuerPEM string
}

// NewManufacturer prepares an empty swtpm_localca state directory in dir;
// the CA itself is created by the first Manufacture.
func NewManufacturer(dir string) (*Manufacturer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("swtpm: manufacturer dir: %w", err)
	}
	return &Manufacturer{Dir: dir}, nil
}

// Manufacture runs swtpm_setup on stateDir (which must not hold a TPM yet):
// the TPM gets an RSA 2048 EK (persistent 0x81010001) and an ECC P-384 EK
// (0x81010016), each with an EK certificate in NV signed by m, and a
// platform certificate. Then Run starts it. Every configuration file is
// private to m.Dir: /etc/swtpm* and /var/lib/swtpm-localca are not used.
func (m *Manufacturer) Manufacture(stateDir string) error {
	if _, err := exec.LookPath("swtpm_setup"); err != nil {
		return fmt.Errorf("swtpm: swtpm_setup is not installed (Debian swtpm-tools; scripts/test-deps.sh installs it): %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("swtpm: state dir: %w", err)
	}
	conf := filepath.Join(m.Dir, "swtpm-localca.conf")
	opts := filepath.Join(m.Dir, "swtpm-localca.options")
	setup := filepath.Join(m.Dir, "swtpm_setup.conf")
	files := map[string]string{
		conf:  fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", m.Dir),
		opts:  "--platform-manufacturer edgeagent-test\n--platform-version 2.1\n--platform-model swtpm\n",
		setup: fmt.Sprintf("create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", conf, opts),
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			return fmt.Errorf("swtpm: %w", err)
		}
	}
	cmd := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", stateDir, "--create-ek-cert",
		"--create-platform-cert", "--ecc", "--config", setup, "--overwrite")
	// swtpm_setup looks for its user config under XDG_CONFIG_HOME/HOME
	// first; point them into m.Dir so nothing outside is read.
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+m.Dir, "HOME="+m.Dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("swtpm: swtpm_setup: %w; its output:\n%s", err, out)
	}
	var err error
	m.RootPEM = filepath.Join(m.Dir, "swtpm-localca-rootca-cert.pem")
	m.IssuerPEM = filepath.Join(m.Dir, "issuercert.pem")
	if m.Root, err = readPEMCert(m.RootPEM); err != nil {
		return err
	}
	if m.Issuer, err = readPEMCert(m.IssuerPEM); err != nil {
		return err
	}
	return nil
}

func readPEMCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("swtpm: manufacturer CA: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("swtpm: %s holds no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("swtpm: %s: %w", path, err)
	}
	return c, nil
}

// RunManufactured manufactures a TPM in stateDir with EK certificates from
// m and starts it.
func RunManufactured(m *Manufacturer, stateDir string) (*Process, error) {
	if err := m.Manufacture(stateDir); err != nil {
		return nil, err
	}
	return Run(stateDir)
}

// StartWithEK is Start for a TPM that has EK certificates from m (one
// manufacturer may make several TPMs).
func StartWithEK(t testing.TB, m *Manufacturer) *TPM {
	t.Helper()
	dir := t.TempDir()
	if err := m.Manufacture(dir); err != nil {
		t.Fatal(err)
	}
	return StartDir(t, dir)
}

// TestManufacturer is NewManufacturer in a test's temporary directory.
func TestManufacturer(t testing.TB) *Manufacturer {
	t.Helper()
	m, err := NewManufacturer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestManufacturerPrepared is a manufacturer whose CA exists (it made one
// TPM), for tests that need a second, unrelated manufacturer root.
func TestManufacturerPrepared(t testing.TB) *Manufacturer {
	t.Helper()
	m := TestManufacturer(t)
	if err := m.Manufacture(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	return m
}
