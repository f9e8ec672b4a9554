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
	// Outbox are webhook events queued in the same transaction (fleet.go),
	// so that an event exists exactly when the enrollment committed.
	Outbox []OutboxEvent
}

// The interfaces below state behaviour only, as certmagic's Storage does:
// what each operation guarantees, never how a backend gets there (no
// batching or locking hints: those are each implementation's private
// business). Every operation that changes state is one atomic intent:
// callers never read, decide and then write, so two edgeca replicas on one
// database cannot interleave between a decision and its write. Every
// operation is durable when it returns nil: after a crash or power cut of
// the process or of the database, what was answered stays. Reads see every
// write that returned before the read began, on whichever replica it was
// made (no stale caches, no replica lag): revocation and supersession are
// decided on committed state.
//
// A backend that cannot reach its database returns an error wrapping
// ErrUnavailable, so that the server answers 503 with Retry-After instead
// of 500.

// ErrUnavailable wraps errors of a store whose database is (for now) out of
// reach: the request may be retried later unchanged.
var ErrUnavailable = errors.New("store unavailable")

// TokenStore manages enrollment tokens.
type TokenStore interface {
	// CreateToken stores a new token; an error wrapping ErrExists if the
	// id is taken (the existing token is left alone).
	CreateToken(ctx context.Context, t Token) error
	// Tokens lists every token, oldest first.
	Tokens(ctx context.Context) ([]Token, error)
	// Token returns one token, or ErrNotFound. It is a snapshot: uses are
	// counted, and checked again, only in Issue.
	Token(ctx context.Context, id string) (Token, error)
	// RevokeToken marks a token revoked (revoking twice keeps the first
	// time); ErrNotFound if there is none. An Issue that starts after it
	// returned cannot spend the token.
	RevokeToken(ctx context.Context, id string, at time.Time) error
}

// DeviceStore manages the device registry.
type DeviceStore interface {
	// Devices lists every device by id.
	Devices(ctx context.Context) ([]Device, error)
	// Device returns one device, or ErrNotFound.
	Device(ctx context.Context, id string) (Device, error)
	// RevokeDevice marks a device revoked (revoking twice keeps the first
	// time); ErrNotFound if there is none. An Issue for the device that
	// starts after it returned sees the device revoked, on every replica.
	RevokeDevice(ctx context.Context, id string, at time.Time) error
}

// AuditLog records and lists enrollment attempts.
type AuditLog interface {
	// AddAudit appends one record; Seq is assigned, increasing.
	AddAudit(ctx context.Context, r AuditRecord) error
	// Audit returns the newest limit records (all when limit <= 0),
	// newest first.
	Audit(ctx context.Context, limit int) ([]AuditRecord, error)
	// PruneAudit deletes the records older than before (unless zero) and
	// all but the newest keep records (unless keep <= 0), and returns how
	// many it deleted.
	PruneAudit(ctx context.Context, before time.Time, keep int) (int64, error)
}

// Issuer records enrollments.
type Issuer interface {
	// Issue is the enrollment intent: "if decide allows it given the
	// token and the device as they are now, spend one use of the token,
	// record the device with req.Issuance and write req.Audit", as one
	// atomic, durable step. The store reads the token (nil when
	// req.TokenID is "" or unknown) and the device (nil when new) as
	// committed, and calls decide with them. If decide returns an error,
	// nothing changes and that error is returned unchanged. If it
	// returns nil, the token use (conditional on a use being left: a
	// token with MaxUses N is spent at most N times, whatever the number
	// of replicas and callers), the device and the audit record are
	// committed together, or none of them.
	//
	// decide must be a pure function of its arguments: a backend may call
	// it more than once, with fresher state, when a concurrent Issue or
	// revocation changed the token or the device in between; only the
	// last call's answer counts. Of two requests racing for the last use
	// of a token, the second one's decide sees the first one's use.
	//
	// Once Issue returned nil the enrollment is durable; if it returns an
	// error other than decide's, the caller must not hand out the
	// certificate (it may have been recorded: a retry with the same key is
	// answered from the record, see Device.Cert).
	Issue(ctx context.Context, req IssueRequest, decide func(tok *Token, dev *Device) error) error
}

// Store is everything edgeca keeps.
type Store interface {
	TokenStore
	DeviceStore
	AuditLog
	Issuer
	// Setting returns a stored setting, "" when unset.
	Setting(ctx context.Context, key string) (string, error)
	// SetSetting stores a setting, durably.
	SetSetting(ctx context.Context, key, value string) error
	// InitSetting stores value under key unless key is set, and returns
	// the value stored now: of replicas racing, all get the first one's.
	InitSetting(ctx context.Context, key, value string) (string, error)
	// Ping returns nil when the store can serve reads and writes now
	// (the readiness probe), or an error wrapping ErrUnavailable.
	Ping(ctx context.Context) error
	// Close releases the store; later calls fail with ErrClosed.
	Close() error
}

// OpenDB opens the store at db: a PostgreSQL URL (postgres://...), a SQLite
// file path, or "" for the SQLite file at defaultPath.
func OpenDB(ctx context.Context, db, defaultPath string) (Store, error) {
	switch {
	case IsPostgresURL(db):
		return OpenPostgres(ctx, db)
	case db != "":
		return Open(ctx, db)
	}
	return Open(ctx, defaultPath)
}
