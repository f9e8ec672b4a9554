package spool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

func open(t testing.TB, dir string, opts Options) *Spool {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func next(t testing.TB, s *Spool, n int) []Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []Record
	for len(out) < n {
		recs, err := s.Next(ctx, n-len(out))
		if err != nil {
			t.Fatalf("Next after %d of %d: %v", len(out), n, err)
		}
		out = append(out, recs...)
	}
	return out
}

func appendN(t testing.TB, s *Spool, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := s.Append([]byte("msg-" + strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAppendNextAckInOrder(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	appendN(t, s, 0, 100)
	recs := next(t, s, 100)
	for i, r := range recs {
		if r.Seq != uint64(i+1) || string(r.Payload) != "msg-"+strconv.Itoa(i) {
			t.Fatalf("record %d = %d %q", i, r.Seq, r.Payload)
		}
	}
	if st := s.Stats(); st.Depth != 100 || st.Appended != 100 {
		t.Fatalf("stats before ack: %+v", st)
	}
	for _, r := range recs {
		if err := s.Ack(r.Seq); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Depth != 0 || st.Acked != 100 {
		t.Fatalf("stats after ack: %+v", st)
	}
}

func TestNextBlocksUntilAppend(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	got := make(chan []Record, 1)
	go func() {
		recs, err := s.Next(context.Background(), 10)
		if err != nil {
			t.Error(err)
		}
		got <- recs
	}()
	appendN(t, s, 0, 1)
	select {
	case recs := <-got:
		if len(recs) != 1 || recs[0].Seq != 1 {
			t.Fatalf("got %+v", recs)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Next did not wake on Append")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Next(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next on a cancelled context: %v", err)
	}
}

func TestReopenRedeliversUnacked(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MaxBytes: 1 << 20, SegmentBytes: 64 << 10, Sync: SyncNever}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 0, 5000)
	recs := next(t, s, 3000)
	for _, r := range recs[:2500] {
		if err := s.Ack(r.Seq); err != nil {
			t.Fatal(err)
		}
	}
	// Ack out of order above the mark, too.
	if err := s.Ack(2700, 2702); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, opts)
	if st := s.Stats(); st.Depth != 2500 {
		t.Fatalf("depth after reopen = %d, want 2500 (acks above the mark are redelivered)", st.Depth)
	}
	recs = next(t, s, 2500)
	if recs[0].Seq != 2501 || recs[len(recs)-1].Seq != 5000 {
		t.Fatalf("redelivered %d..%d, want 2501..5000", recs[0].Seq, recs[len(recs)-1].Seq)
	}
	appendN(t, s, 5000, 1)
	if r := next(t, s, 1); r[0].Seq != 5001 {
		t.Fatalf("numbering after reopen continued at %d, want 5001", r[0].Seq)
	}
}

func TestAckedSegmentsAreDeleted(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 1 << 20, SegmentBytes: 64 << 10, Sync: SyncNever})
	appendN(t, s, 0, 20000)
	recs := next(t, s, 20000)
	// Ack in reverse: nothing can be deleted until the first is acked.
	for i := len(recs) - 1; i >= 0; i-- {
		if err := s.Ack(recs[i].Seq); err != nil {
			t.Fatal(err)
		}
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) != 1 {
		t.Fatalf("%d segments left after acking everything, want only the active one", len(segs))
	}
	if st := s.Stats(); st.Depth != 0 {
		t.Fatalf("depth %d", st.Depth)
	}
}

func TestRewindRedeliversInFlight(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	appendN(t, s, 0, 10)
	recs := next(t, s, 10)
	if err := s.Ack(recs[0].Seq, recs[3].Seq); err != nil {
		t.Fatal(err)
	}
	s.Rewind()
	again := next(t, s, 8)
	want := []uint64{2, 3, 5, 6, 7, 8, 9, 10}
	for i, r := range again {
		if r.Seq != want[i] {
			t.Fatalf("after rewind got seq %d at %d, want %v", r.Seq, i, want)
		}
	}
}

func TestBoundedDropsOldest(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MaxBytes: 256 << 10, SegmentBytes: 64 << 10}
	s := open(t, dir, opts)
	payload := make([]byte, 1000)
	const n = 2000 // ~2 MB into a 256 KiB spool
	for i := 0; i < n; i++ {
		if _, err := s.Append(payload); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.Bytes > opts.MaxBytes {
		t.Fatalf("spool holds %d bytes, bound is %d", st.Bytes, opts.MaxBytes)
	}
	if st.Dropped == 0 || int(st.Dropped)+st.Depth != n {
		t.Fatalf("dropped %d + depth %d != appended %d", st.Dropped, st.Depth, n)
	}
	recs := next(t, s, st.Depth)
	if recs[len(recs)-1].Seq != n {
		t.Fatalf("newest message %d, want %d (drop the oldest, keep the newest)", recs[len(recs)-1].Seq, n)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq != recs[i-1].Seq+1 {
			t.Fatalf("gap between %d and %d", recs[i-1].Seq, recs[i].Seq)
		}
	}
}

