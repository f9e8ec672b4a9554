// Package tpm is the TPM 2.0 keystore backend: the device key is generated
// inside the TPM as a child of the owner hierarchy's storage root key, and
// every signature is made by the TPM, so the private key never exists in
// memory or on disk in the clear.
//
// The storage root key (SRK) is the standard ECC P-256 SRK of the TCG
// provisioning guidance. It is derived from the TPM's storage seed, so it is
// recreated identically with TPM2_CreatePrimary whenever a key is loaded and
// flushed right after; nothing about it is stored. The device key's public
// and private blobs (the private one encrypted by the SRK, useless on any
// other TPM) are stored in the state directory as tpm-key.pub and
// tpm-key.priv in the TPM2B format tpm2-tools uses, or, when a persistent
// handle is configured, the key is made persistent in the TPM instead.
package tpm

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeagent/edgeagent/internal/atomicfile"
	"github.com/edgeagent/edgeagent/keystore"
)

// DefaultDevice is the kernel's TPM resource manager: it lets several
// processes share the TPM and flushes what a process leaves loaded.
const DefaultDevice = "/dev/tpmrm0"

// File names inside the state directory.
const (
	PubFile      = "tpm-key.pub"
	PrivFile     = "tpm-key.priv"
	NextPubFile  = "tpm-key.next.pub"
	NextPrivFile = "tpm-key.next.priv"
	// CommitFile marks a persistent-handle commit in progress, so that a
	// crash between evicting the old key and persisting the new one is
	// finished on the next Open instead of leaving no key.
	CommitFile = "tpm-key.committing"
)

// Owner-hierarchy persistent handles (TPM 2.0 Part 2, 7.5 and the TCG
// handle registry); 0x81000001 is conventionally the SRK, so pick another.
const (
	minPersistent uint32 = 0x81000000
	maxPersistent uint32 = 0x817FFFFF
)

// maxBlobBytes bounds what is read from a blob file; real blobs are under
// 1 KiB.
const maxBlobBytes = 64 << 10

// Options configure Open.
type Options struct {
	// Device is the TPM character device; "" means DefaultDevice.
	Device string
	// Address is host:port of a TPM simulator (swtpm's command port) to use
	// instead of Device. swtpm serves one connection at a time, so only one
	// Store may be open on it.
	Address string
	// Dir holds the key blobs and pending-rotation state. Required.
	Dir string
	// AuthValue is the device key's authorization value; empty means none.
	AuthValue []byte
	// OwnerAuth is the owner hierarchy's authorization value, needed only
	// when the owner set one (the default is empty).
	OwnerAuth []byte
	// PersistentHandle, when not 0, makes the device key persistent at this
	// handle (0x81000000-0x817FFFFF) instead of storing its blobs in Dir.
	PersistentHandle uint32
}

// Store is a keystore.Keystore whose keys live in a TPM.
type Store struct {
	opts Options
	env  env
	info keystore.Info

	// mu serializes all TPM commands (one connection, one command at a
	// time) and guards the fields below.
	mu   sync.Mutex
	tpm  transport.TPMCloser // nil once closed
	cur  *key                // current key, once Current or Create found it
	next *key                // pending rotation, once BeginRotate or Pending found it
	ak   *object             // the AK between ActivateCredential and Certify, else nil
}

var _ keystore.Keystore = (*Store)(nil)

// Open connects to the TPM and prepares the state directory. It finishes a
// key rotation that a crash interrupted half way through Commit.
func Open(o Options) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("keystore: tpm: no state directory configured for the TPM key blobs")
	}
	if o.Device != "" && o.Address != "" {
		return nil, fmt.Errorf("keystore: tpm: both tpm.device (%s) and tpm.address (%s) are set: set only one", o.Device, o.Address)
	}
	if o.PersistentHandle != 0 && (o.PersistentHandle < minPersistent || o.PersistentHandle > maxPersistent) {
		return nil, fmt.Errorf("keystore: tpm: tpm.persistent_handle 0x%08x is not an owner persistent handle: use one in 0x%08x-0x%08x, e.g. 0x81000100", o.PersistentHandle, minPersistent, maxPersistent)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("keystore: tpm: create %s: %w", o.Dir, err)
	}
	var (
		t   transport.TPMCloser
		e   env
		err error
	)
	if o.Address != "" {
		t, e, err = dialSimulator(o.Address)
	} else {
		if o.Device == "" {
			o.Device = DefaultDevice
		}
		t, e, err = openDevice(o.Device)
	}
	if err != nil {
		return nil, err
	}
	e.dir = o.Dir
	s := &Store{opts: o, env: e, tpm: t}
	if s.info, err = s.readInfo(); err != nil {
		t.Close()
		return nil, err
	}
	if err := s.recoverCommit(); err != nil {
		t.Close()
		return nil, err
	}
	s.flushStaleTransients()
	return s, nil
}

