// Package agent is the edgeagent daemon: it keeps the device identity
// (key, certificate chain, CA bundle) in a state directory, enrolls and
// renews it over EST, and runs the uplinks.
package agent

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeagent/edgeagent/internal/atomicfile"
	"github.com/edgeagent/edgeagent/keystore"
)

// Files in the state directory besides the keystore's.
const (
	CertFile     = "cert.pem"      // leaf and intermediates
	CAFile       = "ca.pem"        // CA bundle from cacerts
	IdentityFile = "identity.json" // what renewal needs to know
	// ServerCAFile holds what authenticated the EST server's TLS at
	// enrollment (the pinned certificate, or the operator's --ca-bundle).
	// An EST server's TLS certificate need not come from the CA it
	// enrolls devices into, so renewal trusts these besides ca.pem.
	ServerCAFile = "server-ca.pem"
)

// ErrNoIdentity is returned by LoadIdentity when the device has not
// enrolled yet.
var ErrNoIdentity = errors.New("no identity: the device has not enrolled")

// Meta is identity.json.
type Meta struct {
	DeviceID   string    `json:"device_id"`
	Server     string    `json:"server"`
	Label      string    `json:"label,omitempty"`
	EnrolledAt time.Time `json:"enrolled_at"`
	RenewedAt  time.Time `json:"renewed_at,omitempty"`
}

// Identity is a usable device identity.
type Identity struct {
	Meta
	Key      crypto.Signer
	Chain    []*x509.Certificate // leaf first, no root
	CABundle []*x509.Certificate
	// ServerRoots authenticated the EST server at enrollment; may be
	// empty for state written before server-ca.pem existed.
	ServerRoots []*x509.Certificate
}

// Obtained is when this device obtained its current certificate (enrolled
// or last renewed), by its clock then; zero when unknown.
func (m Meta) Obtained() time.Time {
	if m.RenewedAt.After(m.EnrolledAt) {
		return m.RenewedAt
	}
	return m.EnrolledAt
}

// Leaf is the device certificate.
func (id *Identity) Leaf() *x509.Certificate { return id.Chain[0] }

// Serial is the leaf's serial number in hex.
func (id *Identity) Serial() string { return hex.EncodeToString(id.Leaf().SerialNumber.Bytes()) }

// NotBefore is the start of the leaf's validity.
func (id *Identity) NotBefore() time.Time { return id.Leaf().NotBefore }

// NotAfter is the end of the leaf's validity.
func (id *Identity) NotAfter() time.Time { return id.Leaf().NotAfter }

// Issuer is the leaf issuer's distinguished name.
func (id *Identity) Issuer() string { return id.Leaf().Issuer.String() }

// TLSCertificate is the identity for tls.Config.
func (id *Identity) TLSCertificate() *tls.Certificate {
	c := &tls.Certificate{PrivateKey: id.Key, Leaf: id.Leaf()}
	for _, x := range id.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// CAPool is the CA bundle as a pool.
func (id *Identity) CAPool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range id.CABundle {
		p.AddCert(c)
	}
	return p
}

// ESTPool is what authenticates the EST server on renewal: the CA bundle
// and the trust anchors used at enrollment.
func (id *Identity) ESTPool() *x509.CertPool {
	p := id.CAPool()
	for _, c := range id.ServerRoots {
		p.AddCert(c)
	}
	return p
}

