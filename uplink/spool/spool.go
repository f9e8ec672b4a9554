// Package spool is the agent's durable store-and-forward queue: every
// telemetry message is appended here before it is sent, and leaves only when
// its backend acknowledged it. It is a small segment log:
//
//	dir/0000000000000001.seg   records with seq 1..k
//	dir/000000000000k+1.seg    ...
//	dir/acked                  low-water mark: every seq below it is acked
//
// A record is [len uint32][crc32c uint32][seq uint64][payload]; the CRC
// covers seq and payload. On open, a torn or corrupt tail is truncated, not
// fatal. The total size is bounded; when full, the oldest segment is dropped
// and its unacknowledged messages counted. Delivery is at-least-once: after a
// crash everything above the persisted low-water mark is delivered again.
package spool

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
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
	// SyncAlways fsyncs before Append returns (concurrent appends share one
	// fsync): survives power loss.
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
	headerLen        = 16
	DefaultMaxBytes  = 64 << 20
	minSegmentBytes  = 64 << 10
	ackedFile        = "acked"
	segmentExtension = ".seg"
)

// ErrTooLarge is returned by Append for a payload over MaxRecordBytes.
var ErrTooLarge = errors.New("spool: message too large")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("spool: closed")

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Options configure a spool.
type Options struct {
	MaxBytes     int64      // bound on all segments; 0 means DefaultMaxBytes
	SegmentBytes int64      // roll to a new segment past this; 0 means MaxBytes/8
	Sync         SyncPolicy // "" means SyncAlways
	// CheckpointEvery bounds how often Ack persists the low-water mark
	// (two fsyncs); 0 means 1s. Longer means fewer writes and, after a
	// crash, more duplicates; never loss.
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
	CorruptBytes int64  // bytes cut at open because they were torn or corrupt
}

type segment struct {
	first uint64 // first seq in the segment
	last  uint64 // last seq, first-1 if empty
	size  int64
	path  string
}

// Spool is safe for concurrent use by appenders and one consumer.
type Spool struct {
	dir  string
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	cond     chan struct{} // closed and replaced when records arrive
	segs     []*segment
	active   *os.File
	w        *bufio.Writer
	nextSeq  uint64
	lwm      uint64              // every seq < lwm is acked (or dropped)
	acked    map[uint64]struct{} // acked seqs >= lwm
	cursor   uint64              // next seq to hand to the consumer
	reader   *segReader
	written  int64 // bytes ever appended, for group commit
	stats    Stats
	closed   bool
	savedLWM uint64

	syncMu sync.Mutex
	synced int64

	lastSave time.Time
}

