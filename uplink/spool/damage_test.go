package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/testkit/syncbuf"
)

// recInfo is where one record sits in a segment file.
type recInfo struct {
	seq       uint64
	off, size int64
}

// layout lists the records of every segment in dir, in order.
func layout(t *testing.T, dir string) map[string][]recInfo {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	out := map[string][]recInfo{}
	for _, p := range segs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(b); {
			l := int(binary.LittleEndian.Uint32(b[off+4:]))
			out[filepath.Base(p)] = append(out[filepath.Base(p)], recInfo{seq: binary.LittleEndian.Uint64(b[off+8:]), off: int64(off), size: int64(headerLen + l)})
			off += headerLen + l
		}
	}
	return out
}

func segNames(t *testing.T, dir string) []string {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for i := range segs {
		segs[i] = filepath.Base(segs[i])
	}
	return segs
}

func rewrite(t *testing.T, path string, f func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, f(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDamageKeepsIntactRecords damages a closed spool of 1,000 records in
// four segments, reopens it, and checks that exactly the records the
// damage hit are counted lost and named in one log line, and every other
// record is delivered.
func TestDamageKeepsIntactRecords(t *testing.T) {
	const n = 1000
	opts := Options{MaxBytes: 4 << 20, SegmentBytes: 64 << 10, Sync: SyncNever}
	type result struct {
		lost    []uint64 // seqs lost
		logLine string   // a substring of the one line that names them
		redeliv bool     // the ack mark is distrusted: everything comes again
	}
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result
	}{
		{"flipped byte in a payload", func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result {
			r := l[segs[1]][100]
			rewrite(t, filepath.Join(dir, segs[1]), func(b []byte) []byte { b[r.off+headerLen+3] ^= 0x01; return b })
			return result{lost: []uint64{r.seq}, logLine: "segment=" + segs[1]}
		}},
		{"flipped byte in a header", func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result {
			r := l[segs[1]][7]
			rewrite(t, filepath.Join(dir, segs[1]), func(b []byte) []byte { b[r.off+5] ^= 0x80; return b })
			return result{lost: []uint64{r.seq}, logLine: "segment=" + segs[1]}
		}},
		{"zeroed run across three records", func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result {
			rs := l[segs[2]]
			from, to := rs[20].off+10, rs[22].off+headerLen+1
			rewrite(t, filepath.Join(dir, segs[2]), func(b []byte) []byte {
				for i := from; i < to; i++ {
					b[i] = 0
				}
				return b
			})
			return result{lost: []uint64{rs[20].seq, rs[21].seq, rs[22].seq}, logLine: "segment=" + segs[2]}
		}},
		{"bytes inserted between records", func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result {
			r := l[segs[1]][50]
			rewrite(t, filepath.Join(dir, segs[1]), func(b []byte) []byte {
				junk := []byte("\xed\x5b\x0c\x02 not a record at all")
				return append(append(append([]byte{}, b[:r.off]...), junk...), b[r.off:]...)
			})
			return result{logLine: "segment=" + segs[1]} // nothing lost: the reader resynchronises
		}},
		{"truncated middle segment", func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result {
			rs := l[segs[1]]
			cut := rs[len(rs)/2].off + 7
			if err := os.Truncate(filepath.Join(dir, segs[1]), cut); err != nil {
				t.Fatal(err)
			}
			var lost []uint64
			for _, r := range rs[len(rs)/2:] {
				lost = append(lost, r.seq)
			}
			return result{lost: lost, logLine: "segment=" + segs[1]}
		}},
		{"deleted middle segment", func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result {
			if err := os.Remove(filepath.Join(dir, segs[2])); err != nil {
				t.Fatal(err)
			}
			var lost []uint64
			for _, r := range l[segs[2]] {
				lost = append(lost, r.seq)
			}
			return result{lost: lost, logLine: "segment missing"}
		}},
		{"deleted oldest segment", func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result {
			if err := os.Remove(filepath.Join(dir, segs[0])); err != nil {
				t.Fatal(err)
			}
			var lost []uint64
			for _, r := range l[segs[0]] {
				lost = append(lost, r.seq)
			}
			return result{lost: lost, logLine: "records missing before the oldest segment"}
		}},
		{"ack mark beyond the newest record", func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result {
			ms, _, _, _, err := openMark(dir, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := ms.save(5000); err != nil {
				t.Fatal(err)
			}
			ms.close()
			return result{logLine: "ack mark beyond the newest record", redeliv: true}
		}},
		{"ack mark file garbage", func(t *testing.T, dir string, l map[string][]recInfo, segs []string) result {
			if err := os.WriteFile(filepath.Join(dir, markFile), []byte(strings.Repeat("x", 2*markSlot)), 0o600); err != nil {
				t.Fatal(err)
			}
			return result{logLine: "unreadable ack mark", redeliv: true}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				if _, err := s.Append([]byte(fmt.Sprintf("%04d-%s", i+1, strings.Repeat("p", 200)))); err != nil {
					t.Fatal(err)
				}
			}
			// The first 10 are delivered and acked: a distrusted mark
			// sends them again, a trusted one does not.
			if err := s.Ack(next(t, s, 10)[0].Seq, 2, 3, 4, 5, 6, 7, 8, 9, 10); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			segs := segNames(t, dir)
			if len(segs) < 4 {
				t.Fatalf("want at least 4 segments, got %d", len(segs))
			}
			want := c.damage(t, dir, layout(t, dir), segs)
			if !want.redeliv {
				// Records already acked are not lost, whatever happened
				// to their segment.
				var unacked []uint64
				for _, seq := range want.lost {
					if seq > 10 {
						unacked = append(unacked, seq)
					}
				}
				want.lost = unacked
			}

			var logs syncbuf.Buffer
			o := opts
			o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			s = open(t, dir, o)
			st := s.Stats()
			if st.Lost != uint64(len(want.lost)) {
				t.Errorf("Stats.Lost = %d, want %d\n%s", st.Lost, len(want.lost), logs.String())
			}
			lines := 0
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, want.logLine) {
					lines++
					if len(want.lost) > 0 && !strings.Contains(line, fmt.Sprintf("lost=%d ", len(want.lost))) {
						t.Errorf("log line does not count %d lost: %s", len(want.lost), line)
					}
				}
			}
			if lines != 1 {
				t.Errorf("%d log lines with %q, want 1:\n%s", lines, want.logLine, logs.String())
			}
			from := 11
			if want.redeliv {
				from = 1
			}
			lost := map[uint64]bool{}
			for _, seq := range want.lost {
				lost[seq] = true
			}
			var wantSeqs []uint64
			for seq := uint64(from); seq <= n; seq++ {
				if !lost[seq] {
					wantSeqs = append(wantSeqs, seq)
				}
			}
			if st.Depth != len(wantSeqs) {
				t.Fatalf("depth %d, want %d", st.Depth, len(wantSeqs))
			}
			recs := next(t, s, len(wantSeqs))
			for i, r := range recs {
				if r.Seq != wantSeqs[i] || !strings.HasPrefix(string(r.Payload), fmt.Sprintf("%04d-", r.Seq)) {
					t.Fatalf("record %d: seq %d %.8q, want seq %d", i, r.Seq, r.Payload, wantSeqs[i])
				}
			}
			// Acking everything frees the damaged segments, and the spool
			// goes on numbering after the highest seq it ever held.
			seqs := make([]uint64, len(recs))
			for i, r := range recs {
				seqs[i] = r.Seq
			}
			if err := s.Ack(seqs...); err != nil {
				t.Fatal(err)
			}
			if st := s.Stats(); st.Depth != 0 {
				t.Fatalf("depth %d after acking everything", st.Depth)
			}
			seq, err := s.Append([]byte("after"))
			if err != nil || seq != n+1 {
				t.Fatalf("append after recovery: seq %d, %v", seq, err)
			}
		})
	}
}

