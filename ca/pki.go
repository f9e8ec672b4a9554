package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/edgeagent/edgeagent/deviceid"
)

// Files in a CA directory.
const (
	RootCertFile         = "root.pem"
	RootKeyFile          = "root-key.pem"
	IntermediateCertFile = "intermediate.pem"
	IntermediateKeyFile  = "intermediate-key.pem"
	DBFile               = "edgeca.db"
	// ServeAddrFile is where `edgeca serve` writes the address it listens
	// on, so `edgeca token create` can build a URL without --url.
	ServeAddrFile = "serve.addr"
)

// DeviceURIPrefix starts the SAN URI that names a device in its certificate.
const DeviceURIPrefix = "urn:edgeagent:device:"

// Backdate is how far NotBefore is set in the past, for devices whose clock
// is a little behind the CA's.
const Backdate = 5 * time.Minute

// LeafBackdate is how far a device certificate of lifetime ttl is
// back-dated: Backdate, but at most a quarter of ttl. Agents schedule
// renewal at a fraction of NotAfter-NotBefore; a 5-minute back-date on a
// 1-minute certificate would put that point in the past at issuance and
// make every renewal trigger the next at once.
func LeafBackdate(ttl time.Duration) time.Duration {
	return min(Backdate, ttl/4)
}

// MinCertTTL and MaxCertTTL bound device certificate lifetimes.
//
// MaxCertTTL is 30 days. A short lifetime is what bounds a leaked key that
// nobody revoked, and what keeps the CRL short (a revoked serial stays
// listed until its certificate would have expired); past a month a device
// certificate is a long-lived credential that revocation alone must
// police. A month still covers a device that renews at two thirds of its
// lifetime and then stays offline for ten days, plus the renewal grace.
const (
	MinCertTTL     = time.Minute
	MaxCertTTL     = 30 * 24 * time.Hour
	DefaultCertTTL = 24 * time.Hour
)

// ErrKeyPermissions is wrapped when a key file is readable by group or others.
var ErrKeyPermissions = errors.New("key file is readable by group or others")

// ValidateDeviceID checks a device id against the one grammar
// (package deviceid).
func ValidateDeviceID(id string) error { return deviceid.Validate(id) }

// DeviceURI returns the SAN URI naming device id.
func DeviceURI(id string) *url.URL {
	u, _ := url.Parse(DeviceURIPrefix + id) // a validated id always parses
	return u
}

// DeviceIDFromCert returns the device id a certificate names: its SAN URI
// urn:edgeagent:device:<id>, which must agree with the subject CN.
func DeviceIDFromCert(c *x509.Certificate) (string, error) {
	var id string
	for _, u := range c.URIs {
		s := u.String()
		if len(s) > len(DeviceURIPrefix) && s[:len(DeviceURIPrefix)] == DeviceURIPrefix {
			if id != "" {
				return "", errors.New("certificate names more than one device")
			}
			id = s[len(DeviceURIPrefix):]
		}
	}
	if id == "" {
		return "", errors.New("certificate has no " + DeviceURIPrefix + " SAN URI")
	}
	if err := ValidateDeviceID(id); err != nil {
		return "", err
	}
	if c.Subject.CommonName != id {
		return "", fmt.Errorf("certificate CN %q and SAN URI device id %q disagree", c.Subject.CommonName, id)
	}
	return id, nil
}

// authority is the issuing engine: the root certificate (the trust anchor
// devices pin) and the intermediate that signs, with its key.
type authority struct {
	root         *x509.Certificate
	intermediate *x509.Certificate
	signer       crypto.Signer
	crlURL       string // CRL distribution point of the leaves, "" for none
}

func randomSerial() (*big.Int, error) {
	// 128 random bits; a positive INTEGER of up to 17 octets, well inside
	// RFC 5280's 20-octet limit.
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("random serial: %w", err)
		}
		if n := new(big.Int).SetBytes(b); n.Sign() > 0 {
			return n, nil
		}
	}
}

// SerialHex formats a serial the way the device registry and audit log
// store it (lower-case hex, the form `openssl x509 -serial` prints, modulo
// case).
func SerialHex(n *big.Int) string { return hex.EncodeToString(n.Bytes()) }

