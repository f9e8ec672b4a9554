package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/internal/atomicfile"
)

// Files of the overlap after a rotation (see RotateIntermediate,
// RotateRoot).
const (
	// PreviousCAFile holds the CA certificates of the overlap: the
	// retiring intermediates (still trusted for renewal: devices hold
	// certificates they issued) and the old root. /cacerts publishes them
	// until `edgeca rotate retire`.
	PreviousCAFile = "previous.pem"
	// CrossCertFile holds the current intermediate certified by the
	// previous root, sent in the EST server's TLS chain and in /cacerts,
	// so a device that trusts only the old root accepts the server and
	// the new chain. (The intermediate is cross-certified, not the new
	// root: roots made by init allow one CA below them, path length 1, so
	// leaf, intermediate, cross-certified root, old root is one too many.)
	CrossCertFile = "cross.pem"
)

// stagedSuffix marks a file a rotation wrote and has not yet renamed into
// place; a rerun of the rotation finishes the renames.
const stagedSuffix = ".next"

// stagedOrder is the order staged files are renamed in: the overlap first
// (harmless alone), the certificate that marks the switch last.
var stagedOrder = []string{PreviousCAFile, CrossCertFile, IntermediateKeyFile, IntermediateCertFile, RootCertFile}

// RotateOptions configures RotateIntermediate and RotateRoot.
type RotateOptions struct {
	// RootKey is the root key file when it is kept offline (init
	// --root-key-out); default root-key.pem in the CA directory.
	RootKey string
	// RootKeyOut is where RotateRoot writes the new root key: required
	// when RootKey is outside the CA directory (the new key goes offline
	// too), else root-key.pem in the CA directory.
	RootKeyOut string
	// DB is the shared database (Options.DB): the replicas' issuer record
	// is moved to the new intermediate.
	DB  string
	Now func() time.Time
}

// RotateResult says what a rotation made.
type RotateResult struct {
	OldIntermediate, NewIntermediate *x509.Certificate
	OldRoot, NewRoot, Cross          *x509.Certificate // RotateRoot only
	// Finished: an interrupted rotation was completed, nothing new made.
	Finished bool
}

// stagedMarker is written once every staged file of a rotation is on
// disk: only then do the staged files form a whole rotation.
const stagedMarker = "rotation" + stagedSuffix

// finishStaged completes an interrupted rotation: with the marker, it
// renames the staged files into place (a crash midway through renaming is
// finished by the next run); without it, the staging itself was cut short
// (a new key without its certificate, say) and the staged files are
// deleted, leaving the CA as it was. It reports whether a rotation was
// completed.
func finishStaged(dir string) (bool, error) {
	marker := filepath.Join(dir, stagedMarker)
	if _, err := os.Stat(marker); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("finish the rotation: %w", err)
		}
		for _, name := range stagedOrder {
			if err := os.Remove(filepath.Join(dir, name+stagedSuffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return false, fmt.Errorf("remove an incomplete rotation: %w", err)
			}
		}
		return false, nil
	}
	for _, name := range stagedOrder {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p + stagedSuffix); err != nil {
			continue
		}
		if err := os.Rename(p+stagedSuffix, p); err != nil {
			return true, fmt.Errorf("finish the rotation: %w", err)
		}
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return true, fmt.Errorf("finish the rotation: %w", err)
	}
	if err := os.Remove(marker); err != nil {
		return true, fmt.Errorf("finish the rotation: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return true, fmt.Errorf("finish the rotation: %w", err)
	}
	return true, nil
}

type stagedFile struct {
	name string
	data []byte
	perm os.FileMode
}

// commitStaged writes every file as name.next, then the marker, then
// renames them in stagedOrder: a crash leaves either the old CA (staged
// files without the marker, which the rerun deletes), or a whole staged
// rotation that finishStaged (the rerun) completes.
func commitStaged(dir string, files []stagedFile) error {
	for _, f := range files {
		if err := atomicfile.Write(filepath.Join(dir, f.name+stagedSuffix), f.data, f.perm); err != nil {
			return err
		}
	}
	if err := atomicfile.Write(filepath.Join(dir, stagedMarker), []byte("staged rotation: complete\n"), 0o600); err != nil {
		return err
	}
	_, err := finishStaged(dir)
	return err
}

