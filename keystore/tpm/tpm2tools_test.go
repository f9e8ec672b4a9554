package tpm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

func tpm2Tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed; `make test` installs tpm2-tools with apt-get (scripts/test-deps.sh)", name)
	}
	return p
}

// TestTPM2ToolsCrossCheck has tpm2-tools, an independent implementation,
// decode the stored public blob and read the persistent key from the TPM.
func TestTPM2ToolsCrossCheck(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()

	// Blob mode: tpm2_print decodes tpm-key.pub as a TPM2B_PUBLIC.
	s := openStore(t, sw, dir)
	k, err := s.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	out, err := exec.Command(tpm2Tool(t, "tpm2_print"), "-t", "TPM2B_PUBLIC", filepath.Join(dir, PubFile)).CombinedOutput()
	if err != nil {
		t.Fatalf("tpm2_print %s: %v\n%s", PubFile, err, out)
	}
	checkToolOutput(t, "tpm2_print", string(out))

	// Persistent mode: tpm2_readpublic asks the TPM for the key.
	const handle uint32 = 0x81000300
	s = openStore(t, sw, t.TempDir(), func(o *Options) { o.PersistentHandle = handle })
	k, err = s.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // swtpm serves one client at a time
	host, port, _ := net.SplitHostPort(sw.Addr())
	pemFile := filepath.Join(t.TempDir(), "pub.pem")
	cmd := exec.Command(tpm2Tool(t, "tpm2_readpublic"), "-c", fmt.Sprintf("0x%08x", handle), "-f", "pem", "-o", pemFile)
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=swtpm:host="+host+",port="+port)
	out, err = cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tpm2_readpublic: %v\n%s", err, out)
	}
	checkToolOutput(t, "tpm2_readpublic", string(out))
	b, err := os.ReadFile(pemFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("tpm2_readpublic wrote no PEM: %q", b)
	}
	if _, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(blk.Bytes, pubDER(t, k)) {
		t.Fatal("tpm2_readpublic reports another public key than the Signer's")
	}
}

func checkToolOutput(t *testing.T, tool, out string) {
	t.Helper()
	for _, want := range []string{"fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "sign"} {
		if !strings.Contains(out, want) {
			t.Errorf("%s output lacks attribute %s:\n%s", tool, want, out)
		}
	}
	if strings.Contains(out, "decrypt") || strings.Contains(out, "restricted") {
		t.Errorf("%s shows decrypt or restricted:\n%s", tool, out)
	}
}

// TestConcurrentSign signs from several goroutines at once, as parallel TLS
// handshakes do: the Store serializes TPM commands on its one connection.
func TestConcurrentSign(t *testing.T) {
	sw := swtpm.Start(t)
	s := openStore(t, sw, t.TempDir())
	k, err := s.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8*10)
	for g := range 8 {
		wg.Go(func() {
			for i := range 10 {
				d := make([]byte, 32)
				d[0], d[1] = byte(g), byte(i)
				sig, err := k.Sign(nil, d, crypto.SHA256)
				if err == nil && !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d, sig) {
					err = fmt.Errorf("goroutine %d signature %d does not verify", g, i)
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
