// Package spool is the agent's durable store-and-forward queue: every
// telemetry message is appended here before it is sent, and leaves only when
// its backend acknowledged it. It is a small segment log:
//
//	dir/0000000000000001.seg   records with seq 1..k
//	dir/000000000000k+1.seg    ...
//	dir/ackmark                low-water mark: every seq below it is acked
//
// Records are framed with a sync marker, their length and CRC32C checksums
// (format.go), so that after damage a reader finds the next intact record:
// a flipped byte costs the record it is in, not the rest of the segment.
// At open every record lost to damage (a damaged record, a truncated or
// missing segment, a mark below the oldest segment) is counted (Stats.Lost)
// and named in one log line per damaged place; an impossible mark (beyond
// the newest record) is distrusted and everything is delivered again.
//
// Appends are all or nothing: a batch whose write or fsync fails is cut
// off the segment again and never delivered, and the next append tries
// the disk afresh, so a spool on a full disk takes messages again as soon
// as there is space. Delivery of what is spooled does not depend on
// writes working. Acked space is given back within a bound: a segment
// goes when all its records are acked, and the active segment is closed
// and removed once everything in it is acked and it holds reclaimBytes
// (at most once per CheckpointEvery), so acked data on disk stays under
// one segment (MaxBytes/64 by default) plus what one CheckpointEvery of
// traffic writes.
//
// The total size is bounded; when full, the oldest segment is dropped and
// its unacknowledged messages counted. Delivery is at-least-once: after a
// crash everything above the persisted low-water mark is delivered again.
package spool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeagent/edgeagent/internal/atomicfile"
)

// SyncPolicy says when appended records are fsynced.
type SyncPolicy string

const (
	// SyncAlways fsyncs before Append returns: survives power loss.
	SyncAlways SyncPolicy = "always"
	// SyncNever leaves flushing to the OS: survives a crash of the agent
	// (kill -9), not necessarily a power cut.
	SyncNever SyncPolicy = "never"
)

// ParseSyncPolicy validates a configured policy; "" means SyncAlways.
func ParseSyncPolicy(s string) (SyncPolicy, error) {
	switch p := SyncPolicy(s); p {
	case "":
		return SyncAlways, nil
	case SyncAlways, SyncNever:
		return p, nil
	}
	return "", fmt.Errorf("spool: unknown sync policy %q: use %q or %q", s, SyncAlways, SyncNever)
}

// Limits on what one record and the whole spool may hold.
const (
	MaxRecordBytes   = 1 << 20
	DefaultMaxBytes  = 64 << 20
	minSegmentBytes  = 64 << 10
	segmentExtension = ".seg"
	// reclaimBytes: a fully acked active segment this big is replaced by
	// a new one (at most once per CheckpointEvery, which bounds the cost
	// of creating segments under steady traffic), so acked data does not
	// wait for the segment to fill before its space is given back.
	reclaimBytes = 64 << 10
)

// ErrTooLarge is returned by Append for a payload over MaxRecordBytes.
var ErrTooLarge = errors.New("spool: message too large")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("spool: closed")

// ErrWrite wraps every failure to store a batch (a full disk, an I/O
// error): nothing of the batch was kept, and a later try may succeed.
var ErrWrite = errors.New("spool: cannot store the messages")

// Options configure a spool.
type Options struct {
	MaxBytes     int64      // bound on all segments; 0 means DefaultMaxBytes
	SegmentBytes int64      // roll to a new segment past this; 0 means MaxBytes/64 (at least 64 KiB)
	Sync         SyncPolicy // "" means SyncAlways
	// CheckpointEvery bounds how often Ack persists the low-water mark;
	// 0 means 1s. Longer means fewer writes and, after a crash, more
	// duplicates; never loss.
	CheckpointEvery time.Duration
	Logger          *slog.Logger
}

// Record is one queued message.
type Record struct {
	Seq     uint64
	Payload []byte
}

// Stats is a snapshot for status and metrics.
type Stats struct {
	Depth        int    // messages not yet acknowledged
	Bytes        int64  // bytes on disk
	Appended     uint64 // since open
	Acked        uint64 // since open
	Dropped      uint64 // since open, because the spool was full
	Lost         uint64 // since open, records lost to damage on disk
	Refused      uint64 // since open, messages refused because they could not be stored
	CorruptBytes int64  // bytes of damage passed over or cut at open
	// WriteError is the last write failure while appends are failing; ""
	// once an append succeeds again. WriteFailingSince is when they began
	// to fail.
	WriteError        string
	WriteFailingSince time.Time
}

type segment struct {
	first uint64 // first seq the segment may hold (its name)
	last  uint64 // last valid seq in it, first-1 if none
	size  int64
	path  string
	v1    bool // old record format: read, never appended to
}

// span is an inclusive range of seqs.
type span struct{ from, to uint64 }

