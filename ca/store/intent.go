package store

import (
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"path"
	"time"

	"github.com/edgeagent/edgeagent/deviceid"
)

// TokenEnrollment is the intent of a simpleenroll: "spend one use of token
// TokenID for DeviceID and record Issuance, unless this is a retry of an
// enrollment that already succeeded for the same key".
type TokenEnrollment struct {
	TokenID    string
	SecretHash [32]byte // SHA-256 of the secret the client sent
	DeviceID   string   // canonical (deviceid.Canonical): the registry key
	Time       time.Time
	Issuance   Issuance // its KeyHash is the CSR's key, also the retry lookup
	Audit      AuditRecord
	Agent      string // the sanitized User-Agent product, for the inventory; "" keeps the one recorded
	// Outbox are webhook events queued in the same transaction (fleet.go),
	// so that an event exists exactly when the enrollment committed.
	Outbox []OutboxEvent
}

// Renewal is the intent of a simplereenroll: "record Issuance for DeviceID,
// which authenticated with its certificate Presented", under the renewal
// rule of DecideRenewal.
type Renewal struct {
	DeviceID  string // canonical
	Presented string // hex serial of the client certificate
	Time      time.Time
	Issuance  Issuance
	Audit     AuditRecord
	Agent     string        // as in TokenEnrollment
	Outbox    []OutboxEvent // as in TokenEnrollment
}

// Recovery is the intent of an attested enrollment without a token: "record
// Issuance for the already enrolled, not revoked DeviceID". The caller has
// checked the TPM's EK against the one the device enrolled with.
type Recovery struct {
	DeviceID string // canonical
	Time     time.Time
	Issuance Issuance
	Audit    AuditRecord
	Agent    string        // as in TokenEnrollment
	Outbox   []OutboxEvent // as in TokenEnrollment
}

// Outcome is what an issuing intent did.
type Outcome struct {
	// Replayed: the request is a retry whose earlier answer was lost;
	// nothing was written, and Device.Cert (valid, for the same key) is
	// the answer again.
	Replayed bool
	// Device is the device as the decision saw it: before this issue
	// (Existed false when it was new), or the one holding the replayed
	// certificate.
	Device  Device
	Existed bool
}

// RefusalKind says why an issuing intent was refused.
type RefusalKind int

// Refusals. The token ones are for TokenEnrollment (and
// DecideTokenSecret); the device ones for every intent.
const (
	RefuseTokenUnknown   RefusalKind = iota + 1
	RefuseTokenSecret                // wrong secret
	RefuseTokenRevoked               // Token.RevokedAt says when
	RefuseTokenExpired               // Token.ExpiresAt says when
	RefuseTokenUsedUp                // Token.Uses of Token.MaxUses
	RefuseTokenDevice                // bound to Token.Device, another device
	RefuseTokenPattern               // the device id does not match Token.Pattern
	RefuseDeviceRevoked              // the device is revoked
	RefuseDeviceEnrolled             // a claim token (pattern or open) for an enrolled id
	RefuseDeviceUnknown              // renewal or recovery of a device never enrolled
	RefuseSuperseded                 // Presented is neither the newest nor the confirmed certificate
)

// Refusal is the error of an intent the state did not allow; nothing was
// written. Token and Device are the state the decision saw (nil when
// there is none), for the caller's message.
type Refusal struct {
	Kind   RefusalKind
	Token  *Token
	Device *Device
}

func (r *Refusal) Error() string {
	switch r.Kind {
	case RefuseTokenUnknown:
		return "unknown token"
	case RefuseTokenSecret:
		return "wrong token secret"
	case RefuseTokenRevoked:
		return "token revoked"
	case RefuseTokenExpired:
		return "token expired"
	case RefuseTokenUsedUp:
		return "token used up"
	case RefuseTokenDevice:
		return "token bound to another device"
	case RefuseTokenPattern:
		return "device id does not match the token pattern"
	case RefuseDeviceRevoked:
		return "device revoked"
	case RefuseDeviceEnrolled:
		return "device already enrolled (claim token)"
	case RefuseDeviceUnknown:
		return "device not enrolled"
	case RefuseSuperseded:
		return "certificate superseded"
	}
	return fmt.Sprintf("refused (%d)", int(r.Kind))
}

// decision is what an issuing intent decides inside its transaction, on the
// token (nil without one, or unknown) and the device (nil when new) as
// committed: issue (false, nil), replay (true, nil) or refuse. Decisions
// are this package's pure functions below, never a caller's code.
type decision func(tok *Token, dev *Device) (replay bool, refusal *Refusal)

// issueReq is what an issuing intent records when its decision is to issue.
type issueReq struct {
	TokenID   string // "" when no token is spent
	DeviceID  string
	Time      time.Time
	Issuance  Issuance
	Presented string // see Renewal; "" for a token enrollment or recovery (clears Confirmed)
	Audit     AuditRecord
	Agent     string        // for the inventory
	Outbox    []OutboxEvent // webhook events, queued with the issue
}

func (e TokenEnrollment) record() issueReq {
	return issueReq{TokenID: e.TokenID, DeviceID: e.DeviceID, Time: e.Time, Issuance: e.Issuance, Audit: e.Audit, Agent: e.Agent, Outbox: e.Outbox}
}

func (e TokenEnrollment) decide(tok *Token, dev *Device) (bool, *Refusal) {
	return DecideTokenEnrollment(tok, dev, e.SecretHash, e.DeviceID, e.Issuance.KeyHash, e.Time)
}

func (r Renewal) record() issueReq {
	return issueReq{DeviceID: r.DeviceID, Time: r.Time, Issuance: r.Issuance, Presented: r.Presented, Audit: r.Audit, Agent: r.Agent, Outbox: r.Outbox}
}

