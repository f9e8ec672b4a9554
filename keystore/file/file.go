// Package file is the file keystore backend: the device key is a PKCS#8 PEM
// file, mode 0600, written atomically. A pending rotation lives next to it
// until it is committed.
package file

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/edgeagent/edgeagent/internal/atomicfile"
	"github.com/edgeagent/edgeagent/keystore"
)

// File names inside the key directory.
const (
	KeyFile     = "key.pem"
	PendingFile = "key.next.pem"
)

// MaxKeyFileBytes bounds what Load reads; an RSA-4096 PEM is about 3.3 KiB.
const MaxKeyFileBytes = 64 << 10

// ErrPermissions is wrapped when a key file is readable by group or others.
var ErrPermissions = errors.New("key file permissions too open")

// Store is a keystore.Keystore over files in one directory.
type Store struct {
	dir string
	mu  sync.Mutex
}

var _ keystore.Keystore = (*Store)(nil)

// Open returns a Store for dir, creating dir with mode 0700 if needed.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keystore: create %s: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

// Path returns the current key's path.
func (s *Store) Path() string { return filepath.Join(s.dir, KeyFile) }

// Current loads the current key.
func (s *Store) Current() (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := LoadKey(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, keystore.ErrNoKey
	}
	return k, err
}

// Create generates and stores the first key.
func (s *Store) Create(alg keystore.Algorithm) (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := os.Stat(s.Path()); err == nil {
		return nil, fmt.Errorf("keystore: %s already exists; remove it to start over (this discards the device identity)", s.Path())
	}
	return generateAndWrite(alg, s.Path())
}

// BeginRotate generates a pending key next to the current one.
func (s *Store) BeginRotate(alg keystore.Algorithm) (keystore.Rotation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := generateAndWrite(alg, filepath.Join(s.dir, PendingFile))
	if err != nil {
		return nil, err
	}
	return &rotation{s: s, key: k}, nil
}

// Pending returns a rotation left by an earlier BeginRotate.
func (s *Store) Pending() (keystore.Rotation, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := LoadKey(filepath.Join(s.dir, PendingFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return &rotation{s: s, key: k}, true, nil
}

// Info describes the store.
func (s *Store) Info() keystore.Info {
	return keystore.Info{Backend: "file", Details: map[string]string{"path": s.Path()}}
}

// Close does nothing; files are not held open.
func (s *Store) Close() error { return nil }

type rotation struct {
	s   *Store
	key crypto.Signer
}

func (r *rotation) Signer() crypto.Signer { return r.key }

// Commit renames the pending key over the current one: one atomic step, so
// a crash leaves either the old key or the new one current.
func (r *rotation) Commit() error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if err := os.Rename(filepath.Join(r.s.dir, PendingFile), r.s.Path()); err != nil {
		return fmt.Errorf("keystore: commit rotated key: %w", err)
	}
	return atomicfile.SyncDir(r.s.dir)
}

func (r *rotation) Abort() error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if err := os.Remove(filepath.Join(r.s.dir, PendingFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("keystore: discard pending key: %w", err)
	}
	return nil
}

// Generate makes a new private key of the given algorithm.
func Generate(alg keystore.Algorithm) (crypto.Signer, error) {
	switch alg {
	case keystore.ECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case keystore.RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case keystore.RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("keystore: unsupported algorithm %q", alg)
}

func generateAndWrite(alg keystore.Algorithm, path string) (crypto.Signer, error) {
	k, err := Generate(alg)
	if err != nil {
		return nil, fmt.Errorf("keystore: generate %s key: %w", alg, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("keystore: encode key: %w", err)
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	return k, nil
}

// LoadKey reads a PEM private key (PKCS#8, or SEC1 "EC PRIVATE KEY", or
// PKCS#1 "RSA PRIVATE KEY"), refusing a file that group or others can read.
func LoadKey(path string) (crypto.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("keystore: %s has mode %04o: %w; run: chmod 600 %s", path, fi.Mode().Perm(), ErrPermissions, path)
	}
	if fi.Size() > MaxKeyFileBytes {
		return nil, fmt.Errorf("keystore: %s is %d bytes, too large for a key file", path, fi.Size())
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil && fi.Size() > 0 {
		return nil, fmt.Errorf("keystore: read %s: %w", path, err)
	}
	return ParseKey(b, path)
}

// ParseKey decodes a PEM private key; name is used in errors.
func ParseKey(b []byte, name string) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("keystore: %s holds no PEM block; it is damaged: restore it or re-enroll", name)
	}
	var key any
	var err error
	switch blk.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("keystore: %s holds a %q PEM block, want a private key", name, blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: %s: %w", name, err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("keystore: %s holds a %T, want an ECDSA or RSA key", name, key)
}