// Open opens (creating if needed) the spool in dir, recovering from a torn
// tail.
func Open(dir string, opts Options) (*Spool, error) {
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxBytes < 2*minSegmentBytes {
		return nil, fmt.Errorf("spool: max bytes %d is below the minimum %d", opts.MaxBytes, 2*minSegmentBytes)
	}
	if opts.SegmentBytes == 0 {
		opts.SegmentBytes = opts.MaxBytes / 8
	}
	if opts.SegmentBytes < minSegmentBytes {
		opts.SegmentBytes = minSegmentBytes
	}
	if opts.SegmentBytes > opts.MaxBytes/2 {
		opts.SegmentBytes = opts.MaxBytes / 2
	}
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
	s := &Spool{dir: dir, opts: opts, log: opts.Logger, cond: make(chan struct{}), acked: map[uint64]struct{}{}}
	if err := s.recover(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Spool) segPath(first uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%016x%s", first, segmentExtension))
}

// recover scans the segments, truncates a torn tail and loads the low-water
// mark.
func (s *Spool) recover() error {
	if b, err := os.ReadFile(filepath.Join(s.dir, ackedFile)); err == nil {
		v, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if perr != nil {
			// The file is written atomically, so this is outside damage;
			// re-delivering everything is the safe reading of it.
			s.log.Warn("spool: unreadable ack mark, delivering everything again", "file", ackedFile, "err", perr)
		} else {
			s.lwm = v
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: read ack mark: %w", err)
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
		if err != nil {
			continue
		}
		firsts = append(firsts, v)
	}
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	next := uint64(1)
	for i, first := range firsts {
		seg := &segment{first: first, path: s.segPath(first)}
		last, size, lost, err := scanSegment(seg.path, first)
		if err != nil {
			return err
		}
		seg.last, seg.size = last, size
		if lost > 0 {
			s.stats.CorruptBytes += lost
			s.log.Warn("spool: truncated a torn or corrupt segment tail", "segment", filepath.Base(seg.path), "bytes_lost", lost)
		}
		if seg.last < seg.first && i != len(firsts)-1 {
			_ = os.Remove(seg.path)
			continue
		}
		s.segs = append(s.segs, seg)
		if seg.last+1 > next {
			next = seg.last + 1
		}
	}
	if len(s.segs) == 0 && s.lwm > next {
		// Everything was acked and removed: continue numbering after it.
		next = s.lwm
	}
	s.lwm = min(max(s.lwm, 1), next)
	s.nextSeq = next
	s.savedLWM = s.lwm
	s.cursor = s.lwm
	for _, seg := range s.segs {
		s.stats.Bytes += seg.size
		if seg.last >= s.lwm {
			s.stats.Depth += int(seg.last - max(seg.first, s.lwm) + 1)
		}
	}
	s.advanceLWMLocked()
	if err := s.dropAckedSegmentsLocked(); err != nil {
		return err
	}
	return s.openActiveLocked()
}

// scanSegment validates every record and truncates the file after the last
// good one. It returns the last good seq (first-1 if none), the good size,
// and how many bytes it cut.
func scanSegment(path string, first uint64) (last uint64, size int64, cut int64, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("spool: open segment: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("spool: stat segment: %w", err)
	}
	r := bufio.NewReader(f)
	last = first - 1
	var off int64
	for {
		seq, _, n, rerr := readRecord(r)
		if rerr != nil || seq != last+1 {
			break
		}
		last = seq
		off += n
	}
	if off < fi.Size() {
		if err := f.Truncate(off); err != nil {
			return 0, 0, 0, fmt.Errorf("spool: truncate torn tail of %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			return 0, 0, 0, fmt.Errorf("spool: sync %s: %w", path, err)
		}
	}
	return last, off, fi.Size() - off, nil
}

// readRecord reads one record; io.EOF means a clean end, any other error a
// torn or corrupt record.
func readRecord(r *bufio.Reader) (seq uint64, payload []byte, n int64, err error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, nil, 0, errTorn
		}
		return 0, nil, 0, err
	}
	length := binary.LittleEndian.Uint32(h[0:4])
	sum := binary.LittleEndian.Uint32(h[4:8])
	seq = binary.LittleEndian.Uint64(h[8:16])
	if length > MaxRecordBytes {
		return 0, nil, 0, errTorn
	}
	payload = make([]byte, length)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, 0, errTorn
	}
	c := crc32.Update(0, crcTable, h[8:16])
	c = crc32.Update(c, crcTable, payload)
	if c != sum {
		return 0, nil, 0, errTorn
	}
	return seq, payload, headerLen + int64(length), nil
}

var errTorn = errors.New("spool: torn or corrupt record")

func (s *Spool) openActiveLocked() error {
	var seg *segment
	if n := len(s.segs); n > 0 && s.segs[n-1].size < s.opts.SegmentBytes {
		seg = s.segs[n-1]
	} else {
		seg = &segment{first: s.nextSeq, last: s.nextSeq - 1, path: s.segPath(s.nextSeq)}
		s.segs = append(s.segs, seg)
	}
	f, err := os.OpenFile(seg.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: open segment for append: %w", err)
	}
	if err := atomicfile.SyncDir(s.dir); err != nil {
		f.Close()
		return fmt.Errorf("spool: %w", err)
	}
	s.active = f
	s.w = bufio.NewWriterSize(f, 64<<10)
	return nil
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
	for _, p := range payloads {
		if len(p) > MaxRecordBytes {
			return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(p), MaxRecordBytes)
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	seqs := make([]uint64, 0, len(payloads))
	for _, p := range payloads {
		seq, err := s.appendLocked(p)
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
		seqs = append(seqs, seq)
	}
	if err := s.w.Flush(); err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("spool: write: %w", err)
	}
	mark := s.written
	s.signalLocked()
	s.mu.Unlock()
	if s.opts.Sync == SyncAlways {
		if err := s.syncTo(mark); err != nil {
			return nil, err
		}
	}
	return seqs, nil
}

