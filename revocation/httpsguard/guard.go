// Package httpsguard puts revocation in front of an HTTPS backend that
// authenticates devices by client certificate: every handshake, resumed
// ones included, is checked against a revocation.Set (tls.Config
// VerifyConnection, which runs on resumption too, unlike
// VerifyPeerCertificate), and the live connections of a certificate that
// gets revoked are closed.
//
//	set := revocation.NewSet()
//	g := httpsguard.New(set)
//	srv := &http.Server{TLSConfig: g.TLSConfig(base), Handler: h}
//	g.Track(srv)
//	f, _ := revocation.NewFollower(revocation.FollowerOptions{..., Set: set, OnRevoke: g.OnRevoke})
//	go f.Run(ctx)
package httpsguard

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"

	"github.com/edgeagent/edgeagent/revocation"
)

// ErrRevoked is returned by VerifyConnection for a revoked certificate.
var ErrRevoked = errors.New("client certificate is revoked")

// Guard checks handshakes against a Set and closes revoked connections.
type Guard struct {
	set *revocation.Set

	mu    sync.Mutex
	conns map[string]map[net.Conn]struct{} // by leaf serial
	byCon map[net.Conn]string
}

// New returns a guard over set.
func New(set *revocation.Set) *Guard {
	return &Guard{set: set, conns: map[string]map[net.Conn]struct{}{}, byCon: map[net.Conn]string{}}
}

// Set is the guard's revocation set.
func (g *Guard) Set() *revocation.Set { return g.set }

// TLSConfig returns a clone of base whose VerifyConnection also refuses a
// revoked client certificate (after base's own VerifyConnection, if any).
func (g *Guard) TLSConfig(base *tls.Config) *tls.Config {
	cfg := base.Clone()
	prev := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if prev != nil {
			if err := prev(cs); err != nil {
				return err
			}
		}
		return g.Check(cs)
	}
	return cfg
}

// Check refuses a connection whose client certificate is revoked.
func (g *Guard) Check(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) > 0 && g.set.Revoked(cs.PeerCertificates[0]) {
		return ErrRevoked
	}
	return nil
}

// Track makes srv report its connections to the guard (chaining any
// ConnState srv has), so that OnRevoke can close them.
func (g *Guard) Track(srv *http.Server) {
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		g.connState(c, st)
		if prev != nil {
			prev(c, st)
		}
	}
}

func (g *Guard) connState(c net.Conn, st http.ConnState) {
	switch st {
	case http.StateActive:
		tc, ok := c.(*tls.Conn)
		if !ok {
			return
		}
		cs := tc.ConnectionState() // the handshake is complete once a request is read
		if !cs.HandshakeComplete || len(cs.PeerCertificates) == 0 {
			return
		}
		serial := revocation.SerialHex(cs.PeerCertificates[0])
		g.mu.Lock()
		if _, ok := g.byCon[c]; !ok {
			if g.conns[serial] == nil {
				g.conns[serial] = map[net.Conn]struct{}{}
			}
			g.conns[serial][c] = struct{}{}
			g.byCon[c] = serial
		}
		g.mu.Unlock()
		// Revoked between the handshake and now: cut at once.
		if g.set.RevokedSerial(serial) {
			c.Close()
		}
	case http.StateClosed, http.StateHijacked:
		g.mu.Lock()
		if serial, ok := g.byCon[c]; ok {
			delete(g.byCon, c)
			delete(g.conns[serial], c)
			if len(g.conns[serial]) == 0 {
				delete(g.conns, serial)
			}
		}
		g.mu.Unlock()
	}
}

// OnRevoke closes the live connections of the revoked certificates; it is
// a revocation.FollowerOptions.OnRevoke.
func (g *Guard) OnRevoke(_ context.Context, evs []revocation.Event) {
	g.mu.Lock()
	var cut []net.Conn
	for _, e := range evs {
		for c := range g.conns[e.Serial] {
			cut = append(cut, c)
		}
	}
	g.mu.Unlock()
	for _, c := range cut {
		c.Close()
	}
}

// Live is the number of tracked connections of a serial.
func (g *Guard) Live(serial string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns[serial])
}
