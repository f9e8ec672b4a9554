package ca

import (
	"crypto/subtle"
	"crypto/x509"
	"fmt"
	"net/http"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// DefaultRenewGrace is how long after its expiry `edgeca serve` still
// renews a device's certificate by default (--renew-grace). Three days
// cover a CA that was down over a long weekend, or a device powered off
// as long, so that it recovers without a new token even under
// expired_policy: wait. The grace does not weaken revocation (a revoked
// device is refused whatever its certificate) nor supersession (only the
// device's newest or confirmed certificate qualifies), and the device
// proves it holds the key in the TLS handshake; what it extends is the
// life of a key that leaked without the operator noticing, by at most the
// grace. MaxRenewGrace bounds it.
const (
	DefaultRenewGrace = 72 * time.Hour
	MaxRenewGrace     = 30 * 24 * time.Hour
)

// replay is the outcome of a retry whose earlier answer was lost: the
// certificate already issued for the same key is the answer again, and
// nothing is recorded but an audit line. It is returned by the Store.Issue
// check, so the store writes nothing.
type replay struct {
	cert   *x509.Certificate
	reason string
}

func (r *replay) Error() string { return "replay: " + r.reason }

// storedCert parses the newest certificate a device record holds, when it
// is still valid at now.
func storedCert(dev *store.Device, now time.Time) *x509.Certificate {
	if len(dev.Cert) == 0 {
		return nil
	}
	cert, err := x509.ParseCertificate(dev.Cert)
	if err != nil || !now.Before(cert.NotAfter) || SerialHex(cert.SerialNumber) != dev.Serial {
		return nil
	}
	return cert
}

// enrollReplay decides whether a simpleenroll is a retry of one that
// succeeded with the same token for the same public key, within the
// token's life: then it gets that certificate again and spends no use. A
// new key with a used token is not a retry.
func enrollReplay(tok *store.Token, dev *store.Device, secretHash, keyHash [32]byte, now time.Time) *replay {
	if tok == nil || dev == nil || dev.Status != store.StatusActive || dev.CertToken != tok.ID || dev.KeyHash != keyHash {
		return nil
	}
	if subtle.ConstantTimeCompare(secretHash[:], tok.SecretHash[:]) != 1 || !tok.RevokedAt.IsZero() || !now.Before(tok.ExpiresAt) {
		return nil
	}
	cert := storedCert(dev, now)
	if cert == nil {
		return nil
	}
	return &replay{cert: cert, reason: fmt.Sprintf("retry with token %s for the same key: answered with certificate %s again, no use counted (the earlier answer was lost)", tok.ID, dev.Serial)}
}

// reenrollDecision decides a simplereenroll by the certificate presented
// (serial peerSerial) and the public key of the CSR. The device's newest
// certificate renews (and so is shown to be held: it becomes the confirmed
// one). So does the confirmed one while the newest has not been shown: the
// device may never have received it. Then a CSR for the newest's key is a
// retry and gets the newest again; any other key gets a new certificate.
// Every other certificate is superseded. nil means issue.
func reenrollDecision(dev *store.Device, certID, peerSerial string, keyHash [32]byte, now time.Time) error {
	switch {
	case dev == nil:
		return &Error{Status: http.StatusForbidden, Code: est.CodeDeviceNotAllowed,
			Msg: fmt.Sprintf("device %s is not registered with this CA: enroll it with a token", certID)}
	case dev.Status == store.StatusRevoked:
		return &Error{Status: http.StatusForbidden, Code: est.CodeDeviceRevoked,
			Msg: fmt.Sprintf("device %s is revoked", certID), Reason: "reenroll of a revoked device"}
	case peerSerial == dev.Serial:
		return nil
	case peerSerial != dev.Confirmed || dev.Confirmed == "":
		// An old leaked key stops being useful once the device has
		// renewed with a newer certificate.
		return &Error{Status: http.StatusUnauthorized, Code: est.CodeClientCertRequired,
			Msg:    "the client certificate has been superseded by a newer one: renew with the current certificate",
			Reason: fmt.Sprintf("certificate serial %s is neither the newest (%s) nor the last the device showed it holds (%s)", peerSerial, dev.Serial, dash(dev.Confirmed))}
	case dev.KeyHash == keyHash:
		if cert := storedCert(dev, now); cert != nil {
			return &replay{cert: cert, reason: fmt.Sprintf("retry with certificate %s for the key of certificate %s: answered with %s again (the earlier answer was lost)", peerSerial, dev.Serial, dev.Serial)}
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