// Spool is safe for concurrent use by appenders and one consumer.
type Spool struct {
	dir  string
	opts Options
	log  *slog.Logger

	// appendMu admits one batch at a time from Prepare to Commit or
	// Abort, so a failed batch is always the tail and can be cut off.
	appendMu sync.Mutex

	mu       sync.Mutex
	cond     chan struct{} // closed and replaced when records arrive
	segs     []*segment
	active   *os.File
	w        *bufio.Writer
	nextSeq  uint64
	visible  uint64              // seqs below it are committed: deliverable
	lwm      uint64              // every seq < lwm is acked, dropped or lost
	acked    map[uint64]struct{} // acked seqs >= lwm
	holes    []span              // seqs >= lwm lost to damage, sorted, disjoint
	cursor   uint64              // next seq to hand to the consumer
	reader   *segReader
	stats    Stats
	closed   bool
	mark     *markStore
	savedLWM uint64
	lastSave time.Time
	lastRoll time.Time
	// lastFailLog and failLogged rate-limit the storing-fails log lines.
	lastFailLog time.Time
	failLogged  bool
	markErr     bool  // the last mark save failed (logged once)
	dirtyTail   int64 // >= 0: a rolled-back batch still to be cut off the active segment at this size
}

// Open opens (creating if needed) the spool in dir, recovering what is
// intact from a damaged one.
func Open(dir string, opts Options) (*Spool, error) {
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxBytes < 2*minSegmentBytes {
		return nil, fmt.Errorf("spool: max bytes %d is below the minimum %d", opts.MaxBytes, 2*minSegmentBytes)
	}
	if opts.SegmentBytes == 0 {
		opts.SegmentBytes = opts.MaxBytes / 64
	}
	opts.SegmentBytes = min(max(opts.SegmentBytes, minSegmentBytes), opts.MaxBytes/2)
	if opts.Sync == "" {
		opts.Sync = SyncAlways
	}
	if _, err := ParseSyncPolicy(string(opts.Sync)); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.CheckpointEvery <= 0 {
		opts.CheckpointEvery = time.Second
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: create %s: %w", dir, err)
	}
	s := &Spool{dir: dir, opts: opts, log: opts.Logger, cond: make(chan struct{}), acked: map[uint64]struct{}{}, dirtyTail: -1}
	if err := s.recover(); err != nil {
		if s.mark != nil {
			s.mark.close()
		}
		return nil, err
	}
	return s, nil
}

func (s *Spool) segPath(first uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%016x%s", first, segmentExtension))
}

// scanned is what recovery learned about one segment file.
type scanned struct {
	seg        *segment
	holes      []span   // gaps between valid records inside the file
	damaged    []uint64 // seqs whose header was intact but payload not
	skipped    int64    // damaged bytes before the last valid record
	tail       int64    // bytes after the last valid record
	maxSeq     uint64   // highest seq named by an intact header
	zeroTail   bool     // zeros from the last record to the end: preallocated
	appendable bool
}

// zerosFrom reports whether f holds only zero bytes in [from, to).
func zerosFrom(f *os.File, from, to int64) bool {
	buf := make([]byte, 64<<10)
	for off := from; off < to; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), to-off)], off)
		for _, c := range buf[:n] {
			if c != 0 {
				return false
			}
		}
		if err != nil && n == 0 {
			return false
		}
		off += int64(n)
	}
	return true
}

func scanSegmentFile(path string, first, limit uint64) (*scanned, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("spool: open segment: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("spool: stat segment: %w", err)
	}
	size := fi.Size()
	var head [v1HeaderLen]byte
	v1 := false
	if n, _ := f.ReadAt(head[:], 0); n == v1HeaderLen {
		if l := uint32(head[0]) | uint32(head[1])<<8 | uint32(head[2])<<16 | uint32(head[3])<<24; l <= MaxRecordBytes && int64(l)+v1HeaderLen <= size {
			b := make([]byte, v1HeaderLen+int(l))
			if _, err := f.ReadAt(b, 0); err == nil {
				v1 = isV1(b, first)
			}
		}
	}
	if limit == 0 {
		// The newest segment: no seq can exceed one record per header.
		per := int64(headerLen)
		if v1 {
			per = v1HeaderLen
		}
		limit = first + uint64(size/per) + 1
	}
	sc := newScanner(f, first, limit, v1)
	res := &scanned{seg: &segment{first: first, last: first - 1, path: path, v1: v1}}
	var skippedAtEnd int64
	for {
		seq, _, err := sc.next()
		if err != nil {
			break
		}
		if seq > res.seg.last+1 {
			res.holes = append(res.holes, span{res.seg.last + 1, seq - 1})
		}
		res.seg.last = seq
		skippedAtEnd = sc.skipped
	}
	res.seg.size = sc.end
	res.skipped = skippedAtEnd
	res.tail = size - sc.end
	if n := len(sc.damaged); n > 0 && sc.damaged[n-1] > res.seg.last && sc.lastDamagedZeroEnd && zerosFrom(f, sc.lastDamagedEnd, size) {
		// The last record was being written into the preallocated tail
		// when the agent died: a torn write, never acknowledged, not a
		// loss. (A flipped byte leaves the payload's last byte, '}' for
		// JSON, as it was.)
		sc.damaged = sc.damaged[:n-1]
	}
	if res.tail > 0 && zerosFrom(f, sc.end, size) {
		res.tail = 0 // the preallocated rest of the segment
		res.zeroTail = true
	}
	res.damaged = sc.damaged
	res.maxSeq = res.seg.last
	for _, d := range sc.damaged {
		res.maxSeq = max(res.maxSeq, d)
	}
	res.appendable = !v1 && res.skipped == 0 && res.maxSeq == res.seg.last
	return res, nil
}

