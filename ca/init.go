package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/internal/atomicfile"
)

// CA certificate lifetimes for `edgeca init`.
const (
	RootTTL         = 10 * 365 * 24 * time.Hour
	IntermediateTTL = 5 * 365 * 24 * time.Hour
)

// Setting keys in the store.
const settingURL = "url"

// ErrInitialized is returned by Init when dir already holds a CA.
var ErrInitialized = errors.New("CA directory is already initialized")

// InitOptions configures Init. With no Import* fields a new root and
// intermediate are created. ImportRootCert alone (or with ImportRootKey)
// keeps that root; the intermediate is then imported too
// (ImportIntermediateCert and ImportIntermediateKey) or, when only the root
// key is given, created and signed by it.
type InitOptions struct {
	Name string // common name prefix, default "edgeca"
	URL  string // default EST URL put in tokens, e.g. https://ca.example:8443

	ImportRootCert, ImportRootKey                 string
	ImportIntermediateCert, ImportIntermediateKey string

	// RootKeyOut, when set, is where a new (or imported) root key is
	// written instead of the CA directory, e.g. a removable disk: serve
	// never needs it, only a new intermediate does.
	RootKeyOut string

	// DB is the database (see Options.DB): a shared PostgreSQL database
	// gets its schema and the URL setting here.
	DB string

	Now func() time.Time
}

// Init creates a CA directory. It refuses to touch a directory that already
// holds a CA.
func Init(ctx context.Context, dir string, opts InitOptions) error {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	if opts.Name == "" {
		opts.Name = "edgeca"
	}
	if opts.URL != "" {
		if err := token.ValidateURL(opts.URL); err != nil {
			return fmt.Errorf("init: --url: %w", err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, RootCertFile)); err == nil {
		return fmt.Errorf("init %s: %w (remove it or choose another --dir)", dir, ErrInitialized)
	}
	if opts.RootKeyOut != "" {
		if err := checkRootKeyOut(dir, opts.RootKeyOut); err != nil {
			return fmt.Errorf("init: --root-key-out: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("init: create %s: %w", dir, err)
	}

	root, rootKey, inter, interKey, err := initPKI(opts, now())
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}

	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{RootCertFile, encodeCertPEM(root), 0o644},
		{IntermediateCertFile, encodeCertPEM(inter), 0o644},
	}
	for _, k := range []struct {
		name string
		key  crypto.Signer
	}{{RootKeyFile, rootKey}, {IntermediateKeyFile, interKey}} {
		if k.key == nil {
			continue
		}
		b, err := encodeKeyPEM(k.key)
		if err != nil {
			return fmt.Errorf("init: %w", err)
		}
		files = append(files, struct {
			name string
			data []byte
			perm os.FileMode
		}{k.name, b, 0o600})
	}
	// Keys first and the root certificate last: root.pem is what marks the
	// directory initialized, so an interrupted init can simply be rerun.
	for i := len(files) - 1; i >= 0; i-- {
		f := files[i]
		path := filepath.Join(dir, f.name)
		if f.name == RootKeyFile && opts.RootKeyOut != "" {
			path = opts.RootKeyOut
		}
		if err := atomicfile.Write(path, f.data, f.perm); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	st, err := store.OpenDB(ctx, opts.DB, filepath.Join(dir, DBFile))
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer st.Close()
	if opts.URL != "" {
		if err := st.SetSetting(ctx, settingURL, opts.URL); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	return nil
}

func newP256() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// initPKI creates or imports the root and the intermediate and checks that
// they form a working CA. rootKey is nil when an imported root came without
// its key (kept offline).
func initPKI(o InitOptions, now time.Time) (root *x509.Certificate, rootKey crypto.Signer, inter *x509.Certificate, interKey crypto.Signer, err error) {
	importing := o.ImportRootCert != "" || o.ImportRootKey != "" || o.ImportIntermediateCert != "" || o.ImportIntermediateKey != ""
	if !importing {
		rk, err := newP256()
		if err != nil {
			return nil, nil, nil, nil, err
		}
		root, err = newCACert(o.Name+" root CA", &rk.PublicKey, nil, rk, 1, RootTTL, now)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		ik, err := newP256()
		if err != nil {
			return nil, nil, nil, nil, err
		}
		inter, err = newCACert(o.Name+" issuing CA", &ik.PublicKey, root, rk, 0, IntermediateTTL, now)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		return root, rk, inter, ik, nil
	}

	if o.ImportRootCert == "" {
		return nil, nil, nil, nil, errors.New("importing needs --import-root-cert (the trust anchor devices pin)")
	}
	if (o.ImportIntermediateCert == "") != (o.ImportIntermediateKey == "") {
		return nil, nil, nil, nil, errors.New("--import-intermediate-cert and --import-intermediate-key go together")
	}
	if o.ImportIntermediateCert == "" && o.ImportRootKey == "" {
		return nil, nil, nil, nil, errors.New("importing a root without its key needs --import-intermediate-cert and --import-intermediate-key (or give --import-root-key to create a new intermediate)")
	}
	root, err = loadCert(o.ImportRootCert)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("--import-root-cert: %w", err)
	}
	if err := checkCACert("root", root, now); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("--import-root-cert %s: %w", o.ImportRootCert, err)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("--import-root-cert %s: not a self-signed root: %w", o.ImportRootCert, err)
	}
	if o.ImportRootKey != "" {
		rootKey, err = loadKey(o.ImportRootKey)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("--import-root-key: %w", err)
		}
		if !keyMatches(root, rootKey) {
			return nil, nil, nil, nil, fmt.Errorf("--import-root-key %s is not the key of --import-root-cert %s", o.ImportRootKey, o.ImportRootCert)
		}
	}
	if o.ImportIntermediateCert == "" {
		ik, err := newP256()
		if err != nil {
			return nil, nil, nil, nil, err
		}
		inter, err = newCACert(o.Name+" issuing CA", &ik.PublicKey, root, rootKey, 0, min(IntermediateTTL, root.NotAfter.Sub(now)), now)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		return root, rootKey, inter, ik, nil
	}
	inter, err = loadCert(o.ImportIntermediateCert)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("--import-intermediate-cert: %w", err)
	}
	if err := checkCACert("intermediate", inter, now); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("--import-intermediate-cert %s: %w", o.ImportIntermediateCert, err)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("--import-intermediate-cert %s is not signed by --import-root-cert %s: %w", o.ImportIntermediateCert, o.ImportRootCert, err)
	}
	interKey, err = loadKey(o.ImportIntermediateKey)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("--import-intermediate-key: %w", err)
	}
	if !keyMatches(inter, interKey) {
		return nil, nil, nil, nil, fmt.Errorf("--import-intermediate-key %s is not the key of --import-intermediate-cert %s", o.ImportIntermediateKey, o.ImportIntermediateCert)
	}
	return root, rootKey, inter, interKey, nil
}

// checkRootKeyOut refuses a --root-key-out inside the CA directory (the
// point is to keep it off the server) or one that exists already.
func checkRootKeyOut(dir, out string) error {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	absOut, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	if rel, err := filepath.Rel(absDir, absOut); err == nil && !strings.HasPrefix(rel, "..") {
		return fmt.Errorf("%s is inside the CA directory %s: the root key is meant to leave the server", out, dir)
	}
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("%s exists: refusing to overwrite a key", out)
	}
	return nil
}