func TestTornTailIsTruncated(t *testing.T) {
	header := func(seq uint64, length int) []byte {
		h := make([]byte, headerLen)
		putHeader(h, seq, make([]byte, length))
		return h
	}
	cases := []struct {
		name     string
		damage   func(t *testing.T, path string)
		wantLost uint64 // records counted lost
		wantNext uint64 // seq of the next append
	}{
		{"half a header", func(t *testing.T, p string) { appendBytes(t, p, header(51, 10)[:9]) }, 0, 51},
		// A torn write: the crash came before the payload; it was never
		// accepted, so it is cut, not counted.
		{"header without payload", func(t *testing.T, p string) { appendBytes(t, p, append(header(51, 100), 'x')) }, 0, 51},
		{"flipped byte in last record", func(t *testing.T, p string) {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)-2] ^= 0xff
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, 1, 51},
		{"garbage after the last record", func(t *testing.T, p string) {
			appendBytes(t, p, []byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 51, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
		}, 0, 51},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			appendN(t, s, 0, 50)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
			c.damage(t, segs[len(segs)-1])
			s = open(t, dir, Options{})
			st := s.Stats()
			if st.CorruptBytes == 0 {
				t.Fatal("no damage reported")
			}
			if st.Lost != c.wantLost || st.Depth != 50-int(c.wantLost) {
				t.Fatalf("lost %d, depth %d; want lost %d of 50", st.Lost, st.Depth, c.wantLost)
			}
			recs := next(t, s, st.Depth)
			if recs[0].Seq != 1 {
				t.Fatalf("first record %d", recs[0].Seq)
			}
			appendN(t, s, 100, 1)
			if r := next(t, s, 1); r[0].Seq != c.wantNext {
				t.Fatalf("append after recovery got seq %d, want %d", r[0].Seq, c.wantNext)
			}
		})
	}
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentAppendersGroupCommit(t *testing.T) {
	s := open(t, t.TempDir(), Options{Sync: SyncAlways})
	const writers, each = 8, 200
	var wg sync.WaitGroup
	seen := make(chan uint64, writers*each)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				seq, err := s.Append([]byte(fmt.Sprintf("%d-%d", w, i)))
				if err != nil {
					t.Error(err)
					return
				}
				seen <- seq
			}
		}(w)
	}
	wg.Wait()
	close(seen)
	uniq := map[uint64]bool{}
	for seq := range seen {
		if uniq[seq] {
			t.Fatalf("seq %d handed out twice", seq)
		}
		uniq[seq] = true
	}
	if recs := next(t, s, writers*each); len(recs) != writers*each {
		t.Fatalf("delivered %d", len(recs))
	}
}

