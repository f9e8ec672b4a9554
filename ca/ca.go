// Package ca is edgeca: the issuing engine (a root and an issuing
// intermediate), the EST server (RFC 7030) that enrolls devices with
// enrollment tokens and renews them over mutual TLS, and the operations on
// tokens, devices and the audit log that the edgeca command exposes. State
// lives in a ca/store Store.
package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/deviceid"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// Options configures Open.
type Options struct {
	// KeyOptional opens a CA directory that lacks the issuing key (a
	// management host with a copy of the certificates and --db, where the
	// signing key should not be): reading and recording work, and every
	// operation that must sign (issuing, a CRL, an enforcer certificate)
	// fails with ErrNoSigningKey. serve never sets it.
	KeyOptional bool
	// CertTTL is the lifetime of device certificates: DefaultCertTTL when
	// zero, at least MinTTL.
	CertTTL time.Duration
	// MinTTL is the shortest CertTTL Open accepts: MinCertTTL when zero.
	// Lifecycle tests lower it to watch many renewals in a few minutes
	// (20-second certificates, back-dated 5 s by LeafBackdate). edgeca's
	// command line does not expose it: a certificate shorter than a
	// minute is useless on a real network, so an operator cannot issue
	// one by mistake.
	MinTTL time.Duration
	// Hostnames are the DNS names and IP addresses of the TLS server
	// certificate; DefaultHostnames() when empty.
	Hostnames []string
	// Store replaces the store DB names (tests). Close closes it.
	Store store.Store
	// DB is where the state is: "" for the SQLite database in dir, a
	// SQLite file path, or a PostgreSQL URL (postgres://...) that several
	// edgeca replicas share (see store.OpenDB).
	DB string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger gets request and lifecycle logs; slog.Default() when nil.
	Logger *slog.Logger
	// RenewGrace is how long after expiry a device's certificate still
	// renews (see DefaultRenewGrace); zero: not at all. At most
	// MaxRenewGrace.
	RenewGrace time.Duration
	// AuditMaxRows is the most audit records kept: the server deletes the
	// oldest beyond it every minute. DefaultAuditMaxRows when zero; no
	// maximum when negative.
	AuditMaxRows int
	// AuditRefusalsPerMinute is how many refusals of one peer a minute
	// get an audit record and a log line each; the rest are counted in
	// one summary record. DefaultRefusalsPerMinute when zero; all when
	// negative.
	AuditRefusalsPerMinute int
	// MaxConnsPerPeer and MaxConns bound open connections per peer IP and
	// in total: DefaultMaxConnsPerPeer and DefaultMaxConns when zero.
	MaxConnsPerPeer, MaxConns int
	// PostQuantumTLS makes the EST server use a hybrid post-quantum key
	// exchange (X25519MLKEM768 and the other hybrids Go supports) with
	// every client that offers one. Off by default; see keyExchanges.
	PostQuantumTLS bool
	// CRLBaseURL (http://host:port) is where relying parties fetch the
	// CRL: every leaf names CRLBaseURL + CRLPath() as its CRL
	// distribution point. "" issues leaves without one.
	CRLBaseURL string
	// Attestation, when set, offers attested enrollment (ca/attested.go).
	Attestation *AttestOptions
	// Shed bounds the wait of an enrollment before it is refused with
	// 503 + Retry-After (see ShedOptions).
	Shed ShedOptions
	// Fleet: webhooks and the authorizing hook (webhook_hooks.go).
	Fleet FleetOptions
}

// DefaultHostnames is localhost, 127.0.0.1, ::1 and the machine's host name.
func DefaultHostnames() []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		hosts = append(hosts, h)
	}
	return hosts
}