// Summary is the one-line description the CLI prints.
func (id *Identity) Summary() string {
	return fmt.Sprintf("device %s serial %s not-after %s", id.DeviceID, id.Serial(), id.Leaf().NotAfter.UTC().Format(time.RFC3339))
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// HasIdentity reports whether dir holds an identity, whole or damaged: a
// certificate or the identity.json an enrollment writes with it.
func HasIdentity(dir string) bool {
	return fileExists(filepath.Join(dir, CertFile)) || fileExists(filepath.Join(dir, IdentityFile))
}

// ErrDamagedIdentity is wrapped by LoadIdentity when the state directory
// holds part of an identity (say, identity.json and the key, but no
// cert.pem): the device enrolled once, so the daemon must not enroll again
// on its own. It is also an ErrNeedsOperator.
var ErrDamagedIdentity = errors.New("the identity in the state directory is damaged")

// damaged reports a damaged identity in dir: what is wrong and how to
// recover.
func damaged(dir, what string) error {
	return needsOperator(fmt.Errorf("load identity: %w: %s; restore it from a backup, or enroll again with 'edgeagent enroll --force' "+
		"(keeps the key and the device id; needs a token or credentials)", ErrDamagedIdentity, what))
}

// moveIdentityAside moves the identity files of dir (not the key) into a
// new directory dir/damaged-<time>, which it returns: a re-enrollment over
// a damaged identity keeps what was there for the operator to look at.
func moveIdentityAside(dir string, now time.Time) (string, error) {
	aside := filepath.Join(dir, "damaged-"+now.UTC().Format("20060102T150405Z"))
	if err := os.Mkdir(aside, 0o700); err != nil {
		return "", err
	}
	for _, f := range []string{CertFile, IdentityFile, CAFile, ServerCAFile} {
		if err := os.Rename(filepath.Join(dir, f), filepath.Join(aside, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return aside, err
		}
	}
	return aside, atomicfile.SyncDir(dir)
}

// readMeta reads identity.json.
func readMeta(dir string) (Meta, error) {
	var meta Meta
	b, err := readBounded(filepath.Join(dir, IdentityFile), maxPEMBytes)
	if err != nil {
		return meta, err
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return meta, fmt.Errorf("%s: %w", IdentityFile, err)
	}
	return meta, nil
}

// LoadIdentity reads the identity in dir with its key from ks. It finishes
// a rotation that a crash interrupted after the new certificate was stored,
// and discards one interrupted before. A directory without an identity is
// ErrNoIdentity; one with part of an identity is ErrDamagedIdentity, never
// ErrNoIdentity, so nothing enrolls over it silently.
func LoadIdentity(dir string, ks keystore.Keystore) (*Identity, error) {
	certPath, metaPath := filepath.Join(dir, CertFile), filepath.Join(dir, IdentityFile)
	switch hasCert, hasMeta := fileExists(certPath), fileExists(metaPath); {
	case !hasCert && !hasMeta:
		return nil, ErrNoIdentity
	case !hasCert:
		return nil, damaged(dir, fmt.Sprintf("%s is missing (%s is there: this device enrolled)", certPath, IdentityFile))
	case !hasMeta:
		return nil, damaged(dir, fmt.Sprintf("%s is missing (%s is there: this device enrolled)", metaPath, CertFile))
	}
	meta, err := readMeta(dir)
	if err != nil {
		return nil, damaged(dir, err.Error())
	}
	chain, err := readCerts(certPath)
	if err != nil {
		return nil, damaged(dir, err.Error())
	}
	bundle, err := readCerts(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, damaged(dir, err.Error())
	}
	var serverRoots []*x509.Certificate
	if p := filepath.Join(dir, ServerCAFile); fileExists(p) {
		if serverRoots, err = readCerts(p); err != nil {
			return nil, damaged(dir, err.Error())
		}
	}
	if meta.DeviceID == "" || meta.Server == "" {
		return nil, damaged(dir, fmt.Sprintf("%s lacks device_id or server", metaPath))
	}
	if cn := chain[0].Subject.CommonName; cn != meta.DeviceID {
		// The certificate is what backends authorize: it decides.
		return nil, damaged(dir, fmt.Sprintf("%s is for device %q but %s says %q", certPath, cn, IdentityFile, meta.DeviceID))
	}
	key, err := matchingKey(ks, chain[0].PublicKey)
	if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	return &Identity{Meta: meta, Key: key, Chain: chain, CABundle: bundle, ServerRoots: serverRoots}, nil
}

// matchingKey returns the keystore key for pub, resolving a rotation left
// pending by a crash.
func matchingKey(ks keystore.Keystore, pub crypto.PublicKey) (crypto.Signer, error) {
	cur, err := ks.Current()
	if err != nil && !errors.Is(err, keystore.ErrNoKey) {
		return nil, err
	}
	if cur != nil && samePublic(cur.Public(), pub) {
		if rot, ok, perr := ks.Pending(); perr == nil && ok {
			_ = rot.Abort() // the renewal that made it never stored a certificate
		}
		return cur, nil
	}
	rot, ok, err := ks.Pending()
	if err != nil {
		return nil, err
	}
	if ok && samePublic(rot.Signer().Public(), pub) {
		if err := rot.Commit(); err != nil {
			return nil, fmt.Errorf("finish interrupted key rotation: %w", err)
		}
		return rot.Signer(), nil
	}
	return nil, needsOperator(fmt.Errorf("%w: the certificate in %s is not for the device key; enroll again with 'edgeagent enroll --force'", ErrDamagedIdentity, CertFile))
}

func samePublic(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// saveIdentity writes the CA bundle, the EST server's trust anchors, the
// metadata and the chain, each atomically. The chain goes last: its rename
// is the commit point, so until then the previous identity stays whole and
// a failure can be rolled back.
func saveIdentity(dir string, meta Meta, chain, bundle, serverRoots []*x509.Certificate) error {
	if err := atomicfile.Write(filepath.Join(dir, CAFile), encodeCerts(bundle), 0o644); err != nil {
		return err
	}
	if len(serverRoots) > 0 {
		if err := atomicfile.Write(filepath.Join(dir, ServerCAFile), encodeCerts(serverRoots), 0o644); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, IdentityFile), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, CertFile), encodeCerts(chain), 0o644)
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// maxPEMBytes bounds certificate files we read.
const maxPEMBytes = 1 << 20

func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) > maxPEMBytes {
		return nil, fmt.Errorf("%s is over %d bytes", path, maxPEMBytes)
	}
	certs, err := ParseCertsPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// ParseCertsPEM reads every CERTIFICATE block; other blocks are skipped.
func ParseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificates in PEM")
	}
	return out, nil
}
