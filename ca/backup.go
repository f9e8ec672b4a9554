package ca

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/internal/atomicfile"
	"github.com/edgeagent/edgeagent/internal/version"
)

// Files of a backup directory besides the CA's own.
const (
	ManifestFile = "manifest.json"
	// PGDumpFile is the pg_dump (custom format) of a PostgreSQL store.
	PGDumpFile = "edgeca.pgdump"
)

// maxBackupFile bounds a CA file (not the database) read into a backup or
// a restore: certificates and keys are a few kilobytes.
const maxBackupFile = 1 << 20

// Manifest describes a backup: what it holds and each file's SHA-256,
// which restore checks before it writes anything.
type Manifest struct {
	Format    int          `json:"format"`
	CreatedAt time.Time    `json:"created_at"`
	Edgeca    string       `json:"edgeca_version"`
	Store     string       `json:"store"` // sqlite or postgres
	RootPin   string       `json:"root_sha256"`
	Issuer    string       `json:"intermediate_sha256"`
	Files     []BackupFile `json:"files"`
	// PGDump says how the PostgreSQL database was saved: "pg_dump" when
	// PGDumpFile holds it, else the command the operator must run.
	PGDump string `json:"pg_dump,omitempty"`
}

// BackupFile is one file of a backup.
type BackupFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Mode   string `json:"mode"` // octal, e.g. 0600
}

// BackupOptions configures Backup.
type BackupOptions struct {
	DB string // Options.DB: a PostgreSQL URL is dumped with pg_dump
	// PGDump is the pg_dump program; "pg_dump" on $PATH when empty.
	PGDump string
	Now    func() time.Time
}

// isCAFile: the files of a CA directory a backup takes (certificates,
// keys, the overlap); not the address files serve rewrites.
func isCAFile(name string) bool {
	return strings.HasSuffix(name, ".pem") && !strings.HasSuffix(name, stagedSuffix)
}

// Backup writes a consistent copy of the CA in dir to out, which must not
// exist or be empty: the SQLite store through VACUUM INTO (a snapshot
// taken in one read transaction, safe while serve writes), the key and
// certificate files (keys 0600) and a manifest. Everything is written in
// a temporary directory beside out and renamed to out at the end, so out
// is either a whole backup or absent.
func Backup(ctx context.Context, dir, out string, o BackupOptions) (Manifest, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := emptyOrAbsent(out); err != nil {
		return Manifest{}, fmt.Errorf("backup: --out: %w", err)
	}
	root, err := loadCert(filepath.Join(dir, RootCertFile))
	if err != nil {
		return Manifest{}, fmt.Errorf("backup %s: %w", dir, err)
	}
	inter, err := loadCert(filepath.Join(dir, IntermediateCertFile))
	if err != nil {
		return Manifest{}, fmt.Errorf("backup %s: %w", dir, err)
	}
	parent := filepath.Dir(filepath.Clean(out))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(out)+".partial-")
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	defer os.RemoveAll(tmp) // gone after the rename; left only on failure
	m := Manifest{Format: 1, CreatedAt: o.Now().UTC(), Edgeca: version.String(), RootPin: fingerprint(root), Issuer: fingerprint(inter)}

	// Keys and certificates first: a rotation racing the backup then
	// shows as a manifest whose files disagree with the store's issuer,
	// never as a store with no key for it. (Rotations are rare and
	// operator-run: do not run one during a backup.)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || !isCAFile(e.Name()) {
			continue
		}
		b, err := readBoundedFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return Manifest{}, fmt.Errorf("backup: %w", err)
		}
		perm := os.FileMode(0o644)
		if strings.Contains(e.Name(), "key") {
			perm = 0o600
		}
		if err := atomicfile.Write(filepath.Join(tmp, e.Name()), b, perm); err != nil {
			return Manifest{}, fmt.Errorf("backup: %w", err)
		}
	}
	switch {
	case store.IsPostgresURL(o.DB):
		m.Store = "postgres"
		pgdump := o.PGDump
		if pgdump == "" {
			pgdump = "pg_dump"
		}
		dbURL, env := pgConn(o.DB)
		args := []string{"--format=custom", "--no-owner", "--file", filepath.Join(tmp, PGDumpFile), "--dbname", dbURL}
		if path, err := exec.LookPath(pgdump); err != nil {
			// The keys are saved; the database is the operator's job.
			m.PGDump = "pg_dump --format=custom --no-owner --file " + filepath.Join(out, PGDumpFile) + " DATABASE_URL"
		} else {
			cmd := exec.CommandContext(ctx, path, args...)
			cmd.Env = env
			if b, err := cmd.CombinedOutput(); err != nil {
				return Manifest{}, fmt.Errorf("backup: pg_dump: %w: %s", err, strings.TrimSpace(string(b)))
			}
			m.PGDump = "pg_dump"
		}
	case o.DB != "":
		m.Store = "sqlite"
		if err := vacuumInto(ctx, o.DB, filepath.Join(tmp, DBFile)); err != nil {
			return Manifest{}, fmt.Errorf("backup: %w", err)
		}
	default:
		m.Store = "sqlite"
		if err := vacuumInto(ctx, filepath.Join(dir, DBFile), filepath.Join(tmp, DBFile)); err != nil {
			return Manifest{}, fmt.Errorf("backup: %w", err)
		}
	}
	if m.Files, err = listFiles(tmp); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(tmp, ManifestFile), append(mb, '\n'), 0o644); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	_ = os.Remove(out) // an empty directory (checked above)
	if err := os.Rename(tmp, out); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	if err := atomicfile.SyncDir(parent); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	return m, nil
}