// flushStaleTransients flushes the transient objects a previous process
// left loaded. Without a resource manager (a simulator, /dev/tpm0) they
// outlive the process that loaded them and, with a TPM that has three
// object slots, one killed agent is enough to make the next attestation
// fail with TPM_RC_OBJECT_MEMORY. Such a connection is exclusive, so
// nothing loaded belongs to anyone else; behind /dev/tpmrm0 the list is
// this connection's own, empty.
func (s *Store) flushStaleTransients() {
	s.mu.Lock()
	defer s.mu.Unlock()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(tpm2.TPMHTTransient) << 24, PropertyCount: 64}.Execute(s.tpm)
	if err != nil {
		return // an old TPM that cannot list them: nothing to gain
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		return
	}
	for _, h := range hs.Handle {
		s.flushLocked(h)
	}
}

// Info describes the TPM for status output.
func (s *Store) Info() keystore.Info {
	d := make(map[string]string, len(s.info.Details))
	for k, v := range s.info.Details {
		d[k] = v
	}
	return keystore.Info{Backend: s.info.Backend, Details: d}
}

// Close flushes the keys this Store loaded and closes the TPM connection.
// Signers handed out fail with ErrClosed afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil
	}
	for _, k := range []*key{s.cur, s.next} {
		if k != nil {
			s.unloadLocked(k)
		}
	}
	s.dropAKLocked()
	err := s.tpm.Close()
	s.tpm = nil
	return err
}

// Current returns the current device key, or keystore.ErrNoKey. It loads the
// key into the TPM right away, so blobs this TPM cannot use are reported
// here rather than at the first TLS handshake.
func (s *Store) Current() (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, ErrClosed
	}
	if s.cur != nil {
		return s.cur, nil
	}
	var k *key
	var err error
	if s.persistent() {
		k, err = s.readPersistentLocked()
	} else {
		k, err = s.readBlobs(PubFile, PrivFile)
	}
	if err != nil {
		return nil, err
	}
	if err := s.loadLocked(k); err != nil {
		return nil, err
	}
	s.cur = k
	return k, nil
}

// Create generates the first device key in the TPM. It fails if one exists.
func (s *Store) Create(alg keystore.Algorithm) (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, ErrClosed
	}
	if s.persistent() {
		if _, err := s.readPersistentLocked(); err == nil {
			return nil, fmt.Errorf("keystore: tpm: persistent handle 0x%08x already holds a key; to start over (this discards the device identity) run: tpm2_evictcontrol -C o -c 0x%08x", s.opts.PersistentHandle, s.opts.PersistentHandle)
		} else if !errors.Is(err, keystore.ErrNoKey) {
			return nil, err
		}
	} else if _, err := os.Stat(s.path(PubFile)); err == nil {
		return nil, fmt.Errorf("keystore: tpm: %s already exists; remove %s and %s to start over (this discards the device identity)", s.path(PubFile), PubFile, PrivFile)
	}
	k, err := s.newKeyLocked(alg)
	if err != nil {
		return nil, err
	}
	// Loading proves the TPM accepts the key before anything is stored.
	if err := s.loadLocked(k); err != nil {
		return nil, err
	}
	if s.persistent() {
		if err := s.persistLocked(k, tpm2.TPMHandle(s.opts.PersistentHandle)); err != nil {
			s.unloadLocked(k)
			return nil, err
		}
	} else if err := s.writeBlobs(k, PubFile, PrivFile); err != nil {
		s.unloadLocked(k)
		return nil, err
	}
	s.cur = k
	return k, nil
}

// BeginRotate creates a new key next to the current one and stores its
// blobs as tpm-key.next.*, replacing an earlier pending rotation. With a
// persistent handle, the new key becomes persistent only on Commit.
func (s *Store) BeginRotate(alg keystore.Algorithm) (keystore.Rotation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, ErrClosed
	}
	if s.next != nil {
		s.retireLocked(s.next)
		s.next = nil
	}
	k, err := s.newKeyLocked(alg)
	if err != nil {
		return nil, err
	}
	if err := s.writeBlobs(k, NextPubFile, NextPrivFile); err != nil {
		return nil, err
	}
	s.next = k
	return &rotation{s: s, k: k}, nil
}