// recover scans the segments, finds what damage cost, and loads the
// low-water mark.
func (s *Spool) recover() error {
	ms, mark, haveMark, markDamaged, err := openMark(s.dir, s.opts.Sync == SyncAlways)
	if err != nil {
		return err
	}
	s.mark = ms
	legacy := false
	if !haveMark && !markDamaged {
		v, ok, bad, err := readLegacyMark(s.dir)
		if err != nil {
			return err
		}
		haveMark, markDamaged, legacy, mark = ok, bad, ok || bad, v
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("spool: list %s: %w", s.dir, err)
	}
	var firsts []uint64
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, segmentExtension) {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimSuffix(name, segmentExtension), 16, 64)
		if err != nil || v == 0 || v == math.MaxUint64 {
			continue
		}
		firsts = append(firsts, v)
	}
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	var scans []*scanned
	for i, first := range firsts {
		var limit uint64
		if i+1 < len(firsts) {
			limit = firsts[i+1]
		}
		sc, err := scanSegmentFile(s.segPath(first), first, limit)
		if err != nil {
			return err
		}
		scans = append(scans, sc)
	}
	next := uint64(1)
	if n := len(scans); n > 0 {
		next = max(scans[n-1].seg.last, scans[n-1].maxSeq) + 1
	}
	// The mark must lie within [oldest segment's first, next].
	lowest := next
	if len(scans) > 0 {
		lowest = scans[0].seg.first
	}
	switch {
	case len(scans) == 0 && haveMark && mark > next:
		next = mark // everything was acked and removed: number on
		s.lwm = mark
	case haveMark && mark > next:
		s.log.Warn("spool: ack mark beyond the newest record; not trusting it, delivering everything again",
			"mark", mark, "next_seq", next)
		s.lwm = lowest
	case haveMark && mark >= lowest:
		s.lwm = mark
	case haveMark && mark >= 1:
		s.lwm = mark // below the oldest segment: the span between is lost, counted below
	default:
		if markDamaged {
			s.log.Warn("spool: unreadable ack mark, delivering everything again")
		}
		s.lwm = lowest
	}
	s.lwm = max(s.lwm, 1)
	s.nextSeq, s.visible, s.cursor = next, next, s.lwm

	// Count and name every loss at or above the mark.
	if s.lwm < lowest {
		s.addLostAtOpen(span{s.lwm, lowest - 1}, "spool: records missing before the oldest segment (a segment file is gone)",
			"before_segment", filepath.Base(s.segPath(lowest)))
	}
	for i, sc := range scans {
		s.stats.CorruptBytes += sc.skipped
		var lost []span
		lost = append(lost, sc.holes...)
		end := max(sc.seg.last, sc.maxSeq)
		if i+1 < len(scans) {
			end = scans[i+1].seg.first - 1
		}
		tailLost := span{sc.seg.last + 1, end}
		// The file ends with an intact record: a gap after it is a
		// missing file, not damage at this one's end.
		clean := sc.tail == 0 && sc.maxSeq == sc.seg.last
		if i+1 < len(scans) && clean && tailLost.from <= tailLost.to {
			// The file ends cleanly, yet seqs are missing before the next
			// one: a whole segment between them is gone.
			s.addLostAtOpen(tailLost, "spool: segment missing, its records are lost",
				"after_segment", filepath.Base(sc.seg.path), "before_segment", filepath.Base(scans[i+1].seg.path))
		} else if tailLost.from <= tailLost.to {
			lost = append(lost, tailLost)
		}
		if sc.tail > 0 {
			s.stats.CorruptBytes += sc.tail
		}
		if n := s.addLost(lost); n > 0 || sc.skipped > 0 || (sc.tail > 0 && i+1 < len(scans)) {
			s.log.Warn("spool: damaged segment, intact records kept", "segment", filepath.Base(sc.seg.path),
				"lost", n, "lost_seqs", formatSpans(clip(lost, s.lwm)), "damaged_bytes", sc.skipped+sc.tail)
		} else if sc.tail > 0 {
			s.log.Warn("spool: cut a torn tail (a write the crash interrupted)", "segment", filepath.Base(sc.seg.path), "bytes", sc.tail)
		}
		s.segs = append(s.segs, sc.seg)
	}
	for _, seg := range s.segs {
		s.stats.Bytes += seg.size
	}
	s.stats.Depth = int(s.nextSeq-s.lwm) - int(s.holeCountLocked(s.lwm, s.nextSeq))
	s.savedLWM = 0
	s.advanceLWMLocked()
	s.cursor = s.lwm
	if err := s.saveLWMLocked(); err != nil {
		return err
	}
	if legacy {
		_ = os.Remove(filepath.Join(s.dir, legacyMarkFile))
	}
	if err := s.dropAckedSegmentsLocked(); err != nil {
		return err
	}
	var last *scanned
	if n := len(scans); n > 0 {
		last = scans[n-1]
	}
	return s.openActiveLocked(last)
}

