package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/agent/lifecycle"
	"github.com/edgeagent/edgeagent/deviceid"
	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/keystore"
)

// EnrollOptions say how to obtain the first certificate. Either Token, or
// Server with CAPin or CABundle and Username/Password.
type EnrollOptions struct {
	StateDir string
	DeviceID string
	KeyAlg   keystore.Algorithm
	Keystore keystore.Keystore

	Token    *token.Token
	Server   string
	Label    string
	CAPin    token.Pin
	CABundle []*x509.Certificate
	Username string
	Password string

	// Force replaces an existing identity (the key is kept).
	Force   bool
	Timeout time.Duration
	// Now is the clock for certificate checks (the agent's corrected
	// clock); time.Now when nil.
	Now func() time.Time
	// CorrectClock treats Now as the system clock and, when it is before
	// BuildTime, corrects it from the EST server's time for this run, as
	// the daemon does (edgeagent enroll on a device without an RTC).
	CorrectClock bool
	BuildTime    time.Time
	Logger       *slog.Logger
	// OnResponse sees EST responses' Date headers (clock skew).
	OnResponse func(enroll.Response)
	// PostQuantumTLS offers the EST server hybrid post-quantum key
	// exchanges (enroll.Options.PostQuantumTLS).
	PostQuantumTLS bool
	// Attest enrolls with TPM attestation (enroll.attest: tpm); Keystore
	// must be the TPM keystore.
	Attest bool
}

// ErrIdentityExists is returned by Enroll when the state directory already
// holds an identity and Force is not set.
var ErrIdentityExists = errors.New("this device is already enrolled")

