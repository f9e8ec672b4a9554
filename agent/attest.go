package agent

import (
	"context"
	"crypto/x509"
	"errors"

	"github.com/edgeagent/edgeagent/enroll"
)

// attestedEnroll enrolls with TPM attestation. When the CA refuses the
// token (used up, expired), it tries once more without one: a CA with
// attested recovery enrolls a device again whose EK it has on record.
func attestedEnroll(ctx context.Context, client *enroll.Client, o EnrollOptions, csr []byte) ([]*x509.Certificate, error) {
	a, ok := o.Keystore.(enroll.Attester)
	if !ok {
		return nil, errors.New("enroll: enroll.attest: tpm needs keystore: tpm")
	}
	certs, err := client.AttestedEnroll(ctx, a, csr, o.Username, o.Password)
	if err != nil && o.Username != "" && enroll.IsTokenRejected(err) {
		o.Logger.Info("enrollment token refused: trying recovery by TPM attestation alone", "err", err)
		certs, err = client.AttestedEnroll(ctx, a, csr, "", "")
	}
	return certs, err
}

// attestRecoveryOptions points a bootstrap without token or credentials at
// the EST server of the identity in the state directory, authenticated by
// the roots that authenticated it at enrollment, so that a device whose
// certificate expired recovers by attestation alone after its token was
// removed. False when there is no such identity.
func attestRecoveryOptions(o *EnrollOptions) bool {
	id, err := LoadIdentity(o.StateDir, o.Keystore)
	if err != nil || id.Server == "" || len(id.ServerRoots) == 0 {
		return false
	}
	o.Server, o.Label, o.CABundle = id.Server, id.Label, id.ServerRoots
	return true
}