// addLostAtOpen records one lost span found at open with its own log line.
func (s *Spool) addLostAtOpen(sp span, msg string, args ...any) {
	if n := s.addLost([]span{sp}); n > 0 {
		s.log.Warn(msg, append(args, "lost", n, "lost_seqs", formatSpans(clip([]span{sp}, s.lwm)))...)
	}
}

// addLost adds spans (clipped to the mark) to the holes and counts them.
func (s *Spool) addLost(spans []span) uint64 {
	var n uint64
	for _, sp := range clip(spans, s.lwm) {
		n += sp.to - sp.from + 1
		s.holes = append(s.holes, sp)
	}
	sort.Slice(s.holes, func(i, j int) bool { return s.holes[i].from < s.holes[j].from })
	s.stats.Lost += n
	return n
}

func clip(spans []span, from uint64) []span {
	var out []span
	for _, sp := range spans {
		if sp.to < from || sp.to < sp.from {
			continue
		}
		out = append(out, span{max(sp.from, from), sp.to})
	}
	return out
}

func formatSpans(spans []span) string {
	var b strings.Builder
	for i, sp := range spans {
		if i > 0 {
			b.WriteByte(',')
		}
		if i == 8 {
			fmt.Fprintf(&b, "... (%d ranges)", len(spans))
			break
		}
		if sp.from == sp.to {
			fmt.Fprintf(&b, "%d", sp.from)
		} else {
			fmt.Fprintf(&b, "%d-%d", sp.from, sp.to)
		}
	}
	return b.String()
}

// holeAt returns the hole holding seq, if any.
func (s *Spool) holeAt(seq uint64) (span, bool) {
	i := sort.Search(len(s.holes), func(i int) bool { return s.holes[i].to >= seq })
	if i < len(s.holes) && s.holes[i].from <= seq {
		return s.holes[i], true
	}
	return span{}, false
}

// holeCountLocked counts lost seqs in [from, to).
func (s *Spool) holeCountLocked(from, to uint64) uint64 {
	var n uint64
	for _, h := range s.holes {
		a, b := max(h.from, from), min(h.to+1, to)
		if a < b {
			n += b - a
		}
	}
	return n
}

// openActiveLocked picks the segment appends go to: the newest one when it
// is intact and has room, otherwise a new one.
func (s *Spool) openActiveLocked(last *scanned) error {
	if last != nil && last.appendable && last.seg.size < s.opts.SegmentBytes && last.seg.last+1 == s.nextSeq {
		seg := last.seg
		if last.tail > 0 {
			if err := os.Truncate(seg.path, seg.size); err != nil {
				return fmt.Errorf("spool: cut the torn tail of %s: %w", seg.path, err)
			}
		}
		f, err := os.OpenFile(seg.path, os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("spool: open segment for append: %w", err)
		}
		s.active, s.w = f, bufio.NewWriterSize(io.NewOffsetWriter(f, seg.size), 64<<10)
		return nil
	}
	path := s.segPath(s.nextSeq)
	if n := len(s.segs); n > 0 && s.segs[n-1].path == path {
		// A damaged newest segment with nothing intact in it holds the
		// name the new one needs: keep its bytes aside for inspection.
		if err := os.Rename(path, path+".damaged"); err != nil {
			return fmt.Errorf("spool: set aside damaged segment: %w", err)
		}
		s.stats.Bytes -= s.segs[n-1].size
		s.segs = s.segs[:n-1]
	}
	f, err := s.createSegment(path)
	if err != nil {
		return err
	}
	s.segs = append(s.segs, &segment{first: s.nextSeq, last: s.nextSeq - 1, path: path})
	s.active, s.w = f, bufio.NewWriterSize(io.NewOffsetWriter(f, 0), 64<<10)
	return nil
}