// Pending returns the rotation an earlier BeginRotate left, if any.
func (s *Store) Pending() (keystore.Rotation, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, false, ErrClosed
	}
	if s.next != nil {
		return &rotation{s: s, k: s.next}, true, nil
	}
	k, err := s.readBlobs(NextPubFile, NextPrivFile)
	if errors.Is(err, keystore.ErrNoKey) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if err := s.loadLocked(k); err != nil {
		return nil, false, err
	}
	s.next = k
	return &rotation{s: s, k: k}, true, nil
}

type rotation struct {
	s *Store
	k *key
}

func (r *rotation) Signer() crypto.Signer { return r.k }

// Commit makes the new key current and retires the old one: its loaded
// handle is flushed (blob mode; the old blobs are overwritten) or its
// persistent handle is evicted, and its Signer fails with ErrRetired.
func (r *rotation) Commit() error {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return ErrClosed
	}
	if s.next != r.k {
		return errors.New("keystore: tpm: commit: this rotation is no longer pending (it was committed, aborted or replaced by a newer one)")
	}
	if s.persistent() {
		if err := atomicfile.Write(s.path(CommitFile), nil, 0o600); err != nil {
			return fmt.Errorf("keystore: tpm: commit: %w", err)
		}
		if err := s.finishPersistentCommitLocked(r.k); err != nil {
			return err
		}
	} else if err := s.commitBlobs(); err != nil {
		return err
	}
	if s.cur != nil && s.cur != r.k {
		s.retireLocked(s.cur)
	}
	s.cur, s.next = r.k, nil
	return nil
}

// Abort discards the new key; the current one stays.
func (r *rotation) Abort() error {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next != r.k {
		if r.k.retired {
			return nil // already aborted or replaced
		}
		return errors.New("keystore: tpm: abort: this rotation was already committed")
	}
	// Public first: without it there is no pending rotation, whatever
	// happens to the private blob.
	for _, f := range []string{NextPubFile, NextPrivFile} {
		if err := os.Remove(s.path(f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keystore: tpm: discard pending key: %w", err)
		}
	}
	if s.tpm != nil {
		s.retireLocked(r.k)
	} else {
		r.k.retired = true
	}
	s.next = nil
	return nil
}

// commitBlobs renames the pending blobs over the current ones. Private
// first: if a crash comes between the two renames, the state "next.pub
// without next.priv" can only mean an interrupted commit (BeginRotate writes
// the public blob last and Abort removes it first), and recoverCommit
// finishes it.
func (s *Store) commitBlobs() error {
	if err := os.Rename(s.path(NextPrivFile), s.path(PrivFile)); err != nil {
		return fmt.Errorf("keystore: tpm: commit rotated key: %w", err)
	}
	if err := os.Rename(s.path(NextPubFile), s.path(PubFile)); err != nil {
		return fmt.Errorf("keystore: tpm: commit rotated key: %w", err)
	}
	if err := atomicfile.SyncDir(s.opts.Dir); err != nil {
		return fmt.Errorf("keystore: tpm: commit rotated key: %w", err)
	}
	return nil
}

// recoverCommit finishes a Commit that a crash interrupted.
func (s *Store) recoverCommit() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.persistent() {
		if _, err := os.Stat(s.path(CommitFile)); err != nil {
			return nil
		}
		k, err := s.readBlobs(NextPubFile, NextPrivFile)
		if errors.Is(err, keystore.ErrNoKey) {
			// The new key was persisted and its blobs removed; only the
			// marker was left.
			return s.removeFiles(CommitFile)
		}
		if err != nil {
			return err
		}
		return s.finishPersistentCommitLocked(k)
	}
	_, pubErr := os.Stat(s.path(NextPubFile))
	_, privErr := os.Stat(s.path(NextPrivFile))
	if pubErr == nil && errors.Is(privErr, fs.ErrNotExist) {
		if err := os.Rename(s.path(NextPubFile), s.path(PubFile)); err != nil {
			return fmt.Errorf("keystore: tpm: finish interrupted key rotation: %w", err)
		}
		return atomicfile.SyncDir(s.opts.Dir)
	}
	return nil
}