// vacuumInto copies the SQLite database at src into the new file dst:
// VACUUM INTO reads the database in one transaction, so the copy is the
// state of one instant even while serve commits (WAL mode), and it is
// compact and self-contained (no -wal file to carry along).
func vacuumInto(ctx context.Context, src, dst string) error {
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("the store: %w", err)
	}
	if strings.ContainsAny(src, "?#") {
		return fmt.Errorf("the store %s: the path must not contain '?' or '#'", src)
	}
	db, err := sql.Open("sqlite", src+"?_busy_timeout=10000")
	if err != nil {
		return fmt.Errorf("open the store %s: %w", src, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", dst); err != nil {
		return fmt.Errorf("copy the store %s: VACUUM INTO: %w", src, err)
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("copy the store: %w", err)
	}
	defer f.Close()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("copy the store: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("copy the store: %w", err)
	}
	return nil
}

func readBoundedFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxBackupFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxBackupFile {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a CA file", path, maxBackupFile)
	}
	return b, nil
}

func fileSum(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func listFiles(dir string) ([]BackupFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []BackupFile
	for _, e := range ents {
		if !e.Type().IsRegular() || e.Name() == ManifestFile {
			continue
		}
		sum, n, err := fileSum(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		out = append(out, BackupFile{Name: e.Name(), Size: n, SHA256: sum, Mode: fmt.Sprintf("%04o", fi.Mode().Perm())})
	}
	return out, nil
}

func emptyOrAbsent(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(ents) > 0 {
		return fmt.Errorf("%s: %w", dir, ErrNotEmpty)
	}
	return nil
}

// RestoreOptions configures Restore.
type RestoreOptions struct {
	// Force restores into a directory that is not empty, replacing the
	// CA files and the store there.
	Force bool
	// DB is the PostgreSQL database to restore a postgres backup into
	// (empty: the dump is checked and left for the operator).
	DB string
	// PGRestore is the pg_restore program; "pg_restore" on $PATH when empty.
	PGRestore string
}

// ErrNotEmpty is wrapped by Restore when the target directory holds files.
var ErrNotEmpty = errors.New("the directory is not empty")

// Restore checks the backup in from against its manifest and writes it to
// dir (a new CA directory). Nothing is written unless every file matches.
func Restore(ctx context.Context, from, dir string, o RestoreOptions) (Manifest, error) {
	var m Manifest
	mb, err := readBoundedFile(filepath.Join(from, ManifestFile))
	if err != nil {
		return m, fmt.Errorf("restore: %w", err)
	}
	if err := json.Unmarshal(mb, &m); err != nil {
		return m, fmt.Errorf("restore: %s: %w", ManifestFile, err)
	}
	if m.Format != 1 {
		return m, fmt.Errorf("restore: %s: format %d is not one this edgeca reads (1)", ManifestFile, m.Format)
	}
	names := map[string]bool{}
	for _, f := range m.Files {
		if f.Name != filepath.Base(f.Name) || f.Name == "." || f.Name == ".." || strings.HasPrefix(f.Name, ".") {
			return m, fmt.Errorf("restore: %s names %q: not a file of a CA directory", ManifestFile, f.Name)
		}
		sum, n, err := fileSum(filepath.Join(from, f.Name))
		if err != nil {
			return m, fmt.Errorf("restore: %w", err)
		}
		if sum != f.SHA256 || n != f.Size {
			return m, fmt.Errorf("restore: %s does not match the manifest (SHA-256 %s, want %s): the backup is damaged", f.Name, sum, f.SHA256)
		}
		names[f.Name] = true
	}
	for _, need := range []string{RootCertFile, IntermediateCertFile, IntermediateKeyFile} {
		if !names[need] {
			return m, fmt.Errorf("restore: the backup lacks %s", need)
		}
	}
	switch m.Store {
	case "sqlite":
		if !names[DBFile] {
			return m, fmt.Errorf("restore: the backup lacks %s", DBFile)
		}
	case "postgres":
	default:
		return m, fmt.Errorf("restore: %s: unknown store %q", ManifestFile, m.Store)
	}
	if err := emptyOrAbsent(dir); err != nil && !o.Force {
		return m, fmt.Errorf("restore: %w: pass --force to replace it", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return m, fmt.Errorf("restore: %w", err)
	}
	// The store first and root.pem last: root.pem marks a CA directory.
	order := slices.Clone(m.Files)
	slices.SortStableFunc(order, func(a, b BackupFile) int {
		rank := func(f BackupFile) int {
			switch f.Name {
			case DBFile, PGDumpFile:
				return 0
			case RootCertFile:
				return 2
			}
			return 1
		}
		return rank(a) - rank(b)
	})
	for _, name := range []string{DBFile + "-wal", DBFile + "-shm"} {
		// A forced restore must not let an old WAL replay over the copy.
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return m, fmt.Errorf("restore: %w", err)
		}
	}
	for _, f := range order {
		if f.Name == PGDumpFile {
			continue // restored into the database, not the directory
		}
		perm := os.FileMode(0o644)
		if strings.Contains(f.Name, "key") || f.Name == DBFile {
			perm = 0o600
		}
		if err := copyFile(filepath.Join(from, f.Name), filepath.Join(dir, f.Name), perm); err != nil {
			return m, fmt.Errorf("restore: %w", err)
		}
	}
	if m.Store == "postgres" && o.DB != "" {
		if !names[PGDumpFile] {
			return m, fmt.Errorf("restore: the backup has no %s (it says: %s): restore the database yourself", PGDumpFile, m.PGDump)
		}
		prog := o.PGRestore
		if prog == "" {
			prog = "pg_restore"
		}
		path, err := exec.LookPath(prog)
		if err != nil {
			return m, fmt.Errorf("restore: the CA files are in %s, but %s is not installed: run pg_restore --no-owner --dbname DATABASE_URL %s", dir, prog, filepath.Join(from, PGDumpFile))
		}
		dbURL, env := pgConn(o.DB)
		cmd := exec.CommandContext(ctx, path, "--no-owner", "--exit-on-error", "--dbname", dbURL, filepath.Join(from, PGDumpFile))
		cmd.Env = env
		if b, err := cmd.CombinedOutput(); err != nil {
			return m, fmt.Errorf("restore: pg_restore: %w: %s", err, strings.TrimSpace(string(b)))
		}
	}
	return m, nil
}

// copyFile copies src to dst atomically (internal/atomicfile) with perm.
func copyFile(src, dst string, perm os.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	// Streamed (the store may be large) with atomicfile's discipline:
	// a temporary file, fsync, rename, fsync of the directory.
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, f); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dst))
}

// pgConn moves the password of a PostgreSQL URL into PGPASSWORD, so it
// is not on pg_dump's command line for every local user to read in ps.
func pgConn(db string) (string, []string) {
	env := os.Environ()
	u, err := url.Parse(db)
	if err != nil || u.User == nil {
		return db, env
	}
	pw, ok := u.User.Password()
	if !ok {
		return db, env
	}
	u.User = url.User(u.User.Username())
	return u.String(), append(env, "PGPASSWORD="+pw)
}
