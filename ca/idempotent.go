package ca

import (
	"crypto/x509"
	"errors"
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
// nothing is recorded but an audit line. The store's intent decided it
// (Outcome.Replayed) and wrote nothing.
type replay struct {
	cert   *x509.Certificate
	reason string
}

func (r *replay) Error() string { return "replay: " + r.reason }

// storedCert parses the newest certificate a device record holds, when it
// is still valid at now.
func storedCert(dev *store.Device, now time.Time) *x509.Certificate {
	if !store.StoredCertValid(dev, now) {
		return nil
	}
	cert, err := x509.ParseCertificate(dev.Cert)
	if err != nil {
		return nil
	}
	return cert
}

// enrollReplay decides whether a simpleenroll is a retry of one that
// succeeded with the same token for the same public key, within the
// token's life (store.IsEnrollRetry): then it gets that certificate again
// and spends no use. A new key with a used token is not a retry.
func enrollReplay(tok *store.Token, dev *store.Device, secretHash, keyHash [32]byte, now time.Time) *replay {
	if !store.IsEnrollRetry(tok, dev, secretHash, keyHash, now) {
		return nil
	}
	rp, _ := enrollReplayOf(tok.ID, dev, now).(*replay)
	return rp
}

// enrollReplayOf is the answer to a token enrollment the store replayed.
func enrollReplayOf(tokenID string, dev *store.Device, now time.Time) error {
	cert := storedCert(dev, now)
	if cert == nil {
		return fmt.Errorf("replay for device %s: the stored certificate %s does not parse or is no longer valid", dev.ID, dev.Serial)
	}
	return &replay{cert: cert, reason: fmt.Sprintf("retry with token %s for the same key: answered with certificate %s again, no use counted (the earlier answer was lost)", tokenID, dev.Serial)}
}

// renewalReplayOf is the answer to a renewal the store replayed.
func renewalReplayOf(dev *store.Device, peerSerial string, now time.Time) error {
	cert := storedCert(dev, now)
	if cert == nil {
		return fmt.Errorf("replay for device %s: the stored certificate %s does not parse or is no longer valid", dev.ID, dev.Serial)
	}
	return &replay{cert: cert, reason: fmt.Sprintf("retry with certificate %s for the key of certificate %s: answered with %s again (the earlier answer was lost)", peerSerial, dev.Serial, dev.Serial)}
}

// reenrollDecision is the renewal rule (store.DecideRenewal) as the
// client is answered: nil means issue, a *replay the stored certificate,
// anything else the refusal.
func reenrollDecision(dev *store.Device, certID, peerSerial string, keyHash [32]byte, now time.Time) error {
	rp, ref := store.DecideRenewal(dev, peerSerial, keyHash, now)
	switch {
	case ref != nil:
		return renewalRefusal(ref, certID, peerSerial)
	case rp:
		return renewalReplayOf(dev, peerSerial, now)
	}
	return nil
}

// renewalRefusal is the answer to a renewal the store refused; other
// errors pass unchanged.
func renewalRefusal(err error, certID, peerSerial string) error {
	var r *store.Refusal
	if !errors.As(err, &r) {
		return err
	}
	switch r.Kind {
	case store.RefuseDeviceUnknown:
		return &Error{Status: http.StatusForbidden, Code: est.CodeDeviceNotAllowed,
			Msg: fmt.Sprintf("device %s is not registered with this CA: enroll it with a token", certID)}
	case store.RefuseDeviceRevoked:
		return &Error{Status: http.StatusForbidden, Code: est.CodeDeviceRevoked,
			Msg: fmt.Sprintf("device %s is revoked", certID), Reason: "reenroll of a revoked device"}
	case store.RefuseSuperseded:
		dev := r.Device
		return &Error{Status: http.StatusUnauthorized, Code: est.CodeClientCertRequired,
			Msg:    "the client certificate has been superseded by a newer one: renew with the current certificate",
			Reason: fmt.Sprintf("certificate serial %s is neither the newest (%s) nor the last the device showed it holds (%s)", peerSerial, dev.Serial, dash(dev.Confirmed))}
	}
	return fmt.Errorf("renewal: unexpected refusal: %w", r)
}

func dash(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