// Enroll authenticates the EST server (by pin or bundle, through /cacerts
// when its TLS chain holds only its own certificate), fetches the CA
// certificates, asks /csrattrs, creates or loads the device key, sends a
// CSR with the enrollment credentials and stores the result atomically.
func Enroll(ctx context.Context, o EnrollOptions) (*Identity, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Token != nil {
		o.Server, o.CAPin, o.Username, o.Password = o.Token.URL, o.Token.Pin, o.Token.ID, o.Token.Secret
	}
	if o.Server == "" && o.Attest && o.Keystore != nil && !attestRecoveryOptions(&o) {
		// Recovery by TPM attestation alone goes to the server of the
		// identity in the state dir; without one, only the operator can
		// help (no retry would).
		return nil, fmt.Errorf("enroll: %w", errNotEnrolled)
	}
	switch {
	case o.Server == "":
		return nil, errors.New("enroll: no EST server: give a token or a server URL")
	case o.CAPin.IsZero() && len(o.CABundle) == 0:
		return nil, errors.New("enroll: no way to authenticate the EST server: give a CA pin or a CA bundle")
	case (o.Username == "" || o.Password == "") && !o.Attest:
		return nil, errors.New("enroll: no enrollment credentials: give a token, or a username and password")
	}
	if err := deviceid.Validate(o.DeviceID); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if HasIdentity(o.StateDir) && !o.Force {
		return nil, fmt.Errorf("enroll: %w (state in %s, whole or damaged); use --force to enroll again", ErrIdentityExists, o.StateDir)
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("enroll: create state dir: %w", err)
	}

	_, roots, pin := o.trust()
	var serverRoots []*x509.Certificate
	if roots != nil {
		serverRoots = o.CABundle
	}
	if o.CorrectClock {
		// Enrolling again (--force): the identity being replaced still
		// says how late it is at least.
		replaced, _ := LoadIdentity(o.StateDir, o.Keystore) // nil if none or unreadable
		now, err := oneShotClock(ctx, o.Now, o.Logger, o.Server, o.Label, roots, pin, o.Timeout, o.BuildTime, replaced)
		if err != nil {
			return nil, fmt.Errorf("enroll: %w", err)
		}
		o.Now = now
	}
	if o.Token != nil {
		now, err := checkTokenExpiry(ctx, o, roots, pin)
		if err != nil {
			return nil, err
		}
		o.Now = now
	}
	var inter []*x509.Certificate // a leaf-only server's chain (RFC 7030 §4.1.1)
	if roots != nil {
		var err error
		if inter, err = enroll.ServerIntermediates(ctx, enroll.PinOptions{Server: o.Server, Label: o.Label, Timeout: o.Timeout, Now: o.Now}, roots); err != nil {
			return nil, err
		}
	}
	if roots == nil {
		pinned, err := enroll.FetchPinnedCA(ctx, enroll.PinOptions{Server: o.Server, Label: o.Label, Pin: o.CAPin, Timeout: o.Timeout, Now: o.Now})
		if err != nil {
			return nil, err
		}
		roots = x509.NewCertPool()
		roots.AddCert(pinned.Anchor)
		serverRoots, inter = []*x509.Certificate{pinned.Anchor}, pinned.CACerts
	}
	client, err := enroll.New(enroll.Options{Server: o.Server, Label: o.Label, Roots: roots, Intermediates: inter, Timeout: o.Timeout, Time: o.Now, OnResponse: o.OnResponse, PostQuantumTLS: o.PostQuantumTLS})
	if err != nil {
		return nil, err
	}
	defer client.CloseIdleConnections()
	bundle, err := client.CACerts(ctx)
	if err != nil {
		return nil, err
	}
	if !o.CAPin.IsZero() {
		if bundle, err = withPinned(bundle, serverRoots[0], o.Now()); err != nil {
			return nil, err
		}
	}
	o.Logger.Info("EST server authenticated", "server", o.Server, "ca_certs", len(bundle))

	plan, err := client.CSRPlan(ctx, o.Logger) // RFC 7030 §4.5
	if err != nil {
		return nil, err
	}
	key, err := keystore.LoadOrCreate(o.Keystore, keystore.Algorithm(plan.Algorithm(string(o.KeyAlg))))
	if err != nil {
		return nil, fmt.Errorf("enroll: device key: %w", err)
	}
	csr, err := enroll.BuildEnrollCSR(key, o.DeviceID, plan)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	if o.Attest {
		certs, err = attestedEnroll(ctx, client, o, csr)
	} else {
		certs, err = client.SimpleEnroll(ctx, csr, o.Username, o.Password)
	}
	if err != nil {
		return nil, err
	}
	chain, err := enroll.CheckIssued(certs, key.Public(), o.DeviceID, bundle, o.Now())
	if err != nil {
		return nil, err
	}
	meta := Meta{DeviceID: o.DeviceID, Server: o.Server, Label: o.Label, EnrolledAt: o.Now().UTC()}
	if err := saveIdentity(o.StateDir, meta, chain, bundle, serverRoots); err != nil {
		return nil, fmt.Errorf("enroll: store identity: %w", err)
	}
	return &Identity{Meta: meta, Key: key, Chain: chain, CABundle: bundle, ServerRoots: serverRoots}, nil
}

// withPinned checks the CA certificates from cacerts against the pinned
// certificate: the pinned one must be among them, or every one of them must
// chain to it (a server may publish only its issuing CA). In the second case
// the pinned certificate joins the bundle, so ca.pem ends at a trust anchor
// that openssl and TLS peers can use.
func withPinned(bundle []*x509.Certificate, pinned *x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	for _, c := range bundle {
		if c.Equal(pinned) {
			return bundle, nil
		}
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(pinned)
	for _, c := range bundle {
		inter.AddCert(c)
	}
	for _, c := range bundle {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, fmt.Errorf("enroll: GET cacerts: %q in the CA certificates the server publishes is neither the pinned %s nor issued under it: %v; check the token or pass --ca-bundle",
				c.Subject.String(), token.PinOf(pinned), err)
		}
	}
	return append(bundle, pinned), nil
}

