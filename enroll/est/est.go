// Package est holds the RFC 7030 (Enrollment over Secure Transport) wire
// format shared by the agent's EST client and edgeca's EST server: paths,
// media types, base64 transfer encoding, certs-only CMS (PKCS#7) and CSR
// attributes. It does no I/O.
package est

import (
	"bytes"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Well-known paths (RFC 7030 §3.2.2). A server may also serve them under an
// optional label: /.well-known/est/<label>/<op>.
const (
	PathPrefix       = "/.well-known/est/"
	OpCACerts        = "cacerts"
	OpSimpleEnroll   = "simpleenroll"
	OpSimpleReenroll = "simplereenroll"
	OpCSRAttrs       = "csrattrs"
)

// Media types (RFC 7030 §4).
const (
	MediaPKCS10    = "application/pkcs10"
	MediaPKCS7     = "application/pkcs7-mime"
	MediaCertsOnly = "application/pkcs7-mime; smime-type=certs-only"
	MediaCSRAttrs  = "application/csrattrs"
	// TransferEncoding is the Content-Transfer-Encoding every EST body uses.
	TransferEncoding = "base64"
)

// Path returns the request path for op, with an optional CA label.
func Path(label, op string) string {
	if label == "" {
		return PathPrefix + op
	}
	return PathPrefix + label + "/" + op
}

// ALPNRootInChain is the TLS ALPN protocol name with which a client asks
// the EST server to include its root certificate in the chain it presents:
// a device bootstrapping from a pin of the root (enroll.FetchPinned) needs
// it there. Every other client has the root as its trust anchor, so edgeca
// leaves it out (RFC 8446 §4.4.2 allows that). It is only a hint, offered
// next to http/1.1: no protocol of that name is ever negotiated.
const ALPNRootInChain = "x-edgeagent-root-in-chain"

// MaxBodyBytes bounds the size of any EST request or response body we read.
// A CSR or a certificate chain is a few KiB; 64 KiB leaves room for long
// RSA chains while keeping a hostile peer from making us buffer megabytes.
const MaxBodyBytes = 64 << 10

// ErrBase64 is wrapped by DecodeBase64 errors.
var ErrBase64 = errors.New("malformed base64")

// DecodeBase64 decodes an EST body. RFC 7030 bodies are base64 (RFC 4648)
// and many servers wrap lines, so all ASCII white space is ignored; padding
// may be present or absent.
func DecodeBase64(body []byte) ([]byte, error) {
	clean := make([]byte, 0, len(body))
	for _, c := range body {
		switch c {
		case ' ', '\t', '\r', '\n', '\v', '\f':
			continue
		}
		clean = append(clean, c)
	}
	if len(clean) == 0 {
		return nil, fmt.Errorf("%w: body is empty", ErrBase64)
	}
	enc := base64.StdEncoding
	if bytes.IndexByte(clean, '=') < 0 && len(clean)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	out := make([]byte, enc.DecodedLen(len(clean)))
	n, err := enc.Decode(out, clean)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBase64, err)
	}
	return out[:n], nil
}

// EncodeBase64 encodes der as an EST body: base64 wrapped at 64 columns with
// CRLF, like MIME, which every client we know of accepts.
func EncodeBase64(der []byte) []byte {
	s := base64.StdEncoding.EncodeToString(der)
	var b strings.Builder
	b.Grow(len(s) + len(s)/32 + 2)
	for len(s) > 64 {
		b.WriteString(s[:64])
		b.WriteString("\r\n")
		s = s[64:]
	}
	b.WriteString(s)
	b.WriteString("\r\n")
	return []byte(b.String())
}

var (
	oidData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
)
