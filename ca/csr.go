package ca

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// Error is a refused request: the HTTP status and stable code the client
// sees, a message safe to show it, and the precise reason for the audit log.
type Error struct {
	Status int
	Code   est.Code
	Msg    string // sent to the client
	Reason string // audit only; Msg when empty
	// RetryAfter, when set, is sent as Retry-After (whole seconds,
	// rounded up).
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return string(e.Code) + ": " + e.Reason
	}
	return string(e.Code) + ": " + e.Msg
}

func refuse(status int, code est.Code, msg string) *Error {
	return &Error{Status: status, Code: code, Msg: msg}
}

// Key sizes accepted in CSRs. Ed25519 is refused: TPMs cannot hold it and
// several TLS stacks of MQTT brokers still cannot verify it.
const (
	MinRSABits = 2048
	MaxRSABits = 4096
)

// CSR is a checked certificate request.
type CSR struct {
	Request  *x509.CertificateRequest
	DeviceID string
}

// ParseCSR decodes and checks an EST enrollment body: base64 (line-wrapped
// or not) of a DER PKCS#10 request whose signature verifies, whose key is
// ECDSA P-256/P-384 or RSA 2048-4096, and which names exactly one device id
// (subject CN and/or SAN URI urn:edgeagent:device:<id>, agreeing when both
// are present). Other SANs are ignored: edgeca issues the device identity
// only. Errors are *Error.
func ParseCSR(body []byte) (*CSR, error) {
	der, err := est.DecodeBase64(body)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, est.CodeBadBase64, "request body is not base64 of a DER CSR: "+err.Error())
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, est.CodeBadCSR, "not a PKCS#10 certificate request: "+err.Error())
	}
	if err := checkKey(req.PublicKey); err != nil {
		return nil, refuse(http.StatusBadRequest, est.CodeKeyNotAllowed, err.Error())
	}
	if err := req.CheckSignature(); err != nil {
		return nil, refuse(http.StatusBadRequest, est.CodeBadCSR, "CSR signature does not verify (was it signed with the key it carries?): "+err.Error())
	}
	id, err := csrDeviceID(req)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, est.CodeBadCSR, err.Error())
	}
	return &CSR{Request: req, DeviceID: id}, nil
}

func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("ECDSA curve %s is not allowed: use P-256 or P-384", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < MinRSABits || n > MaxRSABits {
			return fmt.Errorf("RSA key of %d bits is not allowed: use %d to %d bits", n, MinRSABits, MaxRSABits)
		}
		return nil
	case ed25519.PublicKey:
		return errors.New("Ed25519 keys are not allowed: use ECDSA P-256 (or P-384, or RSA 2048-4096)")
	default:
		return fmt.Errorf("key type %T is not allowed: use ECDSA P-256 (or P-384, or RSA 2048-4096)", pub)
	}
}

func csrDeviceID(req *x509.CertificateRequest) (string, error) {
	cn := req.Subject.CommonName
	var uriID string
	for _, u := range req.URIs {
		s := u.String()
		rest, ok := strings.CutPrefix(s, DeviceURIPrefix)
		if !ok {
			return "", fmt.Errorf("CSR SAN URI %q is not allowed: the only URI edgeca issues is %s<device id>", s, DeviceURIPrefix)
		}
		if uriID != "" && rest != uriID {
			return "", errors.New("CSR names more than one device in its SAN URIs")
		}
		uriID = rest
	}
	switch {
	case cn == "" && uriID == "":
		return "", errors.New("CSR names no device: set the subject CN to the device id")
	case cn == "":
		cn = uriID
	case uriID != "" && uriID != cn:
		return "", fmt.Errorf("CSR subject CN %q and SAN URI device id %q disagree", cn, uriID)
	}
	if err := ValidateDeviceID(cn); err != nil {
		return "", fmt.Errorf("CSR subject CN: %v", err)
	}
	return cn, nil
}