// TestUpgradeFromV1Format opens a spool written by the previous release
// (v1 records, text ack mark): the queue it holds is delivered, and new
// records go to a new v2 segment.
func TestUpgradeFromV1Format(t *testing.T) {
	dir := t.TempDir()
	var seg []byte
	for seq := uint64(1); seq <= 300; seq++ {
		p := []byte(fmt.Sprintf("old-%d", seq))
		var h [v1HeaderLen]byte
		binary.LittleEndian.PutUint32(h[0:4], uint32(len(p)))
		binary.LittleEndian.PutUint64(h[8:16], seq)
		c := crc32.Update(0, crcTable, h[8:16])
		binary.LittleEndian.PutUint32(h[4:8], crc32.Update(c, crcTable, p))
		seg = append(append(seg, h[:]...), p...)
	}
	if err := os.WriteFile(filepath.Join(dir, "0000000000000001.seg"), seg, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, legacyMarkFile), []byte("101\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir, Options{})
	if st := s.Stats(); st.Depth != 200 || st.Lost != 0 {
		t.Fatalf("after upgrade: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(dir, legacyMarkFile)); !os.IsNotExist(err) {
		t.Fatalf("legacy mark still there: %v", err)
	}
	seq, err := s.Append([]byte("new"))
	if err != nil || seq != 301 {
		t.Fatalf("append: %d %v", seq, err)
	}
	recs := next(t, s, 201)
	for i, r := range recs[:200] {
		if r.Seq != uint64(101+i) || string(r.Payload) != fmt.Sprintf("old-%d", r.Seq) {
			t.Fatalf("record %d: %d %q", i, r.Seq, r.Payload)
		}
	}
	if string(recs[200].Payload) != "new" {
		t.Fatalf("last %q", recs[200].Payload)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "0000000000000001.seg")); len(b) != len(seg) {
		t.Fatal("the v1 segment was appended to")
	}
	// Reopened before anything is acked, the mixed spool reads the same.
	_ = s.Close()
	s = open(t, dir, Options{})
	if st := s.Stats(); st.Depth != 201 || st.Lost != 0 {
		t.Fatalf("mixed reopen: %+v", st)
	}
}

// TestAbortedBatchIsNeverDelivered: an aborted batch is cut off the
// segment: not delivered now, and not after a reopen.
func TestAbortedBatchIsNeverDelivered(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	appendN(t, s, 0, 3)
	p, err := s.Prepare([][]byte{[]byte("refused-1"), []byte("refused-2")})
	if err != nil {
		t.Fatal(err)
	}
	// A pending batch is not deliverable.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	recs, _ := s.Next(ctx, 10)
	cancel()
	if len(recs) != 3 {
		t.Fatalf("delivered %d before commit, want the 3 committed", len(recs))
	}
	p.Abort()
	appendN(t, s, 10, 1)
	got := next(t, s, 1)
	if got[0].Seq != 4 || string(got[0].Payload) != "msg-10" {
		t.Fatalf("after abort: %d %q", got[0].Seq, got[0].Payload)
	}
	if st := s.Stats(); st.Refused != 2 || st.Depth != 4 {
		t.Fatalf("stats %+v", st)
	}
	_ = s.Close()
	s = open(t, dir, Options{})
	all := next(t, s, 4)
	for _, r := range all {
		if strings.HasPrefix(string(r.Payload), "refused") {
			t.Fatalf("aborted record %d came back after reopen", r.Seq)
		}
	}
}

// TestAckedSpaceIsReclaimedBeforeSegmentFills: with a consumer that keeps
// up, the acked part of the active segment is given back once it reaches
// reclaimBytes, long before the segment is full.
func TestAckedSpaceIsReclaimedBeforeSegmentFills(t *testing.T) {
	dir := t.TempDir()
	// CheckpointEvery bounds how often the active segment is replaced;
	// here it may be replaced at every ack.
	s := open(t, dir, Options{MaxBytes: 64 << 20, SegmentBytes: 8 << 20, Sync: SyncNever, CheckpointEvery: time.Nanosecond})
	payload := make([]byte, 1000)
	for i := 0; i < 2000; i++ { // 2 MB through an 8 MiB segment
		if _, err := s.Append(payload); err != nil {
			t.Fatal(err)
		}
		r := next(t, s, 1)
		if err := s.Ack(r[0].Seq); err != nil {
			t.Fatal(err)
		}
		if st := s.Stats(); st.Bytes > reclaimBytes+int64(len(payload)+headerLen) {
			t.Fatalf("after %d acked messages the spool holds %d bytes, bound %d", i+1, st.Bytes, reclaimBytes+len(payload)+headerLen)
		}
	}
	var onDisk int64
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for _, p := range segs {
		fi, _ := os.Stat(p)
		onDisk += fi.Size()
	}
	if onDisk > reclaimBytes+int64(len(payload)+headerLen) {
		t.Fatalf("%d bytes of acked segments on disk", onDisk)
	}
}

// TestGroupIsAllOrNothing: when one spool of a group cannot take a batch
// the others give it back, and concurrent callers all get their batch in
// every spool.
func TestGroupIsAllOrNothing(t *testing.T) {
	a, b := open(t, t.TempDir(), Options{}), open(t, t.TempDir(), Options{})
	g := NewGroup([]string{"a", "b"}, []*Spool{a, b})
	const callers, each = 8, 50
	var wg sync.WaitGroup
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := g.Append([][]byte{[]byte(fmt.Sprintf("%d-%d", c, i))}); err != nil {
					t.Error(err)
				}
			}
		}(c)
	}
	wg.Wait()
	for _, s := range []*Spool{a, b} {
		if st := s.Stats(); st.Depth != callers*each {
			t.Fatalf("depth %d, want %d", st.Depth, callers*each)
		}
	}
	next(t, a, callers*each)
	_ = b.Close() // b now refuses: a must give the batch back
	err := g.Append([][]byte{[]byte("refused")})
	if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "spool b") {
		t.Fatalf("append with b closed: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if recs, _ := a.Next(ctx, 1); len(recs) != 0 {
		t.Fatalf("a delivered %q from a refused batch", recs[0].Payload)
	}
	if st := a.Stats(); st.Refused != 1 || st.Depth != callers*each {
		t.Fatalf("a after the refusal: %+v", st)
	}
	// Refused counts the same on every spool, whichever failed first.
	g = NewGroup([]string{"b", "a"}, []*Spool{b, a})
	if err := g.Append([][]byte{[]byte("refused")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("append with b first and closed: %v", err)
	}
	if st := a.Stats(); st.Refused != 2 {
		t.Fatalf("a counted %d refused, want 2", st.Refused)
	}
}

// TestPreallocatedTailAfterCrash: under SyncAlways segments are filled
// with zeros ahead of the records. After a crash (no Close) the zero tail
// is the clean end of the segment; a record the crash cut short inside it
// is a torn write, not a loss; a damaged last record still is one.
func TestPreallocatedTailAfterCrash(t *testing.T) {
	cases := []struct {
		name     string
		damage   func(b []byte, end int) []byte
		wantLost uint64
		wantNext uint64
		corrupt  bool
	}{
		{"clean", func(b []byte, end int) []byte { return b }, 0, 51, false},
		{"torn write into the tail", func(b []byte, end int) []byte {
			h := make([]byte, headerLen)
			p := []byte(`{"a":"a record the crash cut short"}`)
			putHeader(h, 51, p)
			copy(b[end:], h)
			copy(b[end+headerLen:], p[:10]) // the rest stays zero
			return b
		}, 0, 51, true},
		{"flipped byte in the last record", func(b []byte, end int) []byte { b[end-3] ^= 0x20; return b }, 1, 51, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			live := t.TempDir()
			s := open(t, live, Options{Sync: SyncAlways})
			appendN(t, s, 0, 50)
			seg := s.segs[len(s.segs)-1]
			b, err := os.ReadFile(seg.path)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(b)) <= seg.size {
				t.Fatalf("segment of %d bytes for %d bytes of records: not preallocated", len(b), seg.size)
			}
			// The state a kill -9 leaves: what was written, no Close.
			crashed := t.TempDir()
			if err := os.WriteFile(filepath.Join(crashed, filepath.Base(seg.path)), c.damage(b, int(seg.size)), 0o600); err != nil {
				t.Fatal(err)
			}
			mark, err := os.ReadFile(filepath.Join(live, markFile))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(crashed, markFile), mark, 0o600); err != nil {
				t.Fatal(err)
			}
			r := open(t, crashed, Options{Sync: SyncAlways})
			st := r.Stats()
			if st.Lost != c.wantLost || st.Depth != 50-int(c.wantLost) || (st.CorruptBytes > 0) != c.corrupt {
				t.Fatalf("after the crash: %+v, want lost %d, damage reported %v", st, c.wantLost, c.corrupt)
			}
			next(t, r, st.Depth)
			appendN(t, r, 100, 3)
			if got := next(t, r, 3); got[0].Seq != c.wantNext || string(got[2].Payload) != "msg-102" {
				t.Fatalf("appends after the crash: seq %d %q", got[0].Seq, got[2].Payload)
			}
		})
	}
}