// createSegment makes a new segment file. Under SyncAlways it is filled
// with zeros to SegmentBytes first (a zero tail reads as the clean end of
// a segment), so that appends overwrite allocated blocks and the per-batch
// fdatasync flushes data only; on a full disk this is where a new segment
// fails, before anything of a batch is written.
func (s *Spool) createSegment(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: create segment: %w", err)
	}
	if s.opts.Sync == SyncAlways {
		if err := zeroFill(f, s.opts.SegmentBytes); err != nil {
			f.Close()
			_ = os.Remove(path)
			return nil, fmt.Errorf("spool: preallocate segment: %w", err)
		}
		if err := atomicfile.SyncDir(s.dir); err != nil {
			f.Close()
			_ = os.Remove(path)
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	return f, nil
}

// Pending is a batch that is stored but not yet deliverable: Commit makes
// it so, Abort removes it. Exactly one of them must be called, soon: the
// spool takes no other batch until then.
type Pending struct {
	s     *Spool
	seg   *segment
	start int64
	first uint64
	n     uint64
	done  bool
}

// Seqs returns the batch's sequence numbers.
func (p *Pending) Seqs() []uint64 {
	out := make([]uint64, p.n)
	for i := range out {
		out[i] = p.first + uint64(i)
	}
	return out
}

// Prepare stores payloads (on stable storage under SyncAlways) without
// making them deliverable. On any error nothing of the batch is kept, and
// the error wraps ErrWrite (or is ErrTooLarge or ErrClosed).
func (s *Spool) Prepare(payloads [][]byte) (*Pending, error) {
	var batchLen int64
	for _, p := range payloads {
		if len(p) > MaxRecordBytes {
			return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(p), MaxRecordBytes)
		}
		batchLen += headerLen + int64(len(p))
	}
	s.appendMu.Lock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.appendMu.Unlock()
		return nil, ErrClosed
	}
	fail := func(err error) (*Pending, error) {
		s.stats.Refused += uint64(len(payloads))
		s.noteWriteErrLocked(err)
		s.mu.Unlock()
		s.appendMu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrWrite, err)
	}
	if s.dirtyTail >= 0 {
		if err := s.active.Truncate(s.dirtyTail); err != nil {
			return fail(fmt.Errorf("cut off a refused batch: %w", err))
		}
		s.dirtyTail = -1
	}
	seg := s.segs[len(s.segs)-1]
	if seg.size > 0 && seg.size+batchLen > s.opts.SegmentBytes {
		if err := s.rollLocked(); err != nil {
			return fail(err)
		}
		seg = s.segs[len(s.segs)-1]
	}
	for s.stats.Bytes+batchLen > s.opts.MaxBytes && len(s.segs) > 1 {
		s.dropOldestLocked()
	}
	p := &Pending{s: s, seg: seg, start: seg.size, first: s.nextSeq, n: uint64(len(payloads))}
	var h [headerLen]byte
	for _, pl := range payloads {
		putHeader(h[:], s.nextSeq, pl)
		if _, err := s.w.Write(h[:]); err != nil {
			s.rollbackLocked(p)
			return fail(fmt.Errorf("write: %w", err))
		}
		if _, err := s.w.Write(pl); err != nil {
			s.rollbackLocked(p)
			return fail(fmt.Errorf("write: %w", err))
		}
		recLen := headerLen + int64(len(pl))
		seg.last = s.nextSeq
		seg.size += recLen
		s.nextSeq++
		s.stats.Bytes += recLen
		s.stats.Appended++
		s.stats.Depth++
	}
	if err := s.w.Flush(); err != nil {
		s.rollbackLocked(p)
		return fail(fmt.Errorf("write: %w", err))
	}
	if s.opts.Sync == SyncAlways {
		// appendMu keeps s.active in place; readers and acks go on.
		s.mu.Unlock()
		err := syncData(s.active)
		s.mu.Lock()
		if err != nil {
			s.rollbackLocked(p)
			return fail(fmt.Errorf("fsync: %w", err))
		}
	}
	s.mu.Unlock()
	return p, nil
}

// Commit makes the batch deliverable.
func (p *Pending) Commit() {
	if p.done {
		return
	}
	p.done = true
	s := p.s
	s.mu.Lock()
	s.visible = p.first + p.n
	s.noteWriteOKLocked()
	s.signalLocked()
	s.mu.Unlock()
	s.appendMu.Unlock()
}

// Abort removes the batch: it is never delivered, and counted refused.
func (p *Pending) Abort() {
	if p.done {
		return
	}
	p.done = true
	s := p.s
	s.mu.Lock()
	s.rollbackLocked(p)
	s.stats.Refused += p.n
	s.mu.Unlock()
	s.appendMu.Unlock()
}

// rollbackLocked cuts batch p off the active segment and forgets it. If
// the cut fails the next Prepare retries it before writing.
func (s *Spool) rollbackLocked(p *Pending) {
	seg := p.seg
	n := s.nextSeq - p.first
	if s.reader != nil && s.reader.seg == seg {
		// Its buffer may hold bytes of the batch, which new records
		// will overwrite.
		s.closeReaderLocked()
	}
	if err := s.active.Truncate(p.start); err != nil {
		s.dirtyTail = p.start
		s.log.Error("spool: cut off a refused batch; retrying before the next write", "segment", filepath.Base(seg.path), "err", err)
	} else if s.opts.Sync == SyncAlways {
		_ = syncData(s.active)
	}
	// A failed bufio.Writer keeps its error for ever: a new one.
	s.w.Reset(io.NewOffsetWriter(s.active, p.start))
	s.stats.Bytes -= seg.size - p.start
	s.stats.Appended -= n
	s.stats.Depth -= int(n)
	seg.size, seg.last, s.nextSeq = p.start, p.first-1, p.first
}

// failLogEvery bounds the log lines about storing failing and working
// again: a disk that is nearly full can flip between the two with every
// request.
const failLogEvery = time.Minute

