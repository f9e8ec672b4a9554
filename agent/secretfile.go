package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// MaxSecretFileBytes bounds a token or password file: a token is a few
// hundred bytes.
const MaxSecretFileBytes = 64 << 10

// ErrSecretFileMode is wrapped by ReadSecretFile when other users can read
// or write the file.
var ErrSecretFileMode = errors.New("secret file is accessible to other users")

// ReadSecretFile reads an enrollment token or password file. A file that
// other users can read or write is refused, like a world-readable key: a
// token is a credential for the whole fleet's CA. The group may read it,
// so a root-owned 0640 file of the service's group works.
func ReadSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o007 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run 'chmod o-rwx %s' (0600, or 0640 for the service's group)", ErrSecretFileMode, path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSecretFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxSecretFileBytes {
		return nil, fmt.Errorf("%s is over %d KiB: not a token or password file", path, MaxSecretFileBytes>>10)
	}
	return b, nil
}
