package agent

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestStatusShowsAttestation: status says when the device enrolls with
// TPM attestation, and says nothing when it does not.
func TestStatusShowsAttestation(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		attest string
		want   bool
	}{{"tpm", true}, {"", false}} {
		var b bytes.Buffer
		if err := WriteStatus(&b, Status{Now: now, DeviceID: "d", Keystore: "tpm", Attest: tc.attest}, now); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(b.String(), "attested (tpm)"); got != tc.want {
			t.Errorf("attest %q: status shows attestation %v, want %v:\n%s", tc.attest, got, tc.want, b.String())
		}
	}
}
