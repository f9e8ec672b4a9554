package tpm

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"testing"

	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/keystore/file"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

// BenchmarkSign compares signatures made in the TPM with signatures by a
// software key, in the same run. swtpm runs on the host CPU behind a TCP
// round trip, so its numbers say little about a real TPM, which is usually
// slower (tens of ms per ECDSA signature on discrete TPMs): treat the
// TPM rows as a best case for the protocol overhead, not for hardware.
func BenchmarkSign(b *testing.B) {
	sw := swtpm.Start(b)
	d := sha256.Sum256([]byte("benchmark"))
	cases := []struct {
		name string
		alg  keystore.Algorithm
		opts crypto.SignerOpts
	}{
		{"ecdsa-p256", keystore.ECDSAP256, crypto.SHA256},
		{"rsa-2048-pkcs1v15", keystore.RSA2048, crypto.SHA256},
		{"rsa-2048-pss", keystore.RSA2048, &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: rsa.PSSSaltLengthEqualsHash}},
	}
	for _, c := range cases {
		soft, err := file.Generate(c.alg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("software/"+c.name, func(b *testing.B) { benchSign(b, soft, d[:], c.opts) })
		b.Run("swtpm/"+c.name, func(b *testing.B) {
			s := openStore(b, sw, b.TempDir())
			k, err := s.Create(c.alg)
			if err != nil {
				b.Fatal(err)
			}
			benchSign(b, k, d[:], c.opts)
			s.Close()
		})
	}
}

func benchSign(b *testing.B, k crypto.Signer, digest []byte, opts crypto.SignerOpts) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Sign(rand.Reader, digest, opts); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}