// CA is an open CA directory.
type CA struct {
	dir      string
	auth     *authority
	st       store.Store
	ttl      time.Duration
	hosts    []string
	now      func() time.Time
	log      *slog.Logger
	cacerts  []byte // the cacerts response body, computed once
	csrattrs []byte // the csrattrs response body, computed once
	// published is what /cacerts holds; cross, the intermediate certified
	// by the previous root, goes in the TLS chain too (ca/rotate.go).
	published, cross []*x509.Certificate
	// retiring are the previous intermediates whose keys are kept: they
	// sign CRLs for the certificates they issued (ca/rotate.go).
	retiring []*authority

	// clientRoots anchors client certificate verification at the
	// intermediate: a certificate another intermediate under the same root
	// issued is not one of ours.
	clientRoots *x509.CertPool

	postQuantum bool
	attest      *attestState // nil: attested enrollment not offered
	renewGrace  time.Duration

	sampler      *refusalSampler
	auditMaxRows int

	maxConnsPerPeer, maxConns int
	inFlight                  atomic.Int64
	// The store's reachability as the last operation saw it (noteStore).
	storeDown      atomic.Bool
	storeDownSince atomic.Int64
	gate           *gate
	// Token guessing: failures slow down the peer and the token id.
	peerGuesses, tokenGuesses *guessLimiter

	rev store.RevocationStore // the revocation half of st
	crl *crlState

	// Inventory and metrics (inventory.go, metrics.go).
	contacts *contactThrottle
	metrics  *metrics
	summary  summaryCache

	tlsMu       sync.Mutex
	tlsCert     *tls.Certificate // leaf and intermediate
	tlsCertRoot *tls.Certificate // the same with the root, for pin bootstrap

	fleet *fleetState // webhook_hooks.go
}

// Open opens the CA in dir, made by Init: it loads the certificates and the
// intermediate key (refusing a key file others can read) and opens the store.
// The root key is not needed.
func Open(ctx context.Context, dir string, opts Options) (*CA, error) {
	if opts.CertTTL == 0 {
		opts.CertTTL = DefaultCertTTL
	}
	if opts.MinTTL <= 0 {
		opts.MinTTL = MinCertTTL
	}
	if opts.CertTTL < opts.MinTTL {
		return nil, fmt.Errorf("certificate lifetime %s is too short: the minimum is %s", opts.CertTTL, opts.MinTTL)
	}
	if opts.CertTTL > MaxCertTTL {
		return nil, fmt.Errorf("certificate lifetime %s is too long for a short-lived device certificate: the maximum is %s", opts.CertTTL, MaxCertTTL)
	}
	if opts.RenewGrace < 0 || opts.RenewGrace > MaxRenewGrace {
		return nil, fmt.Errorf("renewal grace %s: must be between 0 and %s", opts.RenewGrace, MaxRenewGrace)
	}
	if opts.AuditMaxRows == 0 {
		opts.AuditMaxRows = DefaultAuditMaxRows
	}
	if opts.MaxConnsPerPeer <= 0 {
		opts.MaxConnsPerPeer = DefaultMaxConnsPerPeer
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if opts.AuditRefusalsPerMinute == 0 {
		opts.AuditRefusalsPerMinute = DefaultRefusalsPerMinute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if len(opts.Hostnames) == 0 {
		opts.Hostnames = DefaultHostnames()
	}
	if _, err := os.Stat(filepath.Join(dir, RootCertFile)); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open CA %s: not initialized (run `edgeca init --dir %s`)", dir, dir)
	}
	root, err := loadCert(filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, fmt.Errorf("open CA %s: %w", dir, err)
	}
	inter, err := loadCert(filepath.Join(dir, IntermediateCertFile))
	if err != nil {
		return nil, fmt.Errorf("open CA %s: %w", dir, err)
	}
	keyPath := filepath.Join(dir, IntermediateKeyFile)
	var key crypto.Signer
	if _, err := os.Stat(keyPath); opts.KeyOptional && errors.Is(err, os.ErrNotExist) {
		key = absentKey{pub: inter.PublicKey, path: keyPath}
	} else {
		if key, err = loadKey(keyPath); err != nil {
			return nil, fmt.Errorf("open CA %s: %w", dir, err)
		}
		if !keyMatches(inter, key) {
			return nil, fmt.Errorf("open CA %s: %s is not the key of %s", dir, IntermediateKeyFile, IntermediateCertFile)
		}
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("open CA %s: %s is not signed by %s: %w", dir, IntermediateCertFile, RootCertFile, err)
	}
	ov, err := loadOverlap(dir, inter)
	if err != nil {
		return nil, fmt.Errorf("open CA %s: %w", dir, err)
	}
	// /cacerts: the issuing CA, its cross certificate (a device trusting
	// only the old root chains through it), the root, then the overlap.
	published := withoutDup([]*x509.Certificate{inter}, ov.cross...)
	published = withoutDup(published, root)
	published = withoutDup(published, ov.previous...)
	der, err := est.EncodeCertsOnly(published)
	if err != nil {
		return nil, fmt.Errorf("open CA %s: %w", dir, err)
	}
	attrs, err := csrAttrs()
	if err != nil {
		return nil, fmt.Errorf("open CA %s: %w", dir, err)
	}
	st := opts.Store
	if st == nil {
		s, err := store.OpenDB(ctx, opts.DB, filepath.Join(dir, DBFile))
		if err != nil {
			return nil, fmt.Errorf("open CA %s: %w", dir, err)
		}
		st = s
	}
	if opts.DB != "" {
		if err := checkIssuer(ctx, st, inter); err != nil {
			st.Close()
			return nil, fmt.Errorf("open CA %s: %w", dir, err)
		}
	}
	rev, ok := st.(store.RevocationStore)
	if !ok {
		st.Close()
		return nil, fmt.Errorf("open CA %s: the store %T keeps no revocations", dir, st)
	}
	fleet, err := newFleetState(opts.Fleet, st, opts.Now)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("open CA %s: %w", dir, err)
	}
	auth := &authority{root: root, intermediate: inter, signer: key}
	if opts.CRLBaseURL == "" {
		opts.CRLBaseURL = storedCRLBase(dir)
	}
	if opts.CRLBaseURL != "" {
		auth.crlURL = strings.TrimRight(opts.CRLBaseURL, "/") + CRLPathPrefix + crlName(inter) + ".crl"
	}
	pool := x509.NewCertPool()
	pool.AddCert(inter)
	for _, p := range ov.previous {
		if isIssuingCA(p) {
			// Devices renew with certificates a retiring intermediate
			// issued until the overlap ends.
			pool.AddCert(p)
		}
	}
	prev := retiringAuthorities(dir, ov.previous, opts.CRLBaseURL, opts.Logger)
	return &CA{
		rev:         rev,
		fleet:       fleet,
		crl:         newCRLState(),
		contacts:    newContactThrottle(),
		metrics:     newMetrics(),
		dir:         dir,
		auth:        auth,
		st:          st,
		ttl:         opts.CertTTL,
		hosts:       opts.Hostnames,
		now:         opts.Now,
		log:         opts.Logger,
		cacerts:     est.EncodeBase64(der),
		csrattrs:    attrs,
		clientRoots: pool,
		published:   published,
		retiring:    prev,
		cross:       ov.cross,
		postQuantum: opts.PostQuantumTLS,
		renewGrace:  opts.RenewGrace,
		attest:      newAttestState(opts.Attestation, opts.Now),

		sampler:      newRefusalSampler(opts.AuditRefusalsPerMinute),
		auditMaxRows: opts.AuditMaxRows,

		gate:            newGate(opts.Shed),
		maxConnsPerPeer: opts.MaxConnsPerPeer,
		maxConns:        opts.MaxConns,
		peerGuesses:     newGuessLimiter(peerFreeGuesses, time.Second, peerMaxBackoff),
		tokenGuesses:    newGuessLimiter(tokenFreeGuesses, time.Second, tokenMaxBackoff),
	}, nil
}