// RenewOptions configure one renewal.
type RenewOptions struct {
	StateDir string
	Keystore keystore.Keystore
	// Rekey makes a new key for the new certificate.
	Rekey  bool
	KeyAlg keystore.Algorithm
	// Current is the identity to renew; nil loads it from StateDir.
	Current *Identity
	Timeout time.Duration
	Now     func() time.Time
	// CorrectClock and BuildTime: see EnrollOptions. The floor of a
	// plausible time also has the certificate's NotBefore and when the
	// device obtained it.
	CorrectClock bool
	BuildTime    time.Time
	Logger       *slog.Logger
	// OnResponse sees EST responses' Date headers (clock skew).
	OnResponse func(enroll.Response)
	// PostQuantumTLS: see EnrollOptions.PostQuantumTLS.
	PostQuantumTLS bool
	// Username and Password answer a server that wants HTTP Basic on
	// reenroll as well as the certificate (enroll.Options.Username).
	Username, Password string
	// Server replaces the identity's EST server (renew.server: a CA that
	// moved); "" keeps it.
	Server string
}

// renewCredentials are the HTTP Basic credentials configured for a server
// that wants them on reenroll too (enroll.username, enroll.password_file);
// none when not configured or unreadable (logged: the renewal may not need
// them).
func renewCredentials(ec config.Enroll, log *slog.Logger) (user, pass string) {
	if ec.Username == "" || ec.PasswordFile == "" {
		return "", ""
	}
	b, err := ReadSecretFile(ec.PasswordFile)
	if err != nil {
		log.Warn("renew: cannot read enroll.password_file; renewing without HTTP Basic credentials", "err", err)
		return "", ""
	}
	return ec.Username, strings.TrimRight(string(b), "\r\n")
}

// Renew re-enrolls over mutual TLS with the current certificate: a CSR
// with its Subject and SubjectAltName, what /csrattrs asks where it can,
// the chain and CA bundle from a fresh /cacerts. The new
// certificate is stored before a new key becomes current, and nothing of the
// working identity is touched unless the renewal succeeded.
func Renew(ctx context.Context, o RenewOptions) (*Identity, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	cur := o.Current
	if cur == nil {
		var err error
		if cur, err = LoadIdentity(o.StateDir, o.Keystore); err != nil {
			return nil, fmt.Errorf("renew: %w", err)
		}
	}
	if o.Server != "" && o.Server != cur.Server {
		// The CA moved (renew.server): same CA, same pinned chain, new
		// URL; the renewed identity records it.
		moved := *cur
		moved.Server = o.Server
		cur = &moved
	}
	if o.CorrectClock {
		now, err := oneShotClock(ctx, o.Now, o.Logger, cur.Server, cur.Label, cur.ESTPool(), token.Pin{}, o.Timeout, o.BuildTime, cur)
		if err != nil {
			return nil, fmt.Errorf("renew: %w", err)
		}
		o.Now = now
	}
	tlsCert := cur.TLSCertificate()
	client, err := enroll.New(enroll.Options{
		Server:         cur.Server,
		Label:          cur.Label,
		Roots:          cur.ESTPool(),
		Intermediates:  cur.CABundle,
		Certificate:    func() *tls.Certificate { return tlsCert },
		Timeout:        o.Timeout,
		Time:           o.Now,
		OnResponse:     o.OnResponse,
		PostQuantumTLS: o.PostQuantumTLS,
		Username:       o.Username,
		Password:       o.Password,
	})
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	defer client.CloseIdleConnections()

	plan, err := client.CSRPlan(ctx, o.Logger) // RFC 7030 §4.5
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	key := cur.Key
	var rot keystore.Rotation
	if o.Rekey {
		alg := o.KeyAlg
		if alg == "" {
			alg = algorithmOf(cur.Key)
		}
		alg = keystore.Algorithm(plan.Algorithm(string(alg)))
		if rot, err = o.Keystore.BeginRotate(alg); err != nil {
			return nil, fmt.Errorf("renew: new key: %w", err)
		}
		key = rot.Signer()
	}
	abort := func(err error) (*Identity, error) {
		if rot != nil {
			_ = rot.Abort()
		}
		return nil, err
	}
	csr, err := enroll.BuildRenewalCSR(key, cur.Leaf(), plan) // RFC 7030 §4.2.2
	if err != nil {
		return abort(err)
	}
	// The chain comes from /cacerts (RFC 7030 §4.2.3), fetched now so a
	// rotated intermediate or root reaches the device.
	fresh, err := client.CACerts(ctx)
	if enroll.Unreachable(err) {
		return abort(err)
	} else if err != nil {
		o.Logger.Warn("renew: cannot refresh the CA certificates; checking against the current bundle", "err", err)
	}
	certs, err := client.SimpleReenroll(ctx, csr)
	if err != nil {
		return abort(err)
	}
	chain, bundle, err := enroll.CheckIssuedWith(certs, key.Public(), cur.DeviceID, fresh, cur.CABundle, o.Now())
	if err != nil {
		return abort(err)
	}
	if err := enroll.CheckExtended(cur.Leaf(), slices.Concat(chain, bundle)); err != nil {
		o.Logger.Warn("renew: kept the new certificate, but " + strings.TrimPrefix(err.Error(), "enroll: "))
	}
	meta := cur.Meta
	meta.RenewedAt = o.Now().UTC()
	// A crash after this write and before Commit is finished by
	// LoadIdentity, which finds the certificate matches the pending key.
	if err := saveIdentity(o.StateDir, meta, chain, bundle, cur.ServerRoots); err != nil {
		if rot == nil {
			return nil, fmt.Errorf("renew: store identity: %w", err)
		}
		// The write may have failed after cert.pem was renamed into place
		// (directory fsync). Aborting then would leave a certificate
		// without its key, so settle the rotation by what is on disk.
		if settled, lerr := LoadIdentity(o.StateDir, o.Keystore); lerr == nil && samePublic(settled.Key.Public(), key.Public()) {
			return settled, nil
		}
		return abort(fmt.Errorf("renew: store identity: %w", err))
	}
	if rot != nil {
		if err := rot.Commit(); err != nil {
			return nil, fmt.Errorf("renew: commit new key: %w", err)
		}
	}
	return &Identity{Meta: meta, Key: key, Chain: chain, CABundle: bundle, ServerRoots: cur.ServerRoots}, nil
}