func TestRejects(t *testing.T) {
	if _, err := Open(t.TempDir(), Options{MaxBytes: 10}); err == nil {
		t.Fatal("tiny MaxBytes accepted")
	}
	if _, err := Open(t.TempDir(), Options{Sync: "sometimes"}); err == nil {
		t.Fatal("unknown sync policy accepted")
	}
	s := open(t, t.TempDir(), Options{})
	if _, err := s.Append(make([]byte, MaxRecordBytes+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized append: %v", err)
	}
	_ = s.Close()
	if _, err := s.Append([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
}

// TestKill9LosesNothingAcknowledged runs a child process that appends and
// reports each sequence number after Append returned, kills it with SIGKILL
// mid-stream, and checks every reported message is in the reopened spool.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	if os.Getenv("SPOOL_CHILD_DIR") != "" {
		return // the child branch runs in TestHelperChildAppender
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperChildAppender$")
	cmd.Env = append(os.Environ(), "SPOOL_CHILD_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var last uint64
	for sc.Scan() {
		v, err := strconv.ParseUint(sc.Text(), 10, 64)
		if err != nil {
			continue
		}
		last = v
		if last >= 20000 {
			break
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if last < 20000 {
		t.Fatalf("child reported only up to %d", last)
	}
	s := open(t, dir, Options{Sync: SyncNever})
	st := s.Stats()
	if uint64(st.Depth) < last {
		t.Fatalf("after kill -9 the spool holds %d messages, child had appended %d", st.Depth, last)
	}
	recs := next(t, s, int(last))
	for i, r := range recs {
		if r.Seq != uint64(i+1) || string(r.Payload) != "payload-"+strconv.Itoa(i+1) {
			t.Fatalf("record %d: seq %d %q", i, r.Seq, r.Payload)
		}
	}
}

func TestHelperChildAppender(t *testing.T) {
	dir := os.Getenv("SPOOL_CHILD_DIR")
	if dir == "" {
		return // only meaningful as the child of TestKill9LosesNothingAcknowledged
	}
	s, err := Open(dir, Options{Sync: SyncNever, MaxBytes: 64 << 20})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 1; ; i++ {
		seq, err := s.Append([]byte("payload-" + strconv.Itoa(i)))
		if err != nil {
			os.Exit(1)
		}
		fmt.Fprintln(w, seq)
		if i%100 == 0 {
			w.Flush()
		}
	}
}

func FuzzOpenSegment(f *testing.F) {
	rec := func(seq uint64, p string) []byte {
		h := make([]byte, headerLen)
		putHeader(h, seq, []byte(p))
		return append(h, p...)
	}
	v1rec := []byte{5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'}
	two := append(rec(1, "hello"), rec(2, "world")...)
	f.Add([]byte{})
	f.Add(v1rec)
	f.Add(two)
	f.Add(append(append(rec(1, "a"), "junk"...), rec(3, "c")...))
	f.Add(append(rec(1, "a"), rec(2, "b")[:30]...))
	f.Fuzz(func(t *testing.T, seg []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "0000000000000001.seg"), seg, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir, Options{Sync: SyncNever})
		if err != nil {
			t.Fatal(err) // a damaged segment must never stop the spool opening
		}
		defer s.Close()
		st := s.Stats()
		if st.Depth < 0 || int64(st.Depth) > int64(len(seg))/v1HeaderLen {
			t.Fatalf("depth %d from %d bytes", st.Depth, len(seg))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var prev uint64
		if st.Depth > 0 {
			recs, err := s.Next(ctx, st.Depth)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != st.Depth {
				t.Fatalf("delivered %d, depth said %d", len(recs), st.Depth)
			}
			for i, r := range recs {
				if r.Seq <= prev {
					t.Fatalf("seq %d after %d at %d", r.Seq, prev, i)
				}
				prev = r.Seq
			}
		}
		seq, err := s.Append([]byte("after"))
		if err != nil {
			t.Fatal(err)
		}
		if seq <= prev {
			t.Fatalf("append got seq %d, not after the last delivered %d", seq, prev)
		}
		if recs, err := s.Next(ctx, 1); err != nil || recs[0].Seq != seq || string(recs[0].Payload) != "after" {
			t.Fatalf("after append: %+v %v", recs, err)
		}
	})
}

// BenchmarkSpoolVsRawFile measures append+deliver+ack through the spool
// next to the floor of the same bytes appended to a plain file, each with
// the same fsync cadence (one write and one fsync per batch of 100), and
// reports the ratio.
// BenchmarkSpoolVsRawFile runs the spool (append, deliver, ack) and the
// same bytes written to a plain file with the same write and fsync cadence
// in alternating trials, and reports the median of each: one short run is
// at the mercy of a single slow fsync.
func BenchmarkSpoolVsRawFile(b *testing.B) {
	const batch, batches, trials = 100, 200, 7
	payload := make([]byte, 200)
	msgs := make([][]byte, batch)
	for i := range msgs {
		msgs[i] = payload
	}
	n := batch * batches
	// The default segments are MaxBytes/64 (1 MiB) so that acked space
	// comes back soon; the "8MiB-segments" row is the layout before that
	// change, to show what the smaller segments cost.
	for _, v := range []struct {
		name string
		pol  SyncPolicy
		seg  int64
	}{{"never", SyncNever, 0}, {"always", SyncAlways, 0}, {"always-8MiB-segments", SyncAlways, DefaultMaxBytes / 8}} {
		pol := v.pol
		b.Run(v.name, func(b *testing.B) {
			spoolTrial := func() float64 {
				s := open(b, b.TempDir(), Options{Sync: pol, SegmentBytes: v.seg})
				ctx := context.Background()
				start := time.Now()
				for i := 0; i < n; i += batch {
					if _, err := s.AppendBatch(msgs); err != nil {
						b.Fatal(err)
					}
					recs, err := s.Next(ctx, batch)
					if err != nil {
						b.Fatal(err)
					}
					seqs := make([]uint64, len(recs))
					for j, r := range recs {
						seqs[j] = r.Seq
					}
					if err := s.Ack(seqs...); err != nil {
						b.Fatal(err)
					}
				}
				return float64(n) / time.Since(start).Seconds()
			}
			rawTrial := func() float64 {
				f, err := os.Create(filepath.Join(b.TempDir(), "raw"))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				start := time.Now()
				for i := 0; i < n; i += batch {
					var buf []byte
					for _, m := range msgs {
						buf = append(buf, m...)
					}
					if _, err := f.Write(buf); err != nil {
						b.Fatal(err)
					}
					if pol == SyncAlways {
						if err := f.Sync(); err != nil {
							b.Fatal(err)
						}
					}
				}
				return float64(n) / time.Since(start).Seconds()
			}
			var spoolRates, rawRates []float64
			for range trials {
				spoolRates = append(spoolRates, spoolTrial())
				rawRates = append(rawRates, rawTrial())
			}
			median := func(v []float64) float64 {
				slices.Sort(v)
				return v[len(v)/2]
			}
			spoolRate, rawRate := median(spoolRates), median(rawRates)
			b.ReportMetric(spoolRate, "spool_msgs/s")
			b.ReportMetric(rawRate, "rawfile_msgs/s")
			b.ReportMetric(spoolRate/rawRate, "ratio")
		})
	}
}
