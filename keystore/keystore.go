// Package keystore defines how the agent holds its device key. A backend
// (file/ or tpm/) creates the key on the device and hands out a crypto.Signer;
// the private key never leaves the backend through this interface.
package keystore

import (
	"crypto"
	"errors"
	"fmt"
	"strings"
)

// Algorithm names a key type the agent can generate.
type Algorithm string

// Supported algorithms. ECDSA P-256 is the default: it is cheap on small
// CPUs and TPMs, and TLS 1.3 handles it without the RSA-PSS pitfalls.
const (
	ECDSAP256 Algorithm = "ecdsa-p256"
	RSA2048   Algorithm = "rsa-2048"
	RSA3072   Algorithm = "rsa-3072"
)

// DefaultAlgorithm is used when the configuration names none.
const DefaultAlgorithm = ECDSAP256

// ParseAlgorithm validates a configured algorithm name; "" means the default.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch a := Algorithm(strings.ToLower(strings.TrimSpace(s))); a {
	case "":
		return DefaultAlgorithm, nil
	case ECDSAP256, RSA2048, RSA3072:
		return a, nil
	default:
		return "", fmt.Errorf("keystore: unknown key algorithm %q: use one of %s, %s, %s", s, ECDSAP256, RSA2048, RSA3072)
	}
}

// ErrNoKey is returned by Current when the keystore holds no key yet.
var ErrNoKey = errors.New("keystore: no device key yet")

// Keystore holds the device's signing key.
//
// Rekeying is two-phase so that a failed renewal never destroys a working
// identity: BeginRotate creates a new key next to the current one, the caller
// obtains and stores a certificate for it, and only then calls Commit, which
// makes the new key current and retires the old one. A pending rotation
// survives a restart (Pending), so a crash between storing the certificate
// and Commit can be finished later.
type Keystore interface {
	// Current returns the current device key, or ErrNoKey.
	Current() (crypto.Signer, error)
	// Create generates the first device key. It fails if one exists.
	Create(alg Algorithm) (crypto.Signer, error)
	// BeginRotate generates a new key that is not current yet, replacing
	// any earlier pending one.
	BeginRotate(alg Algorithm) (Rotation, error)
	// Pending returns the rotation left by an earlier BeginRotate, if any.
	Pending() (Rotation, bool, error)
	// Info describes the backend for status output.
	Info() Info
	// Close releases the backend (TPM connection, file handles).
	Close() error
}

// Rotation is a key created by BeginRotate that is not current yet.
type Rotation interface {
	// Signer is the new key.
	Signer() crypto.Signer
	// Commit makes the new key current and retires the old one.
	Commit() error
	// Abort discards the new key; the current key stays.
	Abort() error
}

// Info describes a keystore for status output.
type Info struct {
	Backend string            // "file" or "tpm"
	Details map[string]string // e.g. path, TPM manufacturer, firmware
}

// LoadOrCreate returns the current key, creating one with alg if there is
// none.
func LoadOrCreate(ks Keystore, alg Algorithm) (crypto.Signer, error) {
	s, err := ks.Current()
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, ErrNoKey) {
		return nil, err
	}
	return ks.Create(alg)
}