// loadCerts reads every certificate of a PEM file; a missing file is none.
func loadCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read certificates: %w", err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("read certificates %s: %w", path, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// overlap is what a CA directory holds beside the current root and
// intermediate.
type overlap struct {
	previous []*x509.Certificate // PreviousCAFile
	cross    []*x509.Certificate // CrossCertFile
}

func loadOverlap(dir string, inter *x509.Certificate) (overlap, error) {
	var o overlap
	var err error
	if o.previous, err = loadCerts(filepath.Join(dir, PreviousCAFile)); err != nil {
		return o, err
	}
	if o.cross, err = loadCerts(filepath.Join(dir, CrossCertFile)); err != nil {
		return o, err
	}
	for _, c := range o.cross {
		if k, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !bytes.Equal(c.RawSubject, inter.RawSubject) || !k.Equal(inter.PublicKey) {
			return o, fmt.Errorf("%s holds %q, which is not %s certified by another root", CrossCertFile, c.Subject, IntermediateCertFile)
		}
	}
	return o, nil
}

// isIssuingCA: an intermediate that signs device certificates (path length
// 0), as opposed to a root or a cross-certified root.
func isIssuingCA(c *x509.Certificate) bool {
	return c.IsCA && c.MaxPathLenZero && !isSelfSigned(c)
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// withoutDup appends the certificates of add not in list.
func withoutDup(list []*x509.Certificate, add ...*x509.Certificate) []*x509.Certificate {
	for _, c := range add {
		dup := false
		for _, x := range list {
			if x.Equal(c) {
				dup = true
				break
			}
		}
		if !dup {
			list = append(list, c)
		}
	}
	return list
}

// loadRootKey loads the root key (from path, else the CA directory) and
// checks it is root's.
func loadRootKey(dir, path string, root *x509.Certificate) (crypto.Signer, error) {
	if path == "" {
		path = filepath.Join(dir, RootKeyFile)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("the root key is not in %s (kept offline?): pass --root-key FILE", dir)
		}
	}
	k, err := loadKey(path)
	if err != nil {
		return nil, err
	}
	if !keyMatches(root, k) {
		return nil, fmt.Errorf("%s is not the key of the root %q in %s", path, root.Subject.CommonName, filepath.Join(dir, RootCertFile))
	}
	return k, nil
}

// namePrefix is the CA name given to init, from the root's common name.
func namePrefix(root *x509.Certificate) string {
	n := root.Subject.CommonName
	if i := strings.Index(n, " root CA"); i > 0 {
		return n[:i]
	}
	return "edgeca"
}

// generation names a rotated CA certificate apart from its predecessors.
func generation(now time.Time) string { return now.UTC().Format("20060102T150405Z") }

func fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

// RotateIntermediate makes a new issuing CA under the root and makes it
// current; the old one stays in PreviousCAFile (published in /cacerts,
// trusted for renewal) until RetireOverlap. The running servers take it at
// their next start. It needs the root key.
func RotateIntermediate(ctx context.Context, dir string, o RotateOptions) (RotateResult, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if done, err := finishStaged(dir); err != nil || done {
		return RotateResult{Finished: done}, err
	}
	root, err := loadCert(filepath.Join(dir, RootCertFile))
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate intermediate: %w", err)
	}
	old, err := loadCert(filepath.Join(dir, IntermediateCertFile))
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate intermediate: %w", err)
	}
	rootKey, err := loadRootKey(dir, o.RootKey, root)
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate intermediate: %w", err)
	}
	now := o.Now()
	if err := checkCACert("root", root, now); err != nil {
		return RotateResult{}, fmt.Errorf("rotate intermediate: %w: roll the root over instead (edgeca rotate root)", err)
	}
	ik, err := newP256()
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate intermediate: %w", err)
	}
	inter, err := newCACert(namePrefix(root)+" issuing CA "+generation(now), &ik.PublicKey, root, rootKey, 0, min(IntermediateTTL, root.NotAfter.Sub(now)), now)
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate intermediate: %w", err)
	}
	prev, err := loadCerts(filepath.Join(dir, PreviousCAFile))
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate intermediate: %w", err)
	}
	if err := stageRotation(ctx, dir, o, old, withoutDup(prev, old), nil, inter, ik, nil); err != nil {
		return RotateResult{}, fmt.Errorf("rotate intermediate: %w", err)
	}
	return RotateResult{OldIntermediate: old, NewIntermediate: inter}, nil
}