// finishPersistentCommitLocked replaces the key at the persistent handle with
// k. Every step checks the TPM's state first, so running it again after a
// crash at any point converges.
func (s *Store) finishPersistentCommitLocked(k *key) error {
	h := tpm2.TPMHandle(s.opts.PersistentHandle)
	rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(s.tpm)
	switch {
	case err == nil && bytes.Equal(rp.OutPublic.Bytes(), k.pub.Bytes()):
		// Already persisted.
		s.unloadLocked(k)
		k.handle, k.name, k.persistent, k.priv = h, rp.Name, h, tpm2.TPM2BPrivate{}
	case err == nil:
		if _, err := (tpm2.EvictControl{
			Auth:             s.ownerAuth(),
			ObjectHandle:     tpm2.NamedHandle{Handle: h, Name: rp.Name},
			PersistentHandle: h,
		}).Execute(s.tpm); err != nil {
			return classify(opOwner, fmt.Sprintf("evict old key at 0x%08x", uint32(h)), err, s.env)
		}
		fallthrough
	case errors.Is(err, tpm2.TPMRCHandle):
		if err := s.persistLocked(k, h); err != nil {
			return err
		}
	default:
		return classify(opOther, fmt.Sprintf("read persistent handle 0x%08x", uint32(h)), err, s.env)
	}
	return s.removeFiles(NextPubFile, NextPrivFile, CommitFile)
}

func (s *Store) removeFiles(names ...string) error {
	for _, n := range names {
		if err := os.Remove(s.path(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keystore: tpm: %w", err)
		}
	}
	if err := atomicfile.SyncDir(s.opts.Dir); err != nil {
		return fmt.Errorf("keystore: tpm: %w", err)
	}
	return nil
}

func (s *Store) persistent() bool { return s.opts.PersistentHandle != 0 }

func (s *Store) path(name string) string { return filepath.Join(s.opts.Dir, name) }

func (s *Store) ownerAuth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(s.opts.OwnerAuth)}
}

// srkLocked recreates the storage root key. The caller flushes it.
func (s *Store) srkLocked() (tpm2.AuthHandle, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: s.ownerAuth(),
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(s.tpm)
	if err != nil {
		return tpm2.AuthHandle{}, classify(opOwner, "create storage root key (owner hierarchy)", err, s.env)
	}
	return tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)}, nil
}

func (s *Store) flushLocked(h tpm2.TPMHandle) {
	// A failed flush only leaks a transient slot until the TPM resets (or
	// until this process exits, with the resource manager); there is
	// nothing more useful to do with the error.
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(s.tpm)
}

// newKeyLocked creates a device key under the SRK. The key is not loaded.
func (s *Store) newKeyLocked(alg keystore.Algorithm) (*key, error) {
	tmpl, err := template(alg)
	if err != nil {
		return nil, err
	}
	srk, err := s.srkLocked()
	if err != nil {
		return nil, err
	}
	defer s.flushLocked(srk.Handle)
	rsp, err := tpm2.Create{
		ParentHandle: srk,
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			UserAuth: tpm2.TPM2BAuth{Buffer: s.opts.AuthValue},
		}},
		InPublic: tpm2.New2B(tmpl),
	}.Execute(s.tpm)
	if err != nil {
		return nil, classify(opOther, fmt.Sprintf("create %s device key (does this TPM support it? %s always works)", alg, keystore.ECDSAP256), err, s.env)
	}
	return s.keyFromBlobs(rsp.OutPublic, rsp.OutPrivate, "the new key")
}

func (s *Store) keyFromBlobs(pub tpm2.TPM2BPublic, priv tpm2.TPM2BPrivate, name string) (*key, error) {
	pa, err := pub.Contents()
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: %s: public area: %w", name, err)
	}
	if err := checkSigningKey(pa); err != nil {
		return nil, fmt.Errorf("keystore: tpm: %s: %w", name, err)
	}
	pk, err := publicKey(pa)
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: %s: %w", name, err)
	}
	return &key{s: s, pub: pub, priv: priv, public: pk}, nil
}