// Close closes the store.
func (c *CA) Close() error { return c.st.Close() }

// Root returns the root certificate, the trust anchor devices pin.
func (c *CA) Root() *x509.Certificate { return c.auth.root }

// Intermediate returns the issuing certificate.
func (c *CA) Intermediate() *x509.Certificate { return c.auth.intermediate }

// Pin returns the token pin of the root.
func (c *CA) Pin() token.Pin { return token.PinOf(c.auth.root) }

// CertTTL returns the lifetime of issued device certificates.
func (c *CA) CertTTL() time.Duration { return c.ttl }

// StoreKind names the store backend, for logs.
func (c *CA) StoreKind() string {
	switch c.st.(type) {
	case *store.Postgres:
		return "postgres"
	case *store.SQLite:
		return "sqlite"
	}
	return fmt.Sprintf("%T", c.st)
}

// Store returns the store (for tests and tools that read it directly).
func (c *CA) Store() store.Store { return c.st }

// serverCertTTL is the lifetime of the EST server's own certificate; it is
// reissued in memory well before it ends.
const serverCertTTL = 90 * 24 * time.Hour

// serverCert returns the current TLS server certificate, issuing a new one
// when there is none or the current one has less than a third of its life:
// served with the intermediate, and also with the root when withRoot.
func (c *CA) serverCert(withRoot bool) (*tls.Certificate, error) {
	c.tlsMu.Lock()
	defer c.tlsMu.Unlock()
	now := c.now()
	if c.tlsCert == nil || c.tlsCert.Leaf.NotAfter.Sub(now) <= serverCertTTL/3 {
		cert, err := c.auth.issueServer(c.hosts, serverCertTTL, now)
		if err != nil {
			return nil, err
		}
		for _, x := range c.cross {
			cert.Certificate = append(cert.Certificate, x.Raw)
		}
		withRoot := *cert
		withRoot.Certificate = append(append([][]byte(nil), cert.Certificate...), c.auth.root.Raw)
		c.tlsCert, c.tlsCertRoot = cert, &withRoot
	}
	if withRoot {
		return c.tlsCertRoot, nil
	}
	return c.tlsCert, nil
}

