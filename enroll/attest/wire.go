// Package attest is the agent's side of edgeca's attested enrollment, an
// extension of EST (RFC 7030 defines none) under /.well-known/est/:
//
//	POST attest/start   JSON StartRequest  -> JSON StartResponse
//	POST attest/finish  JSON FinishRequest -> application/pkcs7-mime certs-only
//
// Two round trips, because both proofs are challenge-response: the CA's
// credential challenge can only be made once it knows the AK (its name is
// bound into the challenge), and Certify's qualifying data must be a nonce
// the CA chose, or an old Certify could be replayed. start hands out both
// the nonce and the challenge, finish answers both, with the CSR.
package attest

// Paths under /.well-known/est/[label/].
const (
	OpStart  = "attest/start"
	OpFinish = "attest/finish"
)

// MediaJSON is the content type of the requests and of start's answer.
const MediaJSON = "application/json"

// MaxRequestBytes bounds a request body (an EK certificate, a few public
// areas and a CSR are under 8 KiB).
const MaxRequestBytes = 32 << 10

// StartRequest shows the TPM: its EK (certificate or public area) and the AK
// the TPM will activate the credential with. Byte fields are base64 in JSON.
type StartRequest struct {
	// EKCert is the DER EK certificate from NV, empty when the TPM has none
	// (then the EK must be on the CA's allowlist).
	EKCert []byte `json:"ek_cert,omitempty"`
	// EKPublic is the EK's TPMT_PUBLIC.
	EKPublic []byte `json:"ek_public"`
	// AKPublic is the AK's TPMT_PUBLIC; the CA computes its name.
	AKPublic []byte `json:"ak_public"`
}

// StartResponse is the CA's challenge.
type StartResponse struct {
	// ID names this attempt in FinishRequest.
	ID string `json:"id"`
	// Nonce is the qualifying data Certify must carry.
	Nonce []byte `json:"nonce"`
	// CredentialBlob and EncryptedSecret are TPM2_ActivateCredential's
	// inputs (TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET contents).
	CredentialBlob  []byte `json:"credential_blob"`
	EncryptedSecret []byte `json:"encrypted_secret"`
	// ExpiresInSeconds is how long the nonce is good for.
	ExpiresInSeconds int `json:"expires_in_seconds"`
}

// FinishRequest answers the challenge and asks for the certificate. The
// enrollment token, if any, goes in HTTP Basic as for simpleenroll; a
// device whose EK the CA has on record may recover without one.
type FinishRequest struct {
	ID string `json:"id"`
	// Secret is what ActivateCredential released.
	Secret []byte `json:"secret"`
	// CertifyInfo (TPMS_ATTEST) and CertifySignature (TPMT_SIGNATURE) are
	// TPM2_Certify's answer over the device key, by the AK, with Nonce.
	CertifyInfo      []byte `json:"certify_info"`
	CertifySignature []byte `json:"certify_signature"`
	// KeyPublic is the device key's TPMT_PUBLIC.
	KeyPublic []byte `json:"key_public"`
	// CSR is the DER PKCS#10 request, signed by the device key.
	CSR []byte `json:"csr"`
}