// stageRotation keeps the old intermediate key (renamed by its
// fingerprint: it signed certificates devices still hold), records the new
// issuer for the replicas, and commits the new files.
func stageRotation(ctx context.Context, dir string, o RotateOptions, old *x509.Certificate, previous, cross []*x509.Certificate, inter *x509.Certificate, interKey crypto.Signer, root *x509.Certificate) error {
	keyPEM, err := encodeKeyPEM(interKey)
	if err != nil {
		return err
	}
	if b, err := os.ReadFile(filepath.Join(dir, IntermediateKeyFile)); err == nil {
		if err := atomicfile.Write(filepath.Join(dir, "intermediate-key."+fingerprint(old)[:16]+".retired.pem"), b, 0o600); err != nil {
			return err
		}
	}
	files := []stagedFile{
		{PreviousCAFile, encodeCertPEM(previous...), 0o644},
		{IntermediateKeyFile, keyPEM, 0o600},
		{IntermediateCertFile, encodeCertPEM(inter), 0o644},
	}
	if root != nil {
		files = append(files, stagedFile{CrossCertFile, encodeCertPEM(cross...), 0o644}, stagedFile{RootCertFile, encodeCertPEM(root), 0o644})
	}
	if o.DB != "" {
		// Before the files: a replica restarted with the old directory
		// then refuses to start (checkIssuer) instead of issuing with a
		// retired key; those still running serve the old one until they
		// are restarted with the copied directory.
		st, err := store.OpenDB(ctx, o.DB, filepath.Join(dir, DBFile))
		if err != nil {
			return err
		}
		err = st.SetSetting(ctx, settingIssuer, fingerprint(inter))
		st.Close()
		if err != nil {
			return fmt.Errorf("record the new issuer for the replicas: %w", err)
		}
	}
	return commitStaged(dir, files)
}

// RotateRoot rolls the root over: a new root and a new intermediate under
// it, the new intermediate certified by the old root too (CrossCertFile), so that a
// device trusting only the old root accepts the server and the new chain,
// and learns the new root from /cacerts over a connection the old one
// authenticated. The old root and intermediate stay in PreviousCAFile
// until RetireOverlap. It needs the old root key; the new one goes to
// RootKeyOut (required when the old one was kept offline).
func RotateRoot(ctx context.Context, dir string, o RotateOptions) (RotateResult, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if done, err := finishStaged(dir); err != nil || done {
		return RotateResult{Finished: done}, err
	}
	oldRoot, err := loadCert(filepath.Join(dir, RootCertFile))
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	oldInter, err := loadCert(filepath.Join(dir, IntermediateCertFile))
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	oldKey, err := loadRootKey(dir, o.RootKey, oldRoot)
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	keyOut := o.RootKeyOut
	if keyOut == "" {
		if o.RootKey != "" {
			return RotateResult{}, errors.New("rotate root: the root key is kept offline (--root-key): give --root-key-out FILE for the new one")
		}
		keyOut = filepath.Join(dir, RootKeyFile)
	} else if err := checkRootKeyOut(dir, keyOut); err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: --root-key-out: %w", err)
	}
	now := o.Now()
	name := namePrefix(oldRoot)
	rk, err := newP256()
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	cn := name + " root CA " + generation(now)
	root, err := newCACert(cn, &rk.PublicKey, nil, rk, 1, RootTTL, now)
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	ik, err := newP256()
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	interCN := name + " issuing CA " + generation(now)
	inter, err := newCACert(interCN, &ik.PublicKey, root, rk, 0, IntermediateTTL, now)
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	// The same subject and key under the old root: a chain through it ends
	// at the old root, a chain through inter at the new one.
	cross, err := newCACert(interCN, &ik.PublicKey, oldRoot, oldKey, 0, min(IntermediateTTL, oldRoot.NotAfter.Sub(now)), now)
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: cross-certify: %w", err)
	}
	prev, err := loadCerts(filepath.Join(dir, PreviousCAFile))
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	// Earlier cross certificates move to the overlap: devices two
	// rollovers behind still chain through them until retired.
	oldCross, err := loadCerts(filepath.Join(dir, CrossCertFile))
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	prev = withoutDup(prev, oldInter)
	prev = withoutDup(prev, oldCross...)
	prev = withoutDup(prev, oldRoot)
	rkPEM, err := encodeKeyPEM(rk)
	if err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	if keyOut == filepath.Join(dir, RootKeyFile) {
		// The old root key stays, by fingerprint: it certified the new root.
		b, err := os.ReadFile(keyOut)
		if err != nil {
			return RotateResult{}, fmt.Errorf("rotate root: %w", err)
		}
		if err := atomicfile.Write(filepath.Join(dir, "root-key."+fingerprint(oldRoot)[:16]+".retired.pem"), b, 0o600); err != nil {
			return RotateResult{}, fmt.Errorf("rotate root: %w", err)
		}
	}
	// The new root key first: without it nothing else is written, and
	// with it lost the rotation could not be finished.
	if err := atomicfile.Write(keyOut, rkPEM, 0o600); err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	if err := stageRotation(ctx, dir, o, oldInter, prev, []*x509.Certificate{cross}, inter, ik, root); err != nil {
		return RotateResult{}, fmt.Errorf("rotate root: %w", err)
	}
	return RotateResult{OldIntermediate: oldInter, NewIntermediate: inter, OldRoot: oldRoot, NewRoot: root, Cross: cross}, nil
}

