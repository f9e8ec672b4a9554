// Package uplink holds what every backend connection shares: the device's
// current TLS identity, swapped atomically on renewal, and the client TLS
// configuration built around it.
package uplink

import (
	"crypto/tls"
	"sync"
	"sync/atomic"
)

// Identity is the device's current client certificate. Store makes a
// renewed certificate live for every new handshake at once, and wakes
// whoever waits on Changed so connections can be re-established with it.
type Identity struct {
	cert    atomic.Pointer[tls.Certificate]
	gen     atomic.Uint64 // bumped by Store
	mu      sync.Mutex
	changed chan struct{}
}

// NewIdentity returns an Identity holding c (which may be nil).
func NewIdentity(c *tls.Certificate) *Identity {
	id := &Identity{changed: make(chan struct{})}
	if c != nil {
		id.cert.Store(c)
	}
	return id
}

// Load returns the current certificate, or nil (also for a nil Identity).
func (id *Identity) Load() *tls.Certificate {
	if id == nil {
		return nil
	}
	return id.cert.Load()
}

// generation counts Stores; 0 for a nil Identity.
func (id *Identity) generation() uint64 {
	if id == nil {
		return 0
	}
	return id.gen.Load()
}

// Store replaces the certificate and signals Changed.
func (id *Identity) Store(c *tls.Certificate) {
	id.cert.Store(c)
	id.gen.Add(1)
	id.mu.Lock()
	close(id.changed)
	id.changed = make(chan struct{})
	id.mu.Unlock()
}

// Changed returns a channel closed at the next Store.
func (id *Identity) Changed() <-chan struct{} {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.changed
}