// TokenOptions configures CreateToken.
type TokenOptions struct {
	// URL of the EST server put in the token; when empty the URL given to
	// init, else the address `edgeca serve` last wrote to the CA directory.
	URL     string
	Device  string        // bind the token to this device id
	Pattern string        // or to device ids matching this path.Match pattern
	Uses    int           // 1 when zero
	TTL     time.Duration // 24h when zero
	// RequireTPM refuses enrollment with this token unless it comes with
	// TPM attestation (attest/finish).
	RequireTPM bool
}

// ErrNoURL is returned by CreateToken when no server URL is known.
var ErrNoURL = errors.New("no EST server URL known")

// CreateToken makes a token and stores its hash. The returned Token holds
// the only copy of the secret.
func (c *CA) CreateToken(ctx context.Context, o TokenOptions) (token.Token, store.Token, error) {
	tok, rec, err := c.makeToken(ctx, o)
	if err != nil {
		return token.Token{}, store.Token{}, err
	}
	if o.RequireTPM {
		// Recorded before the token exists: a crash in between leaves an
		// unused setting, never a token without its requirement.
		if err := c.st.SetSetting(ctx, settingTokenRequiresTPM+tok.ID, "1"); err != nil {
			return token.Token{}, store.Token{}, fmt.Errorf("create token: record --require-tpm: %w", err)
		}
	}
	if err := c.st.CreateToken(ctx, rec); err != nil {
		return token.Token{}, store.Token{}, fmt.Errorf("create token: %w", err)
	}
	return tok, rec, nil
}

// makeToken checks o and mints a token and its record, storing nothing.
func (c *CA) makeToken(ctx context.Context, o TokenOptions) (token.Token, store.Token, error) {
	if o.Uses == 0 {
		o.Uses = 1
	}
	if o.TTL == 0 {
		o.TTL = 24 * time.Hour
	}
	if o.Uses < 0 {
		return token.Token{}, store.Token{}, fmt.Errorf("create token: --uses %d: must be at least 1", o.Uses)
	}
	if o.TTL < 0 {
		return token.Token{}, store.Token{}, fmt.Errorf("create token: --ttl %s: must be positive", o.TTL)
	}
	if o.Device != "" && o.Pattern != "" {
		return token.Token{}, store.Token{}, errors.New("create token: give --device or --pattern, not both")
	}
	if o.Device != "" {
		if err := ValidateDeviceID(o.Device); err != nil {
			return token.Token{}, store.Token{}, fmt.Errorf("create token: --device: %w", err)
		}
	}
	if o.Pattern != "" {
		if err := validatePattern(o.Pattern); err != nil {
			return token.Token{}, store.Token{}, fmt.Errorf("create token: --pattern: %w", err)
		}
	}
	// Bindings and patterns match canonical (lower-case) device ids.
	o.Device, o.Pattern = deviceid.Canonical(o.Device), deviceid.Canonical(o.Pattern)
	u, err := c.tokenURL(ctx, o.URL)
	if err != nil {
		return token.Token{}, store.Token{}, fmt.Errorf("create token: %w", err)
	}
	var idb [8]byte
	var secret [32]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return token.Token{}, store.Token{}, fmt.Errorf("create token: %w", err)
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return token.Token{}, store.Token{}, fmt.Errorf("create token: %w", err)
	}
	tok := token.Token{
		URL:    u,
		Pin:    c.Pin(),
		ID:     "t" + hex.EncodeToString(idb[:]),
		Secret: base64.RawURLEncoding.EncodeToString(secret[:]),
	}
	now := c.now()
	// Informative for the agent (the store decides), rounded up so the
	// agent never calls a token expired that the CA still accepts.
	tok.Expires = now.Add(o.TTL).Add(time.Second - 1).Unix()
	if err := tok.Validate(); err != nil {
		return token.Token{}, store.Token{}, fmt.Errorf("create token: %w", err)
	}
	rec := store.Token{
		ID:         tok.ID,
		SecretHash: sha256.Sum256([]byte(tok.Secret)),
		Device:     o.Device,
		Pattern:    o.Pattern,
		MaxUses:    o.Uses,
		CreatedAt:  now,
		ExpiresAt:  now.Add(o.TTL),
	}
	return tok, rec, nil
}