// issueLeaf signs a device certificate for pub.
func (a *authority) issueLeaf(pub crypto.PublicKey, deviceID string, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	if err := ValidateDeviceID(deviceID); err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(a.intermediate.NotAfter) {
		notAfter = a.intermediate.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("issuing certificate expired at %s: rotate the CA", a.intermediate.NotAfter.Format(time.RFC3339))
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: deviceID},
		URIs:                  []*url.URL{DeviceURI(deviceID)},
		NotBefore:             now.Add(-LeafBackdate(ttl)),
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if a.crlURL != "" {
		tmpl.CRLDistributionPoints = []string{a.crlURL}
	}
	var der []byte
	if key, ok := a.fastSigner(); ok {
		spki, err := marshalSPKI(pub)
		if err != nil {
			return nil, fmt.Errorf("sign certificate for %s: %w", deviceID, err)
		}
		der, err = a.leafDER(tmpl, spki, key)
		if err != nil {
			return nil, fmt.Errorf("sign certificate for %s: %w", deviceID, err)
		}
	} else {
		der, err = x509.CreateCertificate(rand.Reader, tmpl, a.intermediate, pub, a.signer)
		if err != nil {
			return nil, fmt.Errorf("sign certificate for %s: %w", deviceID, err)
		}
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", deviceID, err)
	}
	return cert, nil
}

// issueServer makes the EST server's own TLS certificate: a fresh P-256 key
// and a certificate for hosts (DNS names or IP addresses), served with the
// intermediate and the root so a device can pin the root from the chain.
func (a *authority) issueServer(hosts []string, ttl time.Duration, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("server key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if tmpl.NotAfter.After(a.intermediate.NotAfter) {
		tmpl.NotAfter = a.intermediate.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if len(hosts) > 0 {
		tmpl.Subject.CommonName = hosts[0]
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.intermediate, &key.PublicKey, a.signer)
	if err != nil {
		return nil, fmt.Errorf("sign server certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("sign server certificate: %w", err)
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, a.intermediate.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// newCACert creates a CA certificate: self-signed when parent is nil.
func newCACert(cn string, pub crypto.PublicKey, parent *x509.Certificate, parentKey crypto.Signer, maxPathLen int, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"edgeca"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		return nil, fmt.Errorf("sign CA certificate %q: %w", cn, err)
	}
	return x509.ParseCertificate(der)
}

// checkCACert checks that c may issue certificates.
func checkCACert(what string, c *x509.Certificate, now time.Time) error {
	if !c.BasicConstraintsValid || !c.IsCA {
		return fmt.Errorf("%s certificate %q is not a CA certificate (basicConstraints CA:TRUE missing)", what, c.Subject)
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%s certificate %q lacks the keyCertSign key usage", what, c.Subject)
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("%s certificate %q expired at %s", what, c.Subject, c.NotAfter.Format(time.RFC3339))
	}
	return nil
}

// keyMatches reports whether signer's public key is the one in cert.
func keyMatches(cert *x509.Certificate, signer crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := signer.Public().(equaler)
	return ok && pub.Equal(cert.PublicKey)
}

func encodeCertPEM(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func encodeKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// loadCert reads the first certificate of a PEM file.
func loadCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("read certificate %s: no PEM CERTIFICATE block", path)
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("read certificate %s: %w", path, err)
		}
		return c, nil
	}
}

// checkKeyPerm refuses a key file that group or others can access.
func checkKeyPerm(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("read private key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; run `chmod 600 %s`", ErrKeyPermissions, path, fi.Mode().Perm(), path)
	}
	return nil
}

// loadKey reads a PEM private key (PKCS#8, SEC 1 or PKCS#1) after checking
// its permissions.
func loadKey(path string) (crypto.Signer, error) {
	if err := checkKeyPerm(path); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read private key: %w", err)
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("read private key %s: no PEM private key block (want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)", path)
		}
		var key any
		switch blk.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read private key %s: %w", path, err)
		}
		switch k := key.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
			return k.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("read private key %s: unsupported key type %T", path, key)
		}
	}
}
