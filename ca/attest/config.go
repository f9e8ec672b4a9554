package attest

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

// LoadRoots reads a PEM bundle of TPM manufacturer CA certificates: the
// self-signed ones become roots, the others intermediates (the CAs that
// sign EK certificates, which TPMs do not carry).
func LoadRoots(path string) (roots, intermediates *x509.CertPool, n int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("TPM manufacturer roots: %w", err)
	}
	roots, intermediates = x509.NewCertPool(), x509.NewCertPool()
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("TPM manufacturer roots %s: certificate %d: %w", path, n+1, err)
		}
		if bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil {
			roots.AddCert(c)
		} else {
			intermediates.AddCert(c)
		}
		n++
	}
	if n == 0 {
		return nil, nil, 0, fmt.Errorf("TPM manufacturer roots %s: no PEM certificate in it", path)
	}
	return roots, intermediates, n, nil
}

// LoadAllowlist reads EK public key hashes: one SHA-256 in hex a line (of
// the EK's SubjectPublicKeyInfo DER, as `edgeca device show` prints it);
// blank lines and # comments are ignored.
func LoadAllowlist(path string) (map[[32]byte]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("EK allowlist: %w", err)
	}
	defer f.Close()
	out := map[[32]byte]bool{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(s, '#'); i >= 0 {
			s = strings.TrimSpace(s[:i])
		}
		if s == "" {
			continue
		}
		var h [32]byte
		if b, err := hex.DecodeString(s); err != nil || len(b) != 32 {
			return nil, fmt.Errorf("EK allowlist %s line %d: %q is not a SHA-256 in hex (64 characters)", path, line, s)
		} else {
			copy(h[:], b)
		}
		out[h] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("EK allowlist %s: %w", path, err)
	}
	return out, nil
}
