package uplink

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"time"
)

// TLSOptions configure ClientTLSConfig.
type TLSOptions struct {
	RootCAs    *x509.CertPool   // the backend's CA: the enrolled CA bundle or a configured one
	ServerName string           // "" means the host of the dialed address
	Identity   *Identity        // the client certificate
	Time       func() time.Time // the agent's corrected clock; nil means time.Now
}

// ErrNoIdentity is returned to the TLS stack when the device has no
// certificate yet.
var ErrNoIdentity = errors.New("uplink: no device certificate yet")

// ClientTLSConfig is the one way every uplink builds its TLS client config:
// TLS 1.2 at least, the current identity on every handshake, and a session
// cache so reconnects resume instead of doing a full handshake.
func ClientTLSConfig(o TLSOptions) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    o.RootCAs,
		ServerName: o.ServerName,
		Time:       o.Time,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := o.Identity.Load(); c != nil {
				return c, nil
			}
			return nil, ErrNoIdentity
		},
		ClientSessionCache: &identitySessionCache{id: o.Identity},
	}
}

// identitySessionCache forgets every session when the identity changes: a
// resumed TLS session keeps the client certificate of the handshake that
// created it, so resuming after a renewal would present the old identity.
type identitySessionCache struct {
	id    *Identity
	mu    sync.Mutex
	gen   uint64
	inner tls.ClientSessionCache
}

func (c *identitySessionCache) current() tls.ClientSessionCache {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g := c.id.generation(); c.inner == nil || g != c.gen {
		c.inner, c.gen = tls.NewLRUClientSessionCache(16), g
	}
	return c.inner
}

func (c *identitySessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	return c.current().Get(key)
}

func (c *identitySessionCache) Put(key string, cs *tls.ClientSessionState) {
	c.current().Put(key, cs)
}
