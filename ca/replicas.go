package ca

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/edgeagent/edgeagent/ca/store"
)

// settingIssuer records the SHA-256 of the issuing certificate that the
// replicas sharing a database sign with.
const settingIssuer = "issuer_sha256"

// checkIssuer makes every replica on a shared database sign with the same
// intermediate: the first one to open the database records its
// certificate's fingerprint, the others must match it.
//
// Replicas share the issuing key files (the CA directory copied to each
// host) rather than holding one intermediate each under the root, because
// a device must renew on whichever replica the load balancer picks:
// renewal trusts client certificates of this CA's own intermediate only
// (clientRoots), /cacerts is one answer on every replica, and the agent
// pins one chain. Intermediates per replica would need every replica to
// trust every other's, and a replica's loss would strand the devices it
// issued until they renew elsewhere; one key on N hosts costs guarding N
// copies of it (mode 0600, per host), the same as one CA host with
// standbys.
func checkIssuer(ctx context.Context, st store.Store, inter *x509.Certificate) error {
	sum := sha256.Sum256(inter.Raw)
	mine := hex.EncodeToString(sum[:])
	cur, err := st.InitSetting(ctx, settingIssuer, mine)
	if err != nil {
		return fmt.Errorf("check the issuing certificate of the shared database: %w", err)
	}
	if cur != mine {
		return fmt.Errorf("the database is shared with replicas that issue with another intermediate (SHA-256 %s, this directory's is %s): copy the CA directory of the first replica (intermediate.pem and its key) to every replica", cur, mine)
	}
	return nil
}

// Migrate copies the state of the CA in dir (its SQLite database) into the
// empty PostgreSQL database at db, in one transaction. Stop the server on
// dir first: what it writes after the copy began is not copied.
func Migrate(ctx context.Context, dir, db string) (store.Snapshot, error) {
	if !store.IsPostgresURL(db) {
		return store.Snapshot{}, fmt.Errorf("migrate: --db must be a PostgreSQL URL (postgres://...)")
	}
	src, err := store.Open(ctx, filepath.Join(dir, DBFile))
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("migrate: %w", err)
	}
	defer src.Close()
	snap, err := src.Snapshot(ctx)
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("migrate: %w", err)
	}
	dst, err := store.OpenPostgres(ctx, db)
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("migrate: %w", err)
	}
	defer dst.Close()
	if err := dst.Import(ctx, snap); err != nil {
		return store.Snapshot{}, fmt.Errorf("migrate: %w", err)
	}
	return snap, nil
}