func (r Renewal) decide(_ *Token, dev *Device) (bool, *Refusal) {
	return DecideRenewal(dev, r.Presented, r.Issuance.KeyHash, r.Time)
}

func (r Recovery) record() issueReq {
	return issueReq{DeviceID: r.DeviceID, Time: r.Time, Issuance: r.Issuance, Audit: r.Audit, Agent: r.Agent, Outbox: r.Outbox}
}

func (r Recovery) decide(_ *Token, dev *Device) (bool, *Refusal) {
	return false, DecideRecovery(dev)
}

// DecideTokenSecret is the part of a token's check that depends neither on
// its uses nor on the device: known, right secret (compared in constant
// time, an unknown id costing the same), not revoked, not expired.
func DecideTokenSecret(tok *Token, secretHash [32]byte, now time.Time) *Refusal {
	if tok == nil {
		var zero [32]byte
		subtle.ConstantTimeCompare(secretHash[:], zero[:])
		return &Refusal{Kind: RefuseTokenUnknown}
	}
	switch {
	case subtle.ConstantTimeCompare(secretHash[:], tok.SecretHash[:]) != 1:
		return &Refusal{Kind: RefuseTokenSecret, Token: tok}
	case !tok.RevokedAt.IsZero():
		return &Refusal{Kind: RefuseTokenRevoked, Token: tok}
	case !now.Before(tok.ExpiresAt):
		return &Refusal{Kind: RefuseTokenExpired, Token: tok}
	}
	return nil
}

// IsEnrollRetry says whether a token enrollment is a retry of one that
// succeeded with the same token for the same public key, within the
// token's life, the certificate it got still valid: then that certificate
// is the answer again and no use is spent. A new key with a used token is
// not a retry.
func IsEnrollRetry(tok *Token, dev *Device, secretHash, keyHash [32]byte, now time.Time) bool {
	if tok == nil || dev == nil || dev.Status != StatusActive || dev.CertToken != tok.ID || dev.KeyHash != keyHash {
		return false
	}
	if DecideTokenSecret(tok, secretHash, now) != nil {
		return false
	}
	return StoredCertValid(dev, now)
}

// StoredCertValid says whether the device record holds its newest
// certificate (Serial) and it is valid at now.
func StoredCertValid(dev *Device, now time.Time) bool {
	if len(dev.Cert) == 0 {
		return false
	}
	cert, err := x509.ParseCertificate(dev.Cert)
	return err == nil && now.Before(cert.NotAfter) && hex.EncodeToString(cert.SerialNumber.Bytes()) == dev.Serial
}

// DecideTokenEnrollment decides a token enrollment of deviceID (canonical)
// with a CSR for the key keyHash: a retry is replayed; otherwise the token
// must be good, have a use left and allow the id, and an enrolled device
// must be active and the token made for it (a claim token must not take
// over an identity that is already enrolled).
func DecideTokenEnrollment(tok *Token, dev *Device, secretHash [32]byte, deviceID string, keyHash [32]byte, now time.Time) (replay bool, _ *Refusal) {
	if IsEnrollRetry(tok, dev, secretHash, keyHash, now) {
		return true, nil
	}
	if r := DecideTokenSecret(tok, secretHash, now); r != nil {
		return false, r
	}
	switch {
	case tok.Uses >= tok.MaxUses:
		return false, &Refusal{Kind: RefuseTokenUsedUp, Token: tok, Device: dev}
	case tok.Device != "" && !deviceid.Equal(deviceID, tok.Device):
		return false, &Refusal{Kind: RefuseTokenDevice, Token: tok, Device: dev}
	case tok.Pattern != "":
		if ok, _ := path.Match(deviceid.Canonical(tok.Pattern), deviceid.Canonical(deviceID)); !ok {
			return false, &Refusal{Kind: RefuseTokenPattern, Token: tok, Device: dev}
		}
	}
	if dev != nil {
		if dev.Status == StatusRevoked {
			return false, &Refusal{Kind: RefuseDeviceRevoked, Token: tok, Device: dev}
		}
		if tok.Device != deviceid.Canonical(deviceID) {
			return false, &Refusal{Kind: RefuseDeviceEnrolled, Token: tok, Device: dev}
		}
	}
	return false, nil
}

// DecideRenewal decides a renewal by the certificate presented (serial
// presented) and the CSR's key. The device's newest certificate renews
// (and so is shown to be held: it becomes the confirmed one). So does the
// confirmed one while the newest has not been shown: the device may never
// have received it. Then a CSR for the newest's key is a retry and gets
// the newest again; any other key gets a new certificate. Every other
// certificate is superseded: an old leaked key stops being useful once the
// device has renewed with a newer certificate.
func DecideRenewal(dev *Device, presented string, keyHash [32]byte, now time.Time) (replay bool, _ *Refusal) {
	switch {
	case dev == nil:
		return false, &Refusal{Kind: RefuseDeviceUnknown}
	case dev.Status == StatusRevoked:
		return false, &Refusal{Kind: RefuseDeviceRevoked, Device: dev}
	case presented == dev.Serial:
		return false, nil
	case presented != dev.Confirmed || dev.Confirmed == "":
		return false, &Refusal{Kind: RefuseSuperseded, Device: dev}
	case dev.KeyHash == keyHash && StoredCertValid(dev, now):
		return true, nil
	}
	return false, nil
}

// DecideRecovery decides an attested recovery: the device must be enrolled
// and not revoked.
func DecideRecovery(dev *Device) *Refusal {
	switch {
	case dev == nil:
		return &Refusal{Kind: RefuseDeviceUnknown}
	case dev.Status == StatusRevoked:
		return &Refusal{Kind: RefuseDeviceRevoked, Device: dev}
	}
	return nil
}
