package tpm

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeagent/edgeagent/keystore"
	"github.com/edgeagent/edgeagent/testkit/swtpm"
)

func mustSign(t *testing.T, k crypto.Signer) {
	t.Helper()
	d := sha256.Sum256([]byte("rotation"))
	if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign: %v", err)
	}
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Stat(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// modes runs f in blob mode and in persistent-handle mode.
var modes = []struct {
	name string
	edit func(*Options)
}{
	{"blobs", func(*Options) {}},
	{"persistent", func(o *Options) { o.PersistentHandle = 0x81000123 }},
}

func TestRotation(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			sw := swtpm.Start(t)
			dir := t.TempDir()
			s := openStore(t, sw, dir, m.edit)
			old, err := s.Create(keystore.ECDSAP256)
			if err != nil {
				t.Fatal(err)
			}
			oldPub := pubDER(t, old)

			// Abort: the current key stays, the pending one is gone.
			r, err := s.BeginRotate(keystore.ECDSAP256)
			if err != nil {
				t.Fatal(err)
			}
			mustSign(t, r.Signer())
			if bytes.Equal(pubDER(t, r.Signer()), oldPub) {
				t.Fatal("BeginRotate returned the current key")
			}
			if err := r.Abort(); err != nil {
				t.Fatal(err)
			}
			if _, ok, err := s.Pending(); err != nil || ok {
				t.Fatalf("Pending after Abort: ok=%v err=%v", ok, err)
			}
			if exists(t, filepath.Join(dir, NextPubFile)) || exists(t, filepath.Join(dir, NextPrivFile)) {
				t.Fatal("Abort left pending blobs")
			}
			if _, err := r.Signer().Sign(rand.Reader, make([]byte, 32), crypto.SHA256); !errors.Is(err, ErrRetired) {
				t.Fatalf("Sign with an aborted key: got %v, want ErrRetired", err)
			}
			mustSign(t, old)

			// A rotation survives a restart and is found by Pending.
			r, err = s.BeginRotate(keystore.RSA2048)
			if err != nil {
				t.Fatal(err)
			}
			newPub := pubDER(t, r.Signer())
			s.Close()
			s = openStore(t, sw, dir, m.edit)
			cur, err := s.Current()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pubDER(t, cur), oldPub) {
				t.Fatal("an uncommitted rotation changed the current key")
			}
			r, ok, err := s.Pending()
			if err != nil || !ok {
				t.Fatalf("Pending after reopen: ok=%v err=%v", ok, err)
			}
			if !bytes.Equal(pubDER(t, r.Signer()), newPub) {
				t.Fatal("Pending returned another key than BeginRotate made")
			}
			mustSign(t, r.Signer())

			// Commit: the new key is current, also after a reopen, and the
			// old one is retired.
			if err := r.Commit(); err != nil {
				t.Fatal(err)
			}
			if err := r.Commit(); err == nil {
				t.Fatal("second Commit of the same rotation succeeded")
			}
			if _, err := cur.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); !errors.Is(err, ErrRetired) {
				t.Fatalf("Sign with the replaced key: got %v, want ErrRetired", err)
			}
			if _, ok, _ := s.Pending(); ok {
				t.Fatal("Pending after Commit")
			}
			s.Close()
			s = openStore(t, sw, dir, m.edit)
			cur, err = s.Current()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pubDER(t, cur), newPub) {
				t.Fatal("after Commit and reopen the current key is not the rotated one")
			}
			mustSign(t, cur)
			if m.name == "persistent" {
				// The old key is evicted: only one persistent object is
				// ours, at the configured handle.
				s.mu.Lock()
				handles := persistentHandles(t, s)
				s.mu.Unlock()
				if len(handles) != 1 || handles[0] != 0x81000123 {
					t.Fatalf("persistent handles after Commit: %x, want only 0x81000123", handles)
				}
			}
		})
	}
}

func persistentHandles(t *testing.T, s *Store) []tpm2.TPMHandle {
	t.Helper()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x81000000, PropertyCount: 64}.Execute(s.tpm)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return hs.Handle
}