func (s *Spool) noteWriteErrLocked(err error) {
	s.stats.WriteError = err.Error()
	if s.stats.WriteFailingSince.IsZero() {
		s.stats.WriteFailingSince = time.Now()
		s.failLogged = time.Since(s.lastFailLog) >= failLogEvery
		if s.failLogged {
			s.lastFailLog = time.Now()
			s.log.Error("spool: cannot store messages; refusing new ones, still delivering what is spooled", "err", err, "refused", s.stats.Refused)
		}
	}
}

func (s *Spool) noteWriteOKLocked() {
	if !s.stats.WriteFailingSince.IsZero() && s.failLogged {
		s.log.Info("spool: storing messages again", "failing_for", time.Since(s.stats.WriteFailingSince).Round(time.Millisecond),
			"refused", s.stats.Refused)
	}
	s.stats.WriteError, s.stats.WriteFailingSince = "", time.Time{}
}

// countRefused counts messages refused without a try on this spool
// (another spool of the Group could not store them).
func (s *Spool) countRefused(n int) {
	s.mu.Lock()
	s.stats.Refused += uint64(n)
	s.mu.Unlock()
}

// Append stores payload and returns its sequence number. Under SyncAlways
// the record is on stable storage when Append returns.
func (s *Spool) Append(payload []byte) (uint64, error) {
	seqs, err := s.AppendBatch([][]byte{payload})
	if err != nil {
		return 0, err
	}
	return seqs[0], nil
}

// AppendBatch stores several payloads with one write and (under SyncAlways)
// one fsync; all or none are accepted.
func (s *Spool) AppendBatch(payloads [][]byte) ([]uint64, error) {
	p, err := s.Prepare(payloads)
	if err != nil {
		return nil, err
	}
	p.Commit()
	return p.Seqs(), nil
}

// rollLocked starts the next segment. The new file is made before the old
// one is closed, so a failure leaves the spool as it was.
func (s *Spool) rollLocked() error {
	path := s.segPath(s.nextSeq)
	f, err := s.createSegment(path)
	if err != nil {
		return err
	}
	s.closeActiveLocked()
	s.segs = append(s.segs, &segment{first: s.nextSeq, last: s.nextSeq - 1, path: path})
	s.active = f
	s.w.Reset(io.NewOffsetWriter(f, 0))
	s.lastRoll = time.Now()
	return nil
}

// closeActiveLocked gives the active segment's zero tail back and closes
// it (already flushed and synced by the batches written to it).
func (s *Spool) closeActiveLocked() error {
	seg := s.segs[len(s.segs)-1]
	if err := s.active.Truncate(seg.size); err != nil {
		s.log.Warn("spool: cut the preallocated tail", "segment", filepath.Base(seg.path), "err", err)
	} else if s.opts.Sync == SyncAlways {
		_ = syncData(s.active)
	}
	if err := s.active.Close(); err != nil {
		return fmt.Errorf("spool: close segment: %w", err)
	}
	return nil
}

// zeroFill writes n zero bytes at the start of the empty file f.
func zeroFill(f *os.File, n int64) error {
	// 64 KiB: a bigger buffer saves few syscalls and is a heap spike at
	// every segment the agent opens.
	zeros := make([]byte, min(n, 64<<10))
	for off := int64(0); off < n; {
		w, err := f.WriteAt(zeros[:min(int64(len(zeros)), n-off)], off)
		if err != nil {
			return err
		}
		off += int64(w)
	}
	return nil
}

// dropOldestLocked removes the oldest segment to make room, counting the
// unacknowledged messages it held.
func (s *Spool) dropOldestLocked() {
	seg := s.segs[0]
	var lost uint64
	for seq := max(seg.first, s.lwm); seq <= seg.last; seq++ {
		if _, ok := s.acked[seq]; ok {
			delete(s.acked, seq)
			continue
		}
		if _, hole := s.holeAt(seq); hole {
			continue
		}
		lost++
	}
	s.segs = s.segs[1:]
	s.stats.Bytes -= seg.size
	s.stats.Dropped += lost
	s.stats.Depth -= int(lost)
	if s.lwm <= seg.last {
		s.lwm = seg.last + 1
	}
	s.advanceLWMLocked()
	if s.cursor < s.lwm {
		s.cursor = s.lwm
	}
	if s.reader != nil && s.reader.seg == seg {
		s.closeReaderLocked()
	}
	// The mark first: a reopen must not take the removal for damage.
	_ = s.saveLWMLocked()
	if err := os.Remove(seg.path); err != nil {
		s.log.Error("spool: remove dropped segment", "segment", seg.path, "err", err)
	}
	s.log.Warn("spool: full, dropped oldest messages", "dropped", lost, "max_bytes", s.opts.MaxBytes)
}

func (s *Spool) signalLocked() {
	close(s.cond)
	s.cond = make(chan struct{})
}

// Next blocks until at least one undelivered record exists (or ctx ends) and
// returns up to max of them in order, advancing the delivery cursor. They
// stay in the spool until acked. Records found damaged while reading are
// counted lost and passed over; Next fails only when the spool is closed
// or ctx ends.
func (s *Spool) Next(ctx context.Context, maxRecords int) ([]Record, error) {
	if maxRecords <= 0 {
		maxRecords = 1
	}
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrClosed
		}
		if s.cursor < s.visible {
			recs := s.readLocked(maxRecords)
			s.mu.Unlock()
			if len(recs) > 0 {
				return recs, nil
			}
			continue
		}
		wait := s.cond
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wait:
		}
	}
}