func (s *Spool) appendLocked(p []byte) (uint64, error) {
	seg := s.segs[len(s.segs)-1]
	recLen := int64(headerLen + len(p))
	if seg.size > 0 && seg.size+recLen > s.opts.SegmentBytes {
		if err := s.rollLocked(); err != nil {
			return 0, err
		}
		seg = s.segs[len(s.segs)-1]
	}
	for s.stats.Bytes+recLen > s.opts.MaxBytes && len(s.segs) > 1 {
		s.dropOldestLocked()
	}
	seq := s.nextSeq
	var h [headerLen]byte
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(p)))
	binary.LittleEndian.PutUint64(h[8:16], seq)
	c := crc32.Update(0, crcTable, h[8:16])
	binary.LittleEndian.PutUint32(h[4:8], crc32.Update(c, crcTable, p))
	if _, err := s.w.Write(h[:]); err != nil {
		return 0, fmt.Errorf("spool: write: %w", err)
	}
	if _, err := s.w.Write(p); err != nil {
		return 0, fmt.Errorf("spool: write: %w", err)
	}
	s.nextSeq++
	seg.last = seq
	seg.size += recLen
	s.written += recLen
	s.stats.Bytes += recLen
	s.stats.Appended++
	s.stats.Depth++
	return seq, nil
}

// rollLocked closes the active segment (synced, so later fsyncs need only
// look at the new one) and starts the next.
func (s *Spool) rollLocked() error {
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("spool: write: %w", err)
	}
	if s.opts.Sync == SyncAlways {
		if err := s.active.Sync(); err != nil {
			return fmt.Errorf("spool: fsync: %w", err)
		}
	}
	if err := s.active.Close(); err != nil {
		return fmt.Errorf("spool: close segment: %w", err)
	}
	seg := &segment{first: s.nextSeq, last: s.nextSeq - 1, path: s.segPath(s.nextSeq)}
	s.segs = append(s.segs, seg)
	f, err := os.OpenFile(seg.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: create segment: %w", err)
	}
	s.active = f
	s.w.Reset(f)
	if err := atomicfile.SyncDir(s.dir); err != nil {
		return fmt.Errorf("spool: %w", err)
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
		lost++
	}
	s.segs = s.segs[1:]
	s.stats.Bytes -= seg.size
	s.stats.Dropped += lost
	s.stats.Depth -= int(lost)
	if s.lwm <= seg.last {
		s.lwm = seg.last + 1
	}
	if s.cursor < s.lwm {
		s.cursor = s.lwm
	}
	if s.reader != nil && s.reader.seg == seg {
		s.closeReaderLocked()
	}
	if err := os.Remove(seg.path); err != nil {
		s.log.Error("spool: remove dropped segment", "segment", seg.path, "err", err)
	}
	s.log.Warn("spool: full, dropped oldest messages", "dropped", lost, "max_bytes", s.opts.MaxBytes)
}

// syncTo makes every byte appended up to mark durable. Callers that arrive
// while an fsync is running wait for it and usually find their data covered
// by it or by the next one: group commit.
func (s *Spool) syncTo(mark int64) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.synced >= mark {
		return nil
	}
	s.mu.Lock()
	f, target := s.active, s.written
	s.mu.Unlock()
	if f == nil {
		return ErrClosed
	}
	if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("spool: fsync: %w", err)
	}
	s.synced = target
	return nil
}

func (s *Spool) signalLocked() {
	close(s.cond)
	s.cond = make(chan struct{})
}