// RetireOptions configures RetireOverlap.
type RetireOptions struct {
	// RenewGrace is serve's --renew-grace: a device certificate still
	// renews this long after it expired, so its issuer stays trusted.
	RenewGrace time.Duration
	// Force retires even while devices hold certificates of a retiring
	// CA (they will have to enroll again).
	Force bool
	DB    string
	Now   func() time.Time
}

// ErrStillInUse is wrapped by RetireOverlap when devices still hold
// certificates of a retiring intermediate.
var ErrStillInUse = errors.New("devices still hold certificates of the retiring CA")

// RetireOverlap ends the overlap of the last rotations: the previous
// intermediates, roots and cross certificates leave /cacerts and renewal
// trust. It refuses while an active device's newest certificate, issued by
// a previous intermediate, is unexpired or within the renewal grace
// (unless Force): that device would have to enroll again. The choice of an
// explicit command over retiring by the clock is the operator's: a fleet
// with devices offline for weeks decides when to give up on them.
func RetireOverlap(ctx context.Context, dir string, o RetireOptions) ([]*x509.Certificate, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	prev, err := loadCerts(filepath.Join(dir, PreviousCAFile))
	if err != nil {
		return nil, fmt.Errorf("rotate retire: %w", err)
	}
	if len(prev) == 0 {
		return nil, nil
	}
	if !o.Force {
		st, err := store.OpenDB(ctx, o.DB, filepath.Join(dir, DBFile))
		if err != nil {
			return nil, fmt.Errorf("rotate retire: %w", err)
		}
		devs, err := st.Devices(ctx)
		st.Close()
		if err != nil {
			return nil, fmt.Errorf("rotate retire: %w", err)
		}
		if err := checkRetirable(devs, prev, o.RenewGrace, o.Now()); err != nil {
			return nil, fmt.Errorf("rotate retire: %w", err)
		}
	}
	for _, name := range []string{PreviousCAFile, CrossCertFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("rotate retire: %w", err)
		}
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return nil, fmt.Errorf("rotate retire: %w", err)
	}
	return prev, nil
}

// checkRetirable is the retirement decision: no active device's newest
// certificate issued by a retiring CA may still renew at now.
func checkRetirable(devs []store.Device, retiring []*x509.Certificate, grace time.Duration, now time.Time) error {
	var blocking []string
	var until time.Time
	for _, d := range devs {
		if d.Status != store.StatusActive || len(d.Cert) == 0 {
			continue
		}
		leaf, err := x509.ParseCertificate(d.Cert)
		if err != nil {
			continue
		}
		if !leaf.NotAfter.Add(grace).After(now) {
			continue
		}
		for _, c := range retiring {
			if isIssuingCA(c) && leaf.CheckSignatureFrom(c) == nil {
				blocking = append(blocking, d.ID)
				if t := leaf.NotAfter.Add(grace); t.After(until) {
					until = t
				}
				break
			}
		}
	}
	if len(blocking) == 0 {
		return nil
	}
	sample := blocking
	if len(sample) > 5 {
		sample = sample[:5]
	}
	return fmt.Errorf("%w: %d device(s) (%s) have not renewed since the rotation; their certificates renew until %s: retry then, or --force (they will need new tokens)",
		ErrStillInUse, len(blocking), strings.Join(sample, ", "), until.UTC().Format(time.RFC3339))
}