// skipDoneLocked moves seq past acked records and holes.
func (s *Spool) skipDoneLocked(seq uint64) uint64 {
	seq = max(seq, s.lwm)
	for {
		if _, ok := s.acked[seq]; ok {
			seq++
			continue
		}
		if h, ok := s.holeAt(seq); ok {
			seq = h.to + 1
			continue
		}
		return seq
	}
}

func (s *Spool) readLocked(maxRecords int) []Record {
	// Sized for what is visible, not grown by append: the uplinks read
	// batches of hundreds.
	var out []Record
	if maxRecords > 0 && s.visible > s.cursor {
		out = make([]Record, 0, min(uint64(maxRecords), s.visible-s.cursor))
	}
	for len(out) < maxRecords {
		s.cursor = s.skipDoneLocked(s.cursor)
		if s.cursor >= s.visible {
			break
		}
		seq, payload, ok := s.readAtLocked(s.cursor)
		if !ok {
			continue // readAtLocked counted what was missing
		}
		if seq > s.cursor {
			s.loseLocked(span{s.cursor, seq - 1}, "read")
		}
		s.cursor = seq + 1
		if _, done := s.acked[seq]; done {
			continue
		}
		out = append(out, Record{Seq: seq, Payload: payload})
	}
	return out
}

// readAtLocked returns the first intact record at or after seq (below
// visible). When there is none it counts the rest lost and reports false.
func (s *Spool) readAtLocked(seq uint64) (uint64, []byte, bool) {
	r := s.reader
	if r == nil || seq < r.seg.first || seq > r.seg.last || r.sc.prev >= seq {
		s.closeReaderLocked()
		i := sort.Search(len(s.segs), func(i int) bool { return s.segs[i].last >= seq })
		if i == len(s.segs) {
			s.loseLocked(span{seq, s.visible - 1}, "read")
			return 0, nil, false
		}
		seg := s.segs[i]
		if seg.first > seq {
			s.loseLocked(span{seq, seg.first - 1}, "read")
			return 0, nil, false
		}
		f, err := os.Open(seg.path)
		if err != nil {
			s.log.Error("spool: open segment for reading", "segment", filepath.Base(seg.path), "err", err)
			s.loseLocked(span{seq, seg.last}, "unreadable segment")
			return 0, nil, false
		}
		limit := uint64(math.MaxUint64)
		if i+1 < len(s.segs) {
			limit = s.segs[i+1].first
		}
		r = &segReader{f: f, seg: seg, sc: newScanner(&upToEnd{f: f, seg: seg}, seg.first, limit, seg.v1)}
		s.reader = r
	}
	for {
		got, p, err := r.sc.next()
		if err != nil {
			// The file ends before records it held at open: damaged since.
			s.closeReaderLocked()
			s.loseLocked(span{seq, r.seg.last}, "read")
			return 0, nil, false
		}
		if got < seq {
			continue
		}
		if got >= s.visible {
			s.closeReaderLocked()
			s.loseLocked(span{seq, s.visible - 1}, "read")
			return 0, nil, false
		}
		return got, p, true
	}
}

// loseLocked records seqs found missing while reading (damage after open)
// and names them in one log line.
func (s *Spool) loseLocked(sp span, why string) {
	var n uint64
	for seq := sp.from; seq <= sp.to; seq++ {
		if _, ok := s.acked[seq]; ok {
			continue
		}
		if _, ok := s.holeAt(seq); ok {
			continue
		}
		n++
	}
	if n == 0 {
		return
	}
	s.holes = append(s.holes, sp)
	sort.Slice(s.holes, func(i, j int) bool { return s.holes[i].from < s.holes[j].from })
	s.holes = mergeSpans(s.holes)
	s.stats.Lost += n
	s.stats.Depth -= int(n)
	s.log.Warn("spool: records lost to damage found while reading", "why", why, "lost", n, "lost_seqs", formatSpans([]span{sp}))
	s.advanceLWMLocked()
}

func mergeSpans(in []span) []span {
	out := in[:0]
	for _, sp := range in {
		if n := len(out); n > 0 && sp.from <= out[n-1].to+1 {
			out[n-1].to = max(out[n-1].to, sp.to)
			continue
		}
		out = append(out, sp)
	}
	return out
}

// segReader reads one segment sequentially. seg is shared with the writer,
// so seg.last grows as records are appended to the active segment.
type segReader struct {
	f   *os.File
	sc  *scanner
	seg *segment
}

// upToEnd reads a segment file up to the end of what has been written to
// it (read under Spool.mu, as seg.size changes). Reading further would
// buffer zeros of the preallocated tail that appends then overwrite.
type upToEnd struct {
	f   *os.File
	seg *segment
	off int64
}

