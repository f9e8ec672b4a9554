package enroll

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/edgeagent/edgeagent/enroll/attest"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/keystore/tpm"
)

// Attester is the TPM side of attested enrollment (keystore/tpm's Store).
type Attester interface {
	Endorsement() (*tpm.Endorsement, error)
	AKPublic() ([]byte, error)
	ActivateCredential(ekPublic, credBlob, encSecret []byte) ([]byte, error)
	Certify(nonce []byte) (*tpm.Certification, error)
}

// AttestError says which side of attested enrollment failed: the TPM on
// this device or the CA's checks.
type AttestError struct {
	Side string // "device TPM" or "CA"
	Step string
	Err  error
}

func (e *AttestError) Error() string {
	return fmt.Sprintf("enroll: attested enrollment: %s: %s: %v", e.Side, e.Step, e.Err)
}
func (e *AttestError) Unwrap() error { return e.Err }

// AttestedEnroll enrolls csrDER (signed by the TPM's current device key)
// with TPM attestation: attest/start with the EK and AK, the credential
// challenge answered by the TPM, Certify of the device key over the CA's
// nonce, and attest/finish. username/password is the enrollment token; with
// none the CA may still recover a device whose EK it has on record.
func (c *Client) AttestedEnroll(ctx context.Context, t Attester, csrDER []byte, username, password string) ([]*x509.Certificate, error) {
	tpmErr := func(step string, err error) error { return &AttestError{Side: "device TPM", Step: step, Err: err} }
	end, err := t.Endorsement()
	if err != nil {
		return nil, tpmErr("read the endorsement key", err)
	}
	akPub, err := t.AKPublic()
	if err != nil {
		return nil, tpmErr("create the attestation key", err)
	}
	ekCert, ekPub := end.Choose()
	start := attest.StartRequest{EKCert: ekCert, EKPublic: ekPub, AKPublic: akPub}
	var ch attest.StartResponse
	if err := c.postJSON(ctx, attest.OpStart, start, nil, func(b []byte) error { return json.Unmarshal(b, &ch) }); err != nil {
		return nil, &AttestError{Side: "CA", Step: "POST " + attest.OpStart, Err: err}
	}
	secret, err := t.ActivateCredential(ekPub, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		return nil, tpmErr("answer the CA's credential challenge", err)
	}
	cert, err := t.Certify(ch.Nonce)
	if err != nil {
		return nil, tpmErr("certify the device key", err)
	}
	fin := attest.FinishRequest{ID: ch.ID, Secret: secret, CertifyInfo: cert.Attest, CertifySignature: cert.Signature,
		KeyPublic: cert.KeyPublic, CSR: csrDER}
	var auth func(*http.Request)
	if username != "" {
		auth = func(r *http.Request) { r.SetBasicAuth(username, password) }
	}
	var certs []*x509.Certificate
	err = c.postJSON(ctx, attest.OpFinish, fin, auth, func(b []byte) error {
		var err error
		certs, err = c.decodeCerts("POST "+attest.OpFinish, b)
		return err
	})
	if err != nil {
		return nil, &AttestError{Side: "CA", Step: "POST " + attest.OpFinish, Err: err}
	}
	return certs, nil
}

// postJSON sends one attested-enrollment request; non-2xx answers become a
// ServerError as for the EST operations.
func (c *Client) postJSON(ctx context.Context, op string, body any, auth func(*http.Request), decode func([]byte) error) error {
	name := "POST " + op
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url(op), bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("enroll: %s: %w", name, err)
	}
	req.Header.Set("Content-Type", attest.MediaJSON)
	if auth != nil {
		auth(req)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("enroll: %s: %w", name, explainTLS(err))
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, est.MaxBodyBytes+1))
	if err != nil {
		return fmt.Errorf("enroll: %s: read response: %w", name, err)
	}
	if len(rb) > est.MaxBodyBytes {
		return fmt.Errorf("enroll: %s: %w: response over %d bytes", name, ErrResponse, est.MaxBodyBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		code, msg := est.ParseErrorBody(string(rb))
		if len(msg) > 512 {
			msg = msg[:512] + "..."
		}
		return &ServerError{Op: name, Status: resp.StatusCode, Code: code, Message: msg}
	}
	if err := decode(rb); err != nil {
		if errors.Is(err, ErrResponse) {
			return err
		}
		return fmt.Errorf("enroll: %s: %w: %v", name, ErrResponse, err)
	}
	return nil
}
