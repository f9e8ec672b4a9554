package demo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"

	"golang.org/x/sync/errgroup"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/revocation"
	"github.com/edgeagent/edgeagent/revocation/httpsguard"
)

// followRevocations issues the sink an enforcer certificate and follows
// edgeca's revocation feed with it until gctx ends.
func followRevocations(ctx, gctx context.Context, g *errgroup.Group, c *ca.CA, estURL string, log *slog.Logger) (*httpsguard.Guard, error) {
	e, err := c.CreateEnforcer(ctx, "demo-sink")
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Root())
	cert := tls.Certificate{Certificate: [][]byte{e.Cert.Raw, c.Intermediate().Raw}, PrivateKey: e.Key, Leaf: e.Cert}
	guard := httpsguard.New(revocation.NewSet())
	f, err := revocation.NewFollower(revocation.FollowerOptions{
		CAURL: estURL, Set: guard.Set(), OnRevoke: guard.OnRevoke, Logger: log,
		TLS: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		return nil, fmt.Errorf("revocation feed: %w", err)
	}
	g.Go(func() error { _ = f.Run(gctx); return nil })
	return guard, nil
}