// checkSigningKey refuses a public area that is not a non-exportable,
// TPM-generated, unrestricted signing key: a blob or persistent object that
// someone replaced must not quietly become the device identity.
func checkSigningKey(pa *tpm2.TPMTPublic) error {
	a := pa.ObjectAttributes
	var missing []string
	for _, c := range []struct {
		ok   bool
		name string
	}{
		{a.FixedTPM, "fixedTPM"},
		{a.FixedParent, "fixedParent"},
		{a.SensitiveDataOrigin, "sensitiveDataOrigin"},
		{a.SignEncrypt, "sign"},
		{!a.Decrypt, "not decrypt"},
		{!a.Restricted, "not restricted"},
	} {
		if !c.ok {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("not a device signing key: attributes lack %s", strings.Join(missing, ", "))
	}
	return nil
}

// loadLocked makes k usable for signing.
func (s *Store) loadLocked(k *key) error {
	if k.handle != 0 {
		return nil
	}
	if k.persistent != 0 {
		rp, err := tpm2.ReadPublic{ObjectHandle: k.persistent}.Execute(s.tpm)
		if err != nil {
			return classify(opOther, fmt.Sprintf("read key at persistent handle 0x%08x", uint32(k.persistent)), err, s.env)
		}
		if !bytes.Equal(rp.OutPublic.Bytes(), k.pub.Bytes()) {
			return fmt.Errorf("keystore: tpm: persistent handle 0x%08x now holds a different key than the one this agent uses", uint32(k.persistent))
		}
		k.handle, k.name = k.persistent, rp.Name
		return nil
	}
	srk, err := s.srkLocked()
	if err != nil {
		return err
	}
	defer s.flushLocked(srk.Handle)
	rsp, err := tpm2.Load{ParentHandle: srk, InPrivate: k.priv, InPublic: k.pub}.Execute(s.tpm)
	if err != nil {
		return classify(opLoad, "load device key from "+s.opts.Dir, err, s.env)
	}
	k.handle, k.name = rsp.ObjectHandle, rsp.Name
	return nil
}

// unloadLocked flushes k's transient handle, if it has one.
func (s *Store) unloadLocked(k *key) {
	if k.handle != 0 && k.persistent == 0 {
		s.flushLocked(k.handle)
	}
	k.handle = 0
}

func (s *Store) retireLocked(k *key) {
	s.unloadLocked(k)
	k.retired = true
}

// persistLocked makes k persistent at h. k must not be persistent yet.
func (s *Store) persistLocked(k *key, h tpm2.TPMHandle) error {
	if err := s.loadLocked(k); err != nil {
		return err
	}
	if _, err := (tpm2.EvictControl{
		Auth:             s.ownerAuth(),
		ObjectHandle:     tpm2.NamedHandle{Handle: k.handle, Name: k.name},
		PersistentHandle: h,
	}).Execute(s.tpm); err != nil {
		return classify(opOwner, fmt.Sprintf("make device key persistent at 0x%08x", uint32(h)), err, s.env)
	}
	s.unloadLocked(k)
	k.persistent, k.handle, k.priv = h, h, tpm2.TPM2BPrivate{}
	return nil
}

// readPersistentLocked returns the key at the configured persistent handle,
// or keystore.ErrNoKey when the handle is empty.
func (s *Store) readPersistentLocked() (*key, error) {
	h := tpm2.TPMHandle(s.opts.PersistentHandle)
	rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(s.tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, keystore.ErrNoKey
	}
	if err != nil {
		return nil, classify(opOther, fmt.Sprintf("read persistent handle 0x%08x", uint32(h)), err, s.env)
	}
	k, err := s.keyFromBlobs(rp.OutPublic, tpm2.TPM2BPrivate{}, fmt.Sprintf("persistent handle 0x%08x", uint32(h)))
	if err != nil {
		return nil, err
	}
	k.persistent, k.handle, k.name = h, h, rp.Name
	return k, nil
}

// sign runs TPM2_Sign with k, loading k first if needed.
func (s *Store) sign(k *key, digest []byte, scheme tpm2.TPMTSigScheme) (*tpm2.SignResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tpm == nil {
		return nil, ErrClosed
	}
	if k.retired {
		return nil, fmt.Errorf("keystore: tpm: sign: %w: a key rotation replaced it; use the keystore's current key", ErrRetired)
	}
	if err := s.loadLocked(k); err != nil {
		return nil, err
	}
	cmd := tpm2.Sign{
		KeyHandle:  tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(s.opts.AuthValue)},
		Digest:     tpm2.TPM2BDigest{Buffer: digest},
		InScheme:   scheme,
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}
	rsp, err := cmd.Execute(s.tpm)
	if err != nil && k.persistent == 0 && (errors.Is(err, tpm2.TPMRCHandle) || errors.Is(err, tpm2.TPMRCReferenceH0)) {
		// The TPM lost the transient object (a TPM reset, or someone
		// flushed it): load it again from the blobs and retry once.
		k.handle = 0
		if err := s.loadLocked(k); err != nil {
			return nil, err
		}
		cmd.KeyHandle = tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(s.opts.AuthValue)}
		rsp, err = cmd.Execute(s.tpm)
	}
	if err != nil {
		return nil, classify(opUseKey, "sign with device key", err, s.env)
	}
	return rsp, nil
}

