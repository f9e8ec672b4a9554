package est

import (
	"fmt"
	"strings"
)

// Code is a stable, machine-readable reason edgeca puts at the start of an
// error body ("token_invalid: ..."). Other EST servers send free text; the
// client shows whatever it gets and only branches on codes it knows.
type Code string

// Error codes edgeca sends. Renaming one breaks deployed agents.
const (
	CodeTokenInvalid       Code = "token_invalid"        // 401: unknown, expired, used up or revoked token
	CodeAuthRequired       Code = "auth_required"        // 401: no credentials
	CodeClientCertRequired Code = "client_cert_required" // 401: reenroll without a valid client certificate
	CodeDeviceRevoked      Code = "device_revoked"       // 403
	CodeDeviceNotAllowed   Code = "device_not_allowed"   // 403: CSR names a device the token or certificate does not allow
	CodeBadBase64          Code = "bad_base64"           // 400
	CodeBadCSR             Code = "bad_csr"              // 400: not a PKCS#10 CSR, or bad signature, or bad subject
	CodeKeyNotAllowed      Code = "key_not_allowed"      // 400: key type or size refused
	CodeBodyTooLarge       Code = "body_too_large"       // 413
	CodeWrongContentType   Code = "wrong_content_type"   // 415
	CodeNotFound           Code = "not_found"            // 404
	CodeMethodNotAllowed   Code = "method_not_allowed"   // 405
	CodeInternal           Code = "internal"             // 500
	CodeIdentityMismatch   Code = "identity_mismatch"    // 400: reenroll CSR Subject or SubjectAltName differ from the certificate renewed
	CodeRateLimited        Code = "rate_limited"         // 429/503 with Retry-After: too many failed attempts or requests
	CodeUnavailable        Code = "unavailable"          // 503 with Retry-After: the CA cannot serve now (its database is out of reach, or it is over its load bound)
)

// ErrorBody formats an error response body: "code: message\n".
func ErrorBody(c Code, msg string) string { return fmt.Sprintf("%s: %s\n", c, msg) }

// ParseErrorBody extracts a code from a body written by ErrorBody. It returns
// "" for bodies from servers that do not use codes.
func ParseErrorBody(body string) (Code, string) {
	body = strings.TrimSpace(body)
	i := strings.Index(body, ": ")
	if i <= 0 || i > 40 {
		return "", body
	}
	for _, r := range body[:i] {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return "", body
		}
	}
	return Code(body[:i]), body[i+2:]
}