// checkTokenExpiry refuses a token whose own expiry has passed before its
// credentials are sent: the CA would refuse it, and only the operator can
// help. The token's expiry is the CA's, so a token that looks expired by
// the device's clock is checked again against the CA's time (its Date,
// through enroll.ServerTime: GET cacerts without credentials): a device
// whose clock runs ahead (an RTC set to local time, a drifted board)
// enrolls with a token that is still good, instead of exiting for the
// operator, and runs this enrollment on the CA's time, so that the new
// certificate is not judged expired by the clock that is ahead after the
// token was spent on it. A CA that cannot be asked leaves the verdict
// open: the error is the one from reaching it, which the daemon retries.
// It returns the clock for the rest of the enrollment.
func checkTokenExpiry(ctx context.Context, o EnrollOptions, roots *x509.CertPool, pin token.Pin) (func() time.Time, error) {
	var local *token.ExpiredError
	if !errors.As(o.Token.CheckExpiry(o.Now()), &local) {
		return o.Now, nil
	}
	clock := lifecycle.NewClock(o.Now)
	sample, err := enroll.ServerTime(ctx, enroll.TimeOptions{Server: o.Server, Label: o.Label, Roots: roots, Pin: pin,
		Intermediates: o.CABundle, NotBefore: o.BuildTime, Timeout: o.Timeout, Now: clock.Now})
	if err != nil {
		return nil, fmt.Errorf("enroll: the token's expiry (%s) has passed by this device's clock (%s), and the CA could not be asked for its time: %w",
			local.At.Format(time.RFC3339), o.Now().UTC().Format(time.RFC3339), err)
	}
	if err := o.Token.CheckExpiry(sample.Date); err != nil {
		return nil, needsOperator(fmt.Errorf("%w (by the CA's clock too: %s)", err, sample.Date.UTC().Format(time.RFC3339)))
	}
	clock.Observe(sample.Sent, sample.Received, sample.Date, true)
	o.Logger.Warn("the enrollment token has expired by this device's clock but not by the CA's: the device clock is ahead; enrolling on the CA's time; set the clock (NTP)",
		"device_time", o.Now().UTC().Format(time.RFC3339), "ca_time", sample.Date.UTC().Format(time.RFC3339),
		"offset", clock.Offset().Round(time.Second).String(), "token_expires", local.At.Format(time.RFC3339))
	return clock.Now, nil
}
