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
