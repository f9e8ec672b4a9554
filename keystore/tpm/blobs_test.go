package tpm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeagent/edgeagent/keystore"
)

// softwareBlobs builds blobs in the on-disk format for a public area made
// from a software key, so decoder tests need no TPM. The private blob is
// random: only a TPM can interpret it.
func softwareBlobs(t testing.TB) (pub, priv []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := template(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := k.PublicKey.Bytes()
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]},
		Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
	})
	p := make([]byte, 126)
	_, _ = rand.Read(p)
	return marshal2B(tpm2.Marshal(&tmpl)), marshal2B(p)
}

func TestParseBlobs(t *testing.T) {
	pub, priv := softwareBlobs(t)
	if _, _, err := ParseBlobs(pub, priv); err != nil {
		t.Fatalf("ParseBlobs(valid) = %v", err)
	}
	// A decrypt key (e.g. someone's SRK blob) must not become the device key.
	p2b := tpm2.BytesAs2B[tpm2.TPMTPublic](pub[2:])
	pa, err := p2b.Contents()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := *pa
	tmpl.ObjectAttributes.Decrypt = true
	decrypt := marshal2B(tpm2.Marshal(&tmpl))

	for _, tc := range []struct {
		name      string
		pub, priv []byte
		want      string
	}{
		{"empty public", nil, priv, "too short"},
		{"truncated public", pub[:len(pub)-1], priv, "damaged"},
		{"trailing public", append(append([]byte{}, pub...), 0), priv, "damaged"},
		{"garbage public", marshal2B([]byte("hello, world")), priv, "damaged"},
		{"empty private", pub, marshal2B(nil), "empty"},
		{"truncated private", pub, priv[:len(priv)-1], "damaged"},
		{"decrypt key", decrypt, priv, "not a device signing key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseBlobs(tc.pub, tc.priv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseBlobs = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// FuzzParseBlobs: whatever is in the state directory, decoding gives a key
// or an error, never a panic.
func FuzzParseBlobs(f *testing.F) {
	pub, priv := softwareBlobs(f)
	f.Add(pub, priv)
	f.Add(pub[:10], priv)
	f.Add([]byte{0, 0}, []byte{0, 0})
	f.Fuzz(func(t *testing.T, pub, priv []byte) {
		p, k, err := ParseBlobs(pub, priv)
		if err != nil {
			return
		}
		// Whatever parsed must round-trip to the same bytes.
		if string(marshal2B(p.Bytes())) != string(pub) || string(marshal2B(k.Buffer)) != string(priv) {
			t.Fatal("ParseBlobs accepted non-canonical input")
		}
	})
}
