package agent

import (
	"crypto"
	"crypto/rsa"

	"github.com/edgeagent/edgeagent/keystore"
)

// algorithmOf names the algorithm of an existing key, so a rekey keeps it.
func algorithmOf(k crypto.Signer) keystore.Algorithm {
	if pub, ok := k.Public().(*rsa.PublicKey); ok {
		if pub.N.BitLen() > 2048 {
			return keystore.RSA3072
		}
		return keystore.RSA2048
	}
	return keystore.ECDSAP256
}