// Bundle is the PEM of every CA certificate the CA publishes in /cacerts:
// what a broker's cafile (mosquitto) must hold to accept devices of every
// generation of the overlap.
func (c *CA) Bundle() []byte { return encodeCertPEM(c.published...) }

// CRLRetiringPath serves the PEM CRLs of the retiring intermediates (404
// when there are none): OpenSSL (mosquitto's crlfile) refuses a client
// whose issuer has no CRL, so a broker's crlfile must hold them during
// the overlap (edgeca mosquitto-sync appends them).
const CRLRetiringPath = CRLPathPrefix + "retiring.pem"

// retiringAuthorities are the previous issuing intermediates whose keys
// the rotation kept (intermediate-key.<fingerprint>.retired.pem), as
// CRL signers with the distribution point their leaves name.
func retiringAuthorities(dir string, previous []*x509.Certificate, crlBase string, log *slog.Logger) []*authority {
	if crlBase == "" {
		crlBase = storedCRLBase(dir)
	}
	var out []*authority
	for _, p := range previous {
		if !isIssuingCA(p) {
			continue
		}
		path := filepath.Join(dir, "intermediate-key."+fingerprint(p)[:16]+".retired.pem")
		k, err := loadKey(path)
		if err != nil || !keyMatches(p, k) {
			log.Warn("no key for a retiring intermediate: no CRL covers the certificates it issued", "intermediate", p.Subject.CommonName, "file", path, "err", err)
			continue
		}
		a := &authority{intermediate: p, signer: k}
		if crlBase != "" {
			a.crlURL = strings.TrimRight(crlBase, "/") + CRLPathPrefix + crlName(p) + ".crl"
		}
		out = append(out, a)
	}
	return out
}

func (c *CA) retiringCRLIndex(path string) int {
	for i, a := range c.retiring {
		if path == CRLPathPrefix+crlName(a.intermediate)+".crl" {
			return i
		}
	}
	return -1
}

// RetiringCRLsPEM returns the CRLs of the retiring intermediates (PEM,
// nil when there are none), generated with the current CRL.
func (c *CA) RetiringCRLsPEM(ctx context.Context) ([]byte, error) {
	if _, err := c.CRL(ctx); err != nil {
		return nil, err
	}
	c.crl.mu.Lock()
	defer c.crl.mu.Unlock()
	return c.crl.retiring, nil
}

// serveRetiringCRL answers CRLRetiringPath (PEM, all of them) and each
// retiring intermediate's own CRL path (DER).
func (c *CA) serveRetiringCRL(w http.ResponseWriter, r *http.Request) {
	all, err := c.RetiringCRLsPEM(r.Context())
	if err != nil {
		c.log.Error("serve CRL", "err", err)
		writeError(w, refuse(http.StatusInternalServerError, est.CodeInternal, "internal error, see the edgeca log"))
		return
	}
	if r.URL.Path == CRLRetiringPath {
		if len(all) == 0 {
			writeError(w, refuse(http.StatusNotFound, est.CodeNotFound, "no intermediate is retiring"))
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Header().Set("Content-Length", strconv.Itoa(len(all)))
		w.Header().Set("Cache-Control", "max-age=0, must-revalidate")
		_, _ = w.Write(all)
		return
	}
	i := c.retiringCRLIndex(r.URL.Path)
	rest := all
	for j := 0; ; j++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			writeError(w, refuse(http.StatusNotFound, est.CodeNotFound, "no such CRL"))
			return
		}
		if j == i {
			w.Header().Set("Content-Type", "application/pkix-crl")
			w.Header().Set("Content-Length", strconv.Itoa(len(blk.Bytes)))
			w.Header().Set("Cache-Control", "max-age=0, must-revalidate")
			_, _ = w.Write(blk.Bytes)
			return
		}
	}
}
