package spool

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncData makes f's data durable. fdatasync skips the inode timestamps;
// into a preallocated segment (no size change) it is a data-only flush,
// without the filesystem journal commit an fsync of a growing file costs.
func syncData(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}
