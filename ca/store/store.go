// Package store keeps edgeca's state: enrollment tokens (hashed), the device
// registry, the audit log and a few settings. The CA talks to it through the
// Store interface; Open returns the SQLite implementation, which several
// processes (the server and CLI commands) may use at the same time.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrClosed   = errors.New("store is closed")
)

// Token is an enrollment token as stored: the secret only as its SHA-256.
type Token struct {
	ID         string
	SecretHash [32]byte
	Device     string // exact device id the token is bound to, or ""
	Pattern    string // path.Match pattern device ids must match, or ""
	MaxUses    int
	Uses       int
	CreatedAt  time.Time
	ExpiresAt  time.Time
	RevokedAt  time.Time // zero when not revoked
	LastUsedAt time.Time // zero when never used
}

// Device status values.
const (
	StatusActive  = "active"
	StatusRevoked = "revoked"
)

// Device is one enrolled device.
type Device struct {
	ID          string
	Status      string // StatusActive or StatusRevoked
	Serial      string // hex serial of the newest certificate issued
	PrevSerial  string // hex serial of the one before, still allowed to renew once
	NotAfter    time.Time
	FirstSeen   time.Time
	LastSeen    time.Time
	TokenID     string // token of the latest token enrollment
	Enrollments int    // certificates issued, enroll and reenroll
	RevokedAt   time.Time
	// Cert is the DER of the newest certificate (Serial), handed again to
	// a retry whose answer was lost; KeyHash is the SHA-256 of its
	// SubjectPublicKeyInfo.
	Cert    []byte
	KeyHash [32]byte
	// CertToken is the token that issued Cert, "" when a reenrollment did.
	CertToken string
	// Confirmed is the serial of the newest certificate the device has
	// shown it holds (by renewing with it). It stays good for renewal
	// until the device shows a newer one, so lost answers never lock it
	// out; "" after a token enrollment, until the first renewal.
	Confirmed string
}

// Audit results.
const (
	ResultOK     = "ok"
	ResultDenied = "denied"
	ResultError  = "error"
)

// AuditRecord is one enrollment attempt.
type AuditRecord struct {
	Seq      int64 // assigned by the store
	Time     time.Time
	Op       string // simpleenroll, simplereenroll, token.create, ...
	Peer     string // remote address
	TokenID  string
	DeviceID string
	Result   string // ResultOK, ResultDenied or ResultError
	Code     string // stable error code the client saw, "" on success
	Reason   string // the precise reason, for operators only
	Serial   string // serial issued on success
}

// Issuance is the certificate an enrollment hands out, recorded with the
// device.
type Issuance struct {
	Serial   string
	NotAfter time.Time
	DER      []byte   // the certificate, recorded as Device.Cert
	KeyHash  [32]byte // SHA-256 of its SubjectPublicKeyInfo
}

// IssueRequest is one enrollment for Issue to record.
type IssueRequest struct {
	TokenID  string // "" for a reenrollment (no token involved)
	DeviceID string
	Time     time.Time
	Issuance Issuance
	// Presented is the serial of the client certificate a reenrollment
	// authenticated with, "" for a token enrollment. If it is the
	// device's newest certificate, that one becomes Confirmed; a token
	// enrollment clears Confirmed.
	Presented string
	Audit     AuditRecord // written on success, with Serial filled in
}

// TokenStore manages enrollment tokens.
type TokenStore interface {
	CreateToken(ctx context.Context, t Token) error
	Tokens(ctx context.Context) ([]Token, error)
	// Token returns one token, or ErrNotFound. It may lag a concurrent
	// Issue: decisions that count uses belong in Issue's check.
	Token(ctx context.Context, id string) (Token, error)
	// RevokeToken marks a token revoked; ErrNotFound if there is none.
	RevokeToken(ctx context.Context, id string, at time.Time) error
}

// DeviceStore manages the device registry.
type DeviceStore interface {
	Devices(ctx context.Context) ([]Device, error)
	// Device returns one device, or ErrNotFound.
	Device(ctx context.Context, id string) (Device, error)
	// RevokeDevice marks a device revoked; ErrNotFound if there is none.
	RevokeDevice(ctx context.Context, id string, at time.Time) error
}

// AuditLog records and lists enrollment attempts.
type AuditLog interface {
	AddAudit(ctx context.Context, r AuditRecord) error
	// Audit returns the newest limit records, newest first.
	Audit(ctx context.Context, limit int) ([]AuditRecord, error)
	// PruneAudit deletes the records older than before (unless zero) and
	// all but the newest keep records (unless keep <= 0), and returns how
	// many it deleted.
	PruneAudit(ctx context.Context, before time.Time, keep int) (int64, error)
}

// Store is everything edgeca keeps.
type Store interface {
	TokenStore
	DeviceStore
	AuditLog
	// Issue records one enrollment atomically. In a write transaction it
	// reads the token (nil when req.TokenID is "" or unknown) and the device
	// (nil when new) and calls check with them; if check passes it counts
	// one use of the token, records the device with req.Issuance and writes
	// req.Audit, and commits. If check fails nothing changes and its error
	// is returned unchanged. Concurrent calls are serialized (and may share
	// a commit): of two requests racing for the last use of a token, the
	// second one's check sees the first one's use.
	Issue(ctx context.Context, req IssueRequest, check func(tok *Token, dev *Device) error) error
	// Expect announces an Issue call that is on its way, so that the
	// store can let it share a commit with those already waiting; the
	// returned func withdraws the announcement (just before calling
	// Issue, or when the request ends without one). Only a hint: Issue
	// works without it.
	Expect() (done func())
	// Setting returns a stored setting, "" when unset.
	Setting(ctx context.Context, key string) (string, error)
	SetSetting(ctx context.Context, key, value string) error
	Close() error
}
