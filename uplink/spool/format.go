package spool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
)

// On-disk record formats.
//
// v2 (written since the damage-recovery change):
//
//	magic   uint32  recordMagic, a sync marker a reader looks for after damage
//	length  uint32  payload bytes
//	seq     uint64
//	pcrc    uint32  CRC32C of the payload
//	hcrc    uint32  CRC32C of the 20 header bytes before it
//	payload
//
// The header has its own CRC so that a reader resynchronising after damage
// can test a candidate position cheaply (24 bytes), without reading a
// payload whose length may be garbage; a false sync needs the 32-bit magic
// and a 32-bit CRC to match by chance. A valid header whose payload fails
// its CRC names exactly one lost record (its seq), and its length is
// trusted to find the next one.
//
// v1 (written before): [length uint32][crc32c(seq, payload) uint32][seq
// uint64][payload], no marker: after damage a v1 segment is read up to the
// damage only. v1 segments are read (an upgraded agent delivers the queue
// it inherited) but never appended to.
const (
	recordMagic = 0xED5B_0C02
	headerLen   = 24
	v1HeaderLen = 16
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// putHeader writes the v2 header for payload p into h.
func putHeader(h []byte, seq uint64, p []byte) {
	binary.LittleEndian.PutUint32(h[0:4], recordMagic)
	binary.LittleEndian.PutUint32(h[4:8], uint32(len(p)))
	binary.LittleEndian.PutUint64(h[8:16], seq)
	binary.LittleEndian.PutUint32(h[16:20], crc32.Checksum(p, crcTable))
	binary.LittleEndian.PutUint32(h[20:24], crc32.Checksum(h[0:20], crcTable))
}

// isV1 reports whether b starts with a valid v1 record numbered first: the
// format test for a segment (a v2 segment starts with the magic, whose
// bytes make a v1 length over MaxRecordBytes).
func isV1(b []byte, first uint64) bool {
	if len(b) < v1HeaderLen {
		return false
	}
	length := binary.LittleEndian.Uint32(b[0:4])
	if length > MaxRecordBytes || len(b) < v1HeaderLen+int(length) {
		return false
	}
	seq := binary.LittleEndian.Uint64(b[8:16])
	c := crc32.Update(0, crcTable, b[8:16])
	c = crc32.Update(c, crcTable, b[v1HeaderLen:v1HeaderLen+int(length)])
	return seq == first && c == binary.LittleEndian.Uint32(b[4:8])
}

// scanner reads the valid records of one segment in order, skipping
// damage. Recovery at open and delivery use the same scanner, so both
// agree on which records exist.
type scanner struct {
	r     *bufio.Reader
	v1    bool
	prev  uint64 // last seq yielded; records must come after it
	limit uint64 // seqs must be below it (the next segment's first)

	off     int64 // offset of the next unread byte
	end     int64 // offset after the last valid record
	skipped int64 // bytes passed over as damage before end
	damaged []uint64
	stopped bool // v1: damage ends the segment
	// The last damaged record: where it ends, and whether its payload
	// ends in a zero byte (as a write into a preallocated tail that a
	// crash cut short does).
	lastDamagedEnd     int64
	lastDamagedZeroEnd bool
}

func newScanner(r io.Reader, first, limit uint64, v1 bool) *scanner {
	return &scanner{r: bufio.NewReaderSize(r, 64<<10), v1: v1, prev: first - 1, limit: limit}
}

// next returns the next valid record, or io.EOF when no further complete
// record is in the file (yet). Damage never ends a v2 scan: the scanner
// moves on to the next position that holds a valid header.
func (sc *scanner) next() (uint64, []byte, error) {
	if sc.v1 {
		return sc.nextV1()
	}
	for !sc.stopped {
		h, err := sc.r.Peek(headerLen)
		if len(h) < headerLen {
			if err == nil {
				err = io.EOF
			}
			if errors.Is(err, io.EOF) {
				return 0, nil, io.EOF
			}
			return 0, nil, err
		}
		if h[0] == 0 {
			sc.skipZeros() // a preallocated tail, or zeroed damage
			continue
		}
		length := binary.LittleEndian.Uint32(h[4:8])
		seq := binary.LittleEndian.Uint64(h[8:16])
		if binary.LittleEndian.Uint32(h[0:4]) != recordMagic ||
			crc32.Checksum(h[0:20], crcTable) != binary.LittleEndian.Uint32(h[20:24]) ||
			length > MaxRecordBytes || seq <= sc.prev || seq >= sc.limit {
			sc.discard(1)
			continue
		}
		pcrc := binary.LittleEndian.Uint32(h[16:20])
		// The header is good: the record spans headerLen+length bytes.
		if buf, _ := sc.r.Peek(headerLen + int(length)); len(buf) == headerLen+int(length) {
			p := make([]byte, length)
			copy(p, buf[headerLen:])
			sc.discardRecord(headerLen + int64(length))
			if crc32.Checksum(p, crcTable) != pcrc {
				sc.damagedRecord(seq, p)
				sc.skipped += headerLen + int64(length)
				sc.prev = seq
				continue
			}
			sc.prev = seq
			sc.end = sc.off
			return seq, p, nil
		}
		// Larger than the buffer, or torn at the end of the file.
		if _, err := sc.r.Discard(headerLen); err != nil {
			return 0, nil, err
		}
		p := make([]byte, length)
		n, err := io.ReadFull(sc.r, p)
		sc.off += headerLen + int64(n)
		if err != nil {
			// A torn last record: nothing valid can follow in this file.
			sc.skipped += headerLen + int64(n)
			sc.stopped = true
			return 0, nil, io.EOF
		}
		sc.prev = seq
		if crc32.Checksum(p, crcTable) != pcrc {
			sc.damagedRecord(seq, p)
			sc.skipped += headerLen + int64(length)
			continue
		}
		sc.end = sc.off
		return seq, p, nil
	}
	return 0, nil, io.EOF
}

func (sc *scanner) damagedRecord(seq uint64, p []byte) {
	sc.damaged = append(sc.damaged, seq)
	sc.lastDamagedEnd = sc.off
	sc.lastDamagedZeroEnd = len(p) > 0 && p[len(p)-1] == 0
}

// skipZeros passes over a run of zero bytes (no record starts with one).
func (sc *scanner) skipZeros() {
	for {
		if _, err := sc.r.Peek(1); err != nil {
			return
		}
		buf, _ := sc.r.Peek(sc.r.Buffered())
		i := 0
		for i < len(buf) && buf[i] == 0 {
			i++
		}
		sc.discard(i)
		if i < len(buf) {
			return
		}
	}
}

func (sc *scanner) discard(n int) {
	d, _ := sc.r.Discard(n)
	sc.off += int64(d)
	sc.skipped += int64(d)
}

func (sc *scanner) discardRecord(n int64) {
	d, _ := sc.r.Discard(int(n))
	sc.off += int64(d)
}

func (sc *scanner) nextV1() (uint64, []byte, error) {
	if sc.stopped {
		return 0, nil, io.EOF
	}
	h, _ := sc.r.Peek(v1HeaderLen)
	if len(h) < v1HeaderLen {
		return 0, nil, io.EOF
	}
	length := binary.LittleEndian.Uint32(h[0:4])
	sum := binary.LittleEndian.Uint32(h[4:8])
	seq := binary.LittleEndian.Uint64(h[8:16])
	if length > MaxRecordBytes || seq != sc.prev+1 || seq >= sc.limit {
		sc.stopped = true
		return 0, nil, io.EOF
	}
	buf, _ := sc.r.Peek(v1HeaderLen + int(length))
	if len(buf) < v1HeaderLen+int(length) {
		if len(buf) == sc.r.Size() {
			// A v1 record over the buffer: read it the slow way.
			return sc.bigV1(length, sum, seq)
		}
		sc.stopped = true
		return 0, nil, io.EOF
	}
	c := crc32.Update(0, crcTable, buf[8:16])
	c = crc32.Update(c, crcTable, buf[v1HeaderLen:])
	if c != sum {
		sc.stopped = true
		return 0, nil, io.EOF
	}
	p := make([]byte, length)
	copy(p, buf[v1HeaderLen:])
	sc.discardRecord(v1HeaderLen + int64(length))
	sc.prev, sc.end = seq, sc.off
	return seq, p, nil
}

func (sc *scanner) bigV1(length, sum uint32, seq uint64) (uint64, []byte, error) {
	var h [v1HeaderLen]byte
	if _, err := io.ReadFull(sc.r, h[:]); err != nil {
		sc.stopped = true
		return 0, nil, io.EOF
	}
	p := make([]byte, length)
	if _, err := io.ReadFull(sc.r, p); err != nil {
		sc.stopped = true
		return 0, nil, io.EOF
	}
	c := crc32.Update(0, crcTable, h[8:16])
	if crc32.Update(c, crcTable, p) != sum {
		sc.stopped = true
		return 0, nil, io.EOF
	}
	sc.off += v1HeaderLen + int64(length)
	sc.prev, sc.end = seq, sc.off
	return seq, p, nil
}
