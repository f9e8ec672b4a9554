package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/edgeagent/edgeagent/internal/atomicfile"
)

// The ack mark (every seq below it is acked) lives in markFile, two 32-byte
// slots written alternately in place: [mark uint64][generation uint64]
// [crc32c of those 16 bytes uint32][zero padding]. The file is made once
// at its full size, so saving the mark never allocates disk space: it works
// on a full disk, where freeing acked segments (which must wait for the
// mark) is what gives space back. A torn write can only damage the slot
// being written; the other one still holds the previous mark.
//
// legacyMarkFile is the text mark of spools written before; it is read
// once on upgrade and removed after the first save.
const (
	markFile       = "ackmark"
	legacyMarkFile = "acked"
	markSlot       = 32
)

type markStore struct {
	f    *os.File
	gen  uint64
	sync bool
}

// openMark opens or creates the mark file. ok is false when no mark could
// be read (a new spool, or both slots damaged: damaged says which).
func openMark(dir string, sync bool) (ms *markStore, mark uint64, ok, damaged bool, err error) {
	path := filepath.Join(dir, markFile)
	if _, serr := os.Stat(path); errors.Is(serr, os.ErrNotExist) {
		write := atomicfile.Write
		if !sync {
			// A torn creation reads as no mark (deliver everything
			// again), which is safe; the fsyncs are for power loss.
			write = os.WriteFile
		}
		if err := write(path, make([]byte, 2*markSlot), 0o600); err != nil {
			return nil, 0, false, false, fmt.Errorf("spool: create ack mark: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, false, false, fmt.Errorf("spool: open ack mark: %w", err)
	}
	b := make([]byte, 2*markSlot)
	n, _ := f.ReadAt(b, 0)
	ms = &markStore{f: f, sync: sync}
	zero := true
	for i := 0; i < 2; i++ {
		if (i+1)*markSlot > n {
			continue
		}
		slot := b[i*markSlot : (i+1)*markSlot]
		for _, c := range slot {
			if c != 0 {
				zero = false
			}
		}
		v, g, good := decodeSlot(slot)
		if good && (!ok || g > ms.gen) {
			mark, ms.gen, ok = v, g, true
		}
	}
	return ms, mark, ok, !ok && !zero, nil
}

func decodeSlot(b []byte) (mark, gen uint64, ok bool) {
	if binary.LittleEndian.Uint32(b[16:20]) != crc32.Checksum(b[0:16], crcTable) {
		return 0, 0, false
	}
	gen = binary.LittleEndian.Uint64(b[8:16])
	return binary.LittleEndian.Uint64(b[0:8]), gen, gen != 0
}

func (ms *markStore) save(mark uint64) error {
	var slot [markSlot]byte
	gen := ms.gen + 1
	binary.LittleEndian.PutUint64(slot[0:8], mark)
	binary.LittleEndian.PutUint64(slot[8:16], gen)
	binary.LittleEndian.PutUint32(slot[16:20], crc32.Checksum(slot[0:16], crcTable))
	if _, err := ms.f.WriteAt(slot[:], int64(gen%2)*markSlot); err != nil {
		return fmt.Errorf("spool: save ack mark: %w", err)
	}
	if ms.sync {
		if err := ms.f.Sync(); err != nil {
			return fmt.Errorf("spool: fsync ack mark: %w", err)
		}
	}
	ms.gen = gen
	return nil
}

func (ms *markStore) close() error { return ms.f.Close() }

// readLegacyMark reads the text mark of an older spool; ok false when there
// is none or it is unreadable (bad says so).
func readLegacyMark(dir string) (mark uint64, ok, bad bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, legacyMarkFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, false, nil
	}
	if err != nil {
		return 0, false, false, fmt.Errorf("spool: read ack mark: %w", err)
	}
	v, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if perr != nil {
		return 0, false, true, nil
	}
	return v, true, false, nil
}