func (u *upToEnd) Read(p []byte) (int, error) {
	left := u.seg.size - u.off
	if left <= 0 {
		return 0, io.EOF
	}
	n, err := u.f.ReadAt(p[:min(int64(len(p)), left)], u.off)
	u.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

func (s *Spool) closeReaderLocked() {
	if s.reader != nil {
		s.reader.f.Close()
		s.reader = nil
	}
}

// Ack marks records as delivered. Acks may come in any order; segments
// whose records are all acked are deleted, and the low-water mark is
// persisted (at most every CheckpointEvery) so a restart does not deliver
// them again. A failure to persist is logged and retried later, never
// returned: it must not stop delivery.
func (s *Spool) Ack(seqs ...uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	for _, seq := range seqs {
		if seq < s.lwm || seq >= s.visible {
			continue
		}
		if _, dup := s.acked[seq]; dup {
			continue
		}
		if _, hole := s.holeAt(seq); hole {
			continue
		}
		s.acked[seq] = struct{}{}
		s.stats.Acked++
		s.stats.Depth--
	}
	s.advanceLWMLocked()
	s.reclaimActiveLocked()
	if err := s.dropAckedSegmentsLocked(); err != nil {
		return err
	}
	if time.Since(s.lastSave) >= s.opts.CheckpointEvery {
		_ = s.saveLWMLocked()
	}
	return nil
}

// reclaimActiveLocked replaces a fully acked active segment of at least
// reclaimBytes with a new one, so its space is given back now rather than
// when it fills. It skips (a later Ack retries) while a batch is being
// appended.
func (s *Spool) reclaimActiveLocked() {
	seg := s.segs[len(s.segs)-1]
	if seg.size < reclaimBytes || s.lwm < s.nextSeq || time.Since(s.lastRoll) < s.opts.CheckpointEvery || !s.appendMu.TryLock() {
		return
	}
	defer s.appendMu.Unlock()
	if s.dirtyTail >= 0 || s.nextSeq != s.visible {
		return
	}
	if err := s.rollLocked(); err != nil {
		s.log.Warn("spool: start a new segment to free acked space", "err", err)
	}
}

// advanceLWMLocked moves the low-water mark over acked records and holes.
func (s *Spool) advanceLWMLocked() {
	for s.lwm < s.nextSeq {
		if _, ok := s.acked[s.lwm]; ok {
			delete(s.acked, s.lwm)
			s.lwm++
			continue
		}
		if h, ok := s.holeAt(s.lwm); ok {
			for seq := range s.acked {
				if seq >= h.from && seq <= h.to {
					delete(s.acked, seq)
				}
			}
			s.lwm = h.to + 1
			continue
		}
		break
	}
	for len(s.holes) > 0 && s.holes[0].to < s.lwm {
		s.holes = s.holes[1:]
	}
}

// dropAckedSegmentsLocked deletes fully acked segments (never the active
// one), persisting the mark first.
func (s *Spool) dropAckedSegmentsLocked() error {
	for len(s.segs) > 1 && s.segs[0].last < s.lwm {
		seg := s.segs[0]
		// The mark first: a crash after the remove but before the mark
		// would make the next segment's start look like lost records.
		if err := s.saveLWMLocked(); err != nil {
			return nil // logged; retried at the next ack
		}
		if s.reader != nil && s.reader.seg == seg {
			s.closeReaderLocked()
		}
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("spool: remove acked segment", "segment", filepath.Base(seg.path), "err", err)
			return nil
		}
		s.segs = s.segs[1:]
		s.stats.Bytes -= seg.size
	}
	return nil
}

// Checkpoint persists the low-water mark, so a restart re-delivers only
// what was not acked. Consumers call it after a batch of acks; Close calls
// it too.
func (s *Spool) Checkpoint() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	return s.saveLWMLocked()
}

func (s *Spool) saveLWMLocked() error {
	if s.lwm == s.savedLWM {
		return nil
	}
	if err := s.mark.save(s.lwm); err != nil {
		if !s.markErr {
			s.log.Error("spool: cannot save the ack mark; acked segments stay until it can", "err", err)
			s.markErr = true
		}
		return err
	}
	if s.markErr {
		s.log.Info("spool: ack mark saved again")
		s.markErr = false
	}
	s.savedLWM = s.lwm
	s.lastSave = time.Now()
	return nil
}

// Rewind makes every unacknowledged record deliverable again, for a
// consumer that lost its connection with messages in flight.
func (s *Spool) Rewind() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cursor != s.lwm {
		s.cursor = s.lwm
		s.closeReaderLocked()
	}
	s.signalLocked()
}

// Stats returns a snapshot.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Close flushes, fsyncs and persists the low-water mark. It waits for a
// batch being appended.
func (s *Spool) Close() error {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.signalLocked()
	s.closeReaderLocked()
	var errs []error
	if err := s.w.Flush(); err != nil {
		errs = append(errs, err)
	}
	if err := s.closeActiveLocked(); err != nil {
		errs = append(errs, err)
	}
	if err := s.saveLWMLocked(); err != nil {
		errs = append(errs, err)
	}
	if err := s.mark.close(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("spool: close: %w", err)
	}
	return nil
}