// TestPersistentHandle checks that the key lives in the TPM, not on disk,
// and survives a swtpm restart (a reboot) without any file.
func TestPersistentHandle(t *testing.T) {
	sw := swtpm.Start(t)
	dir := t.TempDir()
	ph := func(o *Options) { o.PersistentHandle = 0x81000100 }
	s := openStore(t, sw, dir, ph)
	if _, err := s.Current(); !errors.Is(err, keystore.ErrNoKey) {
		t.Fatalf("Current with an empty persistent handle: got %v, want ErrNoKey", err)
	}
	k, err := s.Create(keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	want := pubDER(t, k)
	if exists(t, filepath.Join(dir, PubFile)) || exists(t, filepath.Join(dir, PrivFile)) {
		t.Fatal("persistent mode wrote key blobs")
	}
	if _, err := s.Create(keystore.ECDSAP256); err == nil {
		t.Fatal("Create over an occupied persistent handle succeeded")
	}
	if got := s.Info().Details["persistent_handle"]; got != "0x81000100" {
		t.Errorf("Info persistent_handle = %q", got)
	}
	s.Close()

	sw.Restart()
	s = openStore(t, sw, dir, ph)
	k, err = s.Current()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pubDER(t, k), want) {
		t.Fatal("persistent key changed across a swtpm restart")
	}
	mustSign(t, k)

	// The same TPM without the persistent-handle setting sees no blobs.
	s.Close()
	s = openStore(t, sw, dir)
	if _, err := s.Current(); !errors.Is(err, keystore.ErrNoKey) {
		t.Fatalf("blob mode on a persistent-mode dir: got %v, want ErrNoKey", err)
	}
}

// TestInterruptedCommit recreates the states a crash inside Commit leaves
// and checks that Open finishes the commit.
func TestInterruptedCommit(t *testing.T) {
	t.Run("blobs", func(t *testing.T) {
		sw := swtpm.Start(t)
		dir := t.TempDir()
		s := openStore(t, sw, dir)
		if _, err := s.Create(keystore.ECDSAP256); err != nil {
			t.Fatal(err)
		}
		r, err := s.BeginRotate(keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		want := pubDER(t, r.Signer())
		s.Close()
		// Crash after the first of Commit's two renames.
		if err := os.Rename(filepath.Join(dir, NextPrivFile), filepath.Join(dir, PrivFile)); err != nil {
			t.Fatal(err)
		}
		s = openStore(t, sw, dir)
		k, err := s.Current()
		if err != nil {
			t.Fatalf("Current after an interrupted commit: %v", err)
		}
		if !bytes.Equal(pubDER(t, k), want) {
			t.Fatal("the interrupted commit was not finished")
		}
		mustSign(t, k)
		if _, ok, _ := s.Pending(); ok {
			t.Fatal("rotation still pending after recovery")
		}
	})
	t.Run("persistent", func(t *testing.T) {
		sw := swtpm.Start(t)
		dir := t.TempDir()
		ph := func(o *Options) { o.PersistentHandle = 0x81000200 }
		s := openStore(t, sw, dir, ph)
		if _, err := s.Create(keystore.ECDSAP256); err != nil {
			t.Fatal(err)
		}
		r, err := s.BeginRotate(keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		want := pubDER(t, r.Signer())
		// Crash after the marker was written and the old key evicted,
		// before the new one was persisted.
		if err := os.WriteFile(filepath.Join(dir, CommitFile), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		rp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(0x81000200)}.Execute(s.tpm)
		if err == nil {
			_, err = tpm2.EvictControl{
				Auth:             s.ownerAuth(),
				ObjectHandle:     tpm2.NamedHandle{Handle: 0x81000200, Name: rp.Name},
				PersistentHandle: 0x81000200,
			}.Execute(s.tpm)
		}
		s.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		s = openStore(t, sw, dir, ph)
		k, err := s.Current()
		if err != nil {
			t.Fatalf("Current after an interrupted commit: %v", err)
		}
		if !bytes.Equal(pubDER(t, k), want) {
			t.Fatal("the interrupted commit was not finished")
		}
		mustSign(t, k)
		for _, f := range []string{CommitFile, NextPubFile, NextPrivFile} {
			if exists(t, filepath.Join(dir, f)) {
				t.Errorf("%s left after recovery", f)
			}
		}
	})
}
