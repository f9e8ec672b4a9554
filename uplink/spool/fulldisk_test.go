package spool

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// smallTmpfs mounts a tmpfs of size bytes for the test: a real disk that
// fills up. It skips, loudly, where mounting is not permitted (not root,
// or no CAP_SYS_ADMIN in a container).
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("SKIPPED, full-disk test not run: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): %v: %s", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// TestFullDiskRefusesWholeBatchesAndResumes fills a real tmpfs: the batch
// that does not fit is refused as a whole (none of it is ever delivered,
// now or after a reopen), delivery of what was stored goes on, and once
// acked segments are freed the same spool stores again, with no reopen.
func TestFullDiskRefusesWholeBatchesAndResumes(t *testing.T) {
	dir := smallTmpfs(t, "512k")
	s := open(t, dir, Options{MaxBytes: 64 << 20, SegmentBytes: 64 << 10, Sync: SyncAlways})
	batch := func(n int) [][]byte {
		b := make([][]byte, 20)
		for i := range b {
			b[i] = fmt.Appendf(nil, "%06d-%s", n*20+i, strings.Repeat("x", 1000))
		}
		return b
	}
	var accepted, refused int
	var werr error
	for n := 0; n < 1000; n++ {
		if _, err := s.AppendBatch(batch(n)); err != nil {
			werr, refused = err, n
			break
		}
		accepted++
	}
	if werr == nil {
		t.Fatal("a 512 KiB tmpfs took 20 MB")
	}
	if !errors.Is(werr, ErrWrite) || !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("error on a full disk: %v, want ErrWrite wrapping ENOSPC", werr)
	}
	// Still full: refused again, not stuck in an old error.
	if _, err := s.AppendBatch(batch(refused + 1)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("second try on a full disk: %v", err)
	}
	st := s.Stats()
	if st.Refused != 40 || st.Depth != accepted*20 || st.WriteError == "" || st.WriteFailingSince.IsZero() {
		t.Fatalf("stats on a full disk: %+v (accepted %d batches)", st, accepted)
	}
	// Delivery does not depend on writes: everything stored comes out,
	// and nothing of a refused batch.
	recs := next(t, s, accepted*20)
	for i, r := range recs {
		if want := fmt.Sprintf("%06d-", i); !strings.HasPrefix(string(r.Payload), want) {
			t.Fatalf("record %d is %.7q, want %s", i, r.Payload, want)
		}
	}
	// Acks free whole segments (the ack mark is saved in place, which
	// needs no space), and the spool stores again by itself.
	seqs := make([]uint64, len(recs))
	for i, r := range recs {
		seqs[i] = r.Seq
	}
	if err := s.Ack(seqs...); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendBatch(batch(accepted)); err != nil {
		t.Fatalf("append after acked segments were freed: %v", err)
	}
	if st := s.Stats(); st.WriteError != "" || !st.WriteFailingSince.IsZero() {
		t.Fatalf("write error still reported after a good write: %+v", st)
	}
	if got := next(t, s, 20); !strings.HasPrefix(string(got[0].Payload), fmt.Sprintf("%06d-", accepted*20)) {
		t.Fatalf("after recovery got %.7q", got[0].Payload)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{MaxBytes: 64 << 20, SegmentBytes: 64 << 10})
	if st := s.Stats(); st.Depth != 20 || st.Lost != 0 {
		t.Fatalf("reopened: %+v, want only the 20 stored after recovery", st)
	}
}