// Next blocks until at least one undelivered record exists (or ctx ends) and
// returns up to max of them in order, advancing the delivery cursor. They
// stay in the spool until acked.
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
		if s.cursor < s.nextSeq {
			recs, err := s.readLocked(maxRecords)
			s.mu.Unlock()
			if err != nil || len(recs) > 0 {
				return recs, err
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

func (s *Spool) readLocked(maxRecords int) ([]Record, error) {
	var out []Record
	for len(out) < maxRecords && s.cursor < s.nextSeq {
		if _, done := s.acked[s.cursor]; done {
			s.cursor++
			continue
		}
		if s.reader == nil || s.reader.next != s.cursor || s.reader.next > s.reader.seg.last {
			if err := s.openReaderLocked(s.cursor); err != nil {
				return nil, err
			}
			if s.cursor >= s.nextSeq {
				break
			}
		}
		seq, payload, err := s.reader.read()
		if err != nil {
			return nil, fmt.Errorf("spool: read seq %d: %w", s.cursor, err)
		}
		if seq != s.cursor {
			return nil, fmt.Errorf("spool: read seq %d, want %d: spool damaged", seq, s.cursor)
		}
		s.cursor++
		out = append(out, Record{Seq: seq, Payload: payload})
	}
	return out, nil
}

// segReader reads a segment sequentially. seg is shared with the writer, so
// seg.last grows as records are appended to the active segment.
type segReader struct {
	f    *os.File
	r    *bufio.Reader
	seg  *segment
	next uint64
}

func (sr *segReader) read() (uint64, []byte, error) {
	if sr.next > sr.seg.last {
		return 0, nil, io.EOF
	}
	seq, p, _, err := readRecord(sr.r)
	if err != nil {
		return 0, nil, err
	}
	sr.next = seq + 1
	return seq, p, nil
}

// openReaderLocked positions a reader at seq, or at the first record after
// it when seq fell into a gap that corruption left between segments.
func (s *Spool) openReaderLocked(seq uint64) error {
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("spool: write: %w", err)
	}
	i := sort.Search(len(s.segs), func(i int) bool { return s.segs[i].last >= seq })
	if i == len(s.segs) {
		return fmt.Errorf("spool: seq %d is in no segment: spool damaged", seq)
	}
	seg := s.segs[i]
	if seg.first > seq {
		s.cursor = seg.first
		seq = seg.first
	}
	if s.reader != nil && s.reader.seg == seg && s.reader.next == seq {
		return nil // the active segment grew; keep reading where we are
	}
	s.closeReaderLocked()
	f, err := os.Open(seg.path)
	if err != nil {
		return fmt.Errorf("spool: open segment for reading: %w", err)
	}
	sr := &segReader{f: f, r: bufio.NewReaderSize(f, 64<<10), seg: seg, next: seg.first}
	for sr.next < seq {
		if _, _, err := sr.read(); err != nil {
			f.Close()
			return fmt.Errorf("spool: seek to seq %d: %w", seq, err)
		}
	}
	s.reader = sr
	return nil
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
// them again.
func (s *Spool) Ack(seqs ...uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	for _, seq := range seqs {
		if seq < s.lwm || seq >= s.nextSeq {
			continue
		}
		if _, dup := s.acked[seq]; dup {
			continue
		}
		s.acked[seq] = struct{}{}
		s.stats.Acked++
		s.stats.Depth--
	}
	s.advanceLWMLocked()
	if err := s.dropAckedSegmentsLocked(); err != nil {
		return err
	}
	if time.Since(s.lastSave) >= s.opts.CheckpointEvery {
		return s.saveLWMLocked()
	}
	return nil
}

// advanceLWMLocked moves the low-water mark over acked records and over
// gaps between segments (records lost to corruption at open).
func (s *Spool) advanceLWMLocked() {
	for s.lwm < s.nextSeq {
		if _, ok := s.acked[s.lwm]; ok {
			delete(s.acked, s.lwm)
			s.lwm++
			continue
		}
		i := sort.Search(len(s.segs), func(i int) bool { return s.segs[i].last >= s.lwm })
		if i < len(s.segs) && s.segs[i].first > s.lwm {
			s.lwm = s.segs[i].first
			continue
		}
		return
	}
}

// dropAckedSegmentsLocked deletes fully acked segments (never the active
// one) and persists the low-water mark when it crossed a segment.
func (s *Spool) dropAckedSegmentsLocked() error {
	for len(s.segs) > 1 && s.segs[0].last < s.lwm {
		seg := s.segs[0]
		if s.reader != nil && s.reader.seg == seg {
			s.closeReaderLocked()
		}
		// Persist the mark first: a crash after the remove but before the
		// mark would otherwise make the next segment's start look like a gap.
		if err := s.saveLWMLocked(); err != nil {
			return err
		}
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("spool: remove acked segment: %w", err)
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
	return s.saveLWMLocked()
}

func (s *Spool) saveLWMLocked() error {
	if s.lwm == s.savedLWM {
		return nil
	}
	if err := atomicfile.Write(filepath.Join(s.dir, ackedFile), []byte(strconv.FormatUint(s.lwm, 10)+"\n"), 0o600); err != nil {
		return fmt.Errorf("spool: save ack mark: %w", err)
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

// Close flushes, fsyncs and persists the low-water mark.
func (s *Spool) Close() error {
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
	if err := s.active.Sync(); err != nil {
		errs = append(errs, err)
	}
	if err := s.active.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := s.saveLWMLocked(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("spool: close: %w", err)
	}
	return nil
}
