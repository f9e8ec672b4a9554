package keystore

import "testing"

func TestParseAlgorithm(t *testing.T) {
	for in, want := range map[string]Algorithm{"": ECDSAP256, "ECDSA-P256": ECDSAP256, " rsa-2048 ": RSA2048, "rsa-3072": RSA3072} {
		if got, err := ParseAlgorithm(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"rsa-1024", "ed25519", "p256"} {
		if _, err := ParseAlgorithm(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