// readBlobs reads a key's blob files; keystore.ErrNoKey when the public
// blob does not exist (it is written last and removed first).
func (s *Store) readBlobs(pubName, privName string) (*key, error) {
	pubB, err := readFile(s.path(pubName), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, keystore.ErrNoKey
	}
	if err != nil {
		return nil, err
	}
	privB, err := readFile(s.path(privName), true)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("keystore: tpm: %s exists but %s does not: the key blobs are incomplete; restore them or re-enroll", s.path(pubName), s.path(privName))
	}
	if err != nil {
		return nil, err
	}
	pub, priv, err := ParseBlobs(pubB, privB)
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: %s: %w", s.opts.Dir, err)
	}
	return s.keyFromBlobs(pub, priv, s.path(pubName))
}

// writeBlobs stores k's blobs, the private one first: the public blob's
// presence is what says the key exists.
func (s *Store) writeBlobs(k *key, pubName, privName string) error {
	if err := atomicfile.Write(s.path(privName), marshal2B(k.priv.Buffer), 0o600); err != nil {
		return fmt.Errorf("keystore: tpm: store key blob: %w", err)
	}
	if err := atomicfile.Write(s.path(pubName), marshal2B(k.pub.Bytes()), 0o600); err != nil {
		return fmt.Errorf("keystore: tpm: store key blob: %w", err)
	}
	return nil
}

// readFile reads a blob file, refusing a secret one that group or others
// can read.
func readFile(path string, secret bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keystore: tpm: %w", err)
	}
	if secret && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("keystore: tpm: %s has mode %04o, readable by others; run: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	if fi.Size() > maxBlobBytes {
		return nil, fmt.Errorf("keystore: tpm: %s is %d bytes, too large for a TPM key blob; it is not one: restore it or re-enroll", path, fi.Size())
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil && fi.Size() > 0 {
		return nil, fmt.Errorf("keystore: tpm: read %s: %w", path, err)
	}
	return b, nil
}

// marshal2B prefixes b with its 16-bit size: the TPM2B wire format, which is
// also what tpm2-tools writes for -u/-r files.
func marshal2B(b []byte) []byte {
	out := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(out, uint16(len(b)))
	copy(out[2:], b)
	return out
}

func unmarshal2B(b []byte, what string) ([]byte, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("%s blob is %d bytes, too short: it is damaged; restore it or re-enroll", what, len(b))
	}
	n := int(binary.BigEndian.Uint16(b))
	if n != len(b)-2 {
		return nil, fmt.Errorf("%s blob announces %d bytes but holds %d: it is damaged; restore it or re-enroll", what, n, len(b)-2)
	}
	if n == 0 {
		return nil, fmt.Errorf("%s blob is empty: it is damaged; restore it or re-enroll", what)
	}
	return b[2:], nil
}

// ParseBlobs decodes the contents of tpm-key.pub and tpm-key.priv (TPM2B
// format) and checks that the public part describes a device signing key.
func ParseBlobs(pubB, privB []byte) (pub tpm2.TPM2BPublic, priv tpm2.TPM2BPrivate, err error) {
	defer func() {
		// go-tpm's reflection-based decoder is not written for hostile
		// input; a damaged file must give an error, never a crash.
		if r := recover(); r != nil {
			err = fmt.Errorf("public blob is damaged (%v); restore it or re-enroll", r)
		}
	}()
	pb, err := unmarshal2B(pubB, "public")
	if err != nil {
		return pub, priv, err
	}
	kb, err := unmarshal2B(privB, "private")
	if err != nil {
		return pub, priv, err
	}
	pub = tpm2.BytesAs2B[tpm2.TPMTPublic](pb)
	pa, err := pub.Contents()
	if err != nil {
		return pub, priv, fmt.Errorf("public blob is damaged (%v); restore it or re-enroll", err)
	}
	if !bytes.Equal(tpm2.Marshal(pa), pb) {
		return pub, priv, errors.New("public blob has trailing or non-canonical data: it is damaged; restore it or re-enroll")
	}
	if err := checkSigningKey(pa); err != nil {
		return pub, priv, err
	}
	if _, err := publicKey(pa); err != nil {
		return pub, priv, fmt.Errorf("public blob: %w", err)
	}
	return pub, tpm2.TPM2BPrivate{Buffer: kb}, nil
}
