package ca

import (
	"crypto"
	"errors"
	"fmt"
	"io"
)

// ErrNoSigningKey is wrapped by every signing operation of a CA opened
// with Options.KeyOptional on a directory without its issuing key.
var ErrNoSigningKey = errors.New("the issuing key is not on this host")

// absentKey stands in for the issuing key that a management host does not
// have: it names the certificate's public key (so x509 sees the right
// issuer) and refuses to sign, with what to do.
type absentKey struct {
	pub  crypto.PublicKey
	path string
}

func (k absentKey) Public() crypto.PublicKey { return k.pub }

func (k absentKey) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, fmt.Errorf("%w (%s): run this where edgeca serve runs, with its CA directory", ErrNoSigningKey, k.path)
}