// validatePattern accepts device id characters plus the path.Match
// metacharacters * ? [ ] ^.
func validatePattern(p string) error {
	if len(p) > 64 {
		return fmt.Errorf("pattern %q is longer than 64 characters", p)
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_*?[]^", r)) {
			return fmt.Errorf("pattern %q: %q is neither a device id character nor one of * ? [ ]", p, r)
		}
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("pattern %q: %w", p, err)
	}
	return nil
}

func (c *CA) tokenURL(ctx context.Context, explicit string) (string, error) {
	u := explicit
	if u == "" {
		s, err := c.st.Setting(ctx, settingURL)
		if err != nil {
			return "", err
		}
		u = s
	}
	if u == "" {
		b, err := os.ReadFile(filepath.Join(c.dir, ServeAddrFile))
		if err != nil {
			return "", fmt.Errorf("%w: pass --url https://HOST:PORT, or set one with `edgeca init --url`, or start `edgeca serve` first", ErrNoURL)
		}
		addr := strings.TrimSpace(string(b))
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", fmt.Errorf("%s holds %q: %w", ServeAddrFile, addr, err)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			// Listening on all interfaces: the host name is the best guess.
			if h, err := os.Hostname(); err == nil {
				host = h
			}
		}
		u = (&url.URL{Scheme: "https", Host: net.JoinHostPort(host, port)}).String()
	}
	if err := token.ValidateURL(u); err != nil {
		return "", err
	}
	return strings.TrimRight(u, "/"), nil
}

// Tokens lists all tokens.
func (c *CA) Tokens(ctx context.Context) ([]store.Token, error) { return c.st.Tokens(ctx) }

// RevokeToken revokes a token; it wraps store.ErrNotFound for an unknown id.
func (c *CA) RevokeToken(ctx context.Context, id string) error {
	return c.st.RevokeToken(ctx, id, c.now())
}

// Devices lists all devices.
func (c *CA) Devices(ctx context.Context) ([]store.Device, error) { return c.st.Devices(ctx) }

// Device returns one device by any spelling of its id; it wraps
// store.ErrNotFound for an unknown id.
func (c *CA) Device(ctx context.Context, id string) (store.Device, error) {
	if err := deviceid.Validate(id); err != nil {
		return store.Device{}, err
	}
	return c.st.Device(ctx, deviceid.Canonical(id))
}

// DefaultAuditMaxRows is the default maximum of audit records: about
// 250 MB of database, a year of a 2,000-device fleet renewing daily plus
// its sampled refusals.
const DefaultAuditMaxRows = 1_000_000

// PruneAudit deletes audit records older than before (unless zero) and all
// but the newest keep (unless keep <= 0).
func (c *CA) PruneAudit(ctx context.Context, before time.Time, keep int) (int64, error) {
	return c.st.PruneAudit(ctx, before, keep)
}

// Audit returns the newest limit audit records (all when limit <= 0).
func (c *CA) Audit(ctx context.Context, limit int) ([]store.AuditRecord, error) {
	return c.st.Audit(ctx, limit)
}

// TokenState describes a stored token for listings.
func TokenState(t store.Token, now time.Time) string {
	switch {
	case !t.RevokedAt.IsZero():
		return "revoked"
	case !now.Before(t.ExpiresAt):
		return "expired"
	case t.Uses >= t.MaxUses:
		return "used"
	default:
		return "valid"
	}
}
