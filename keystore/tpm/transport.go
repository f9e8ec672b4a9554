package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

const (
	// commandTimeout bounds one TPM command over TCP. RSA key generation on
	// a slow discrete TPM can take tens of seconds, so this is generous; it
	// exists so that a wedged simulator fails a command instead of hanging.
	commandTimeout = 2 * time.Minute
	// maxResponse bounds a response: TPM responses are at most a few KiB.
	maxResponse = 64 << 10
)

// openDevice opens a TPM character device, through the kernel's resource
// manager by default, which flushes whatever this process leaves loaded.
func openDevice(path string) (transport.TPMCloser, env, error) {
	e := env{device: path}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, e, classify(opOpen, "open "+path, err, e)
	}
	e.group = ownerGroup(fi)
	t, err := linuxtpm.Open(path)
	if err != nil {
		return nil, e, classify(opOpen, "open "+path, err, e)
	}
	return t, e, nil
}

// ownerGroup names the group owning the device, for the permission hint.
func ownerGroup(fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	gid := strconv.FormatUint(uint64(st.Gid), 10)
	if g, err := user.LookupGroupId(gid); err == nil {
		return g.Name
	}
	return gid
}

// dialSimulator connects to a TPM simulator (swtpm) that speaks raw TPM 2.0
// commands over TCP.
func dialSimulator(addr string) (transport.TPMCloser, env, error) {
	e := env{address: addr}
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, e, classify(opOpen, "connect to TPM simulator at "+addr, err, e)
	}
	return &streamTPM{conn: c}, e, nil
}

// streamTPM sends TPM commands over a byte stream. go-tpm's generic
// ReadWriteCloser transport assumes one Read returns a whole response, which
// holds for a character device but not for TCP; this reads the response
// header and then exactly the size it announces.
type streamTPM struct {
	mu   sync.Mutex
	conn net.Conn
}

// Warning codes after which the TPM asks to send the command again
// (TPM 2.0 Part 2, 6.6.3). The device transport retries TPM_RC_RETRY the
// same way inside go-tpm.
const (
	rcYielded = 0x908
	rcTesting = 0x90A
	rcRetry   = 0x922
)

// maxRetries bounds resending a command the TPM asked to retry.
const maxRetries = 8

func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 0; ; attempt++ {
		rsp, err := s.roundTrip(cmd)
		if err != nil {
			return nil, err
		}
		switch binary.BigEndian.Uint32(rsp[6:10]) {
		case rcRetry, rcYielded, rcTesting:
			if attempt < maxRetries {
				// Capped exponential backoff: 1, 2, 4 ... 128 ms.
				t := time.NewTimer(time.Millisecond << attempt)
				<-t.C
				continue
			}
		}
		return rsp, nil
	}
}

func (s *streamTPM) roundTrip(cmd []byte) ([]byte, error) {
	if err := s.conn.SetDeadline(time.Now().Add(commandTimeout)); err != nil {
		return nil, err
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("send TPM command: %w", err)
	}
	// Header: tag (2), size (4), response code (4).
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.conn, hdr); err != nil {
		return nil, fmt.Errorf("read TPM response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > maxResponse {
		return nil, errors.New("TPM response has an invalid size: the peer is not a TPM or the stream is out of sync")
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.conn, rsp[10:]); err != nil {
		return nil, fmt.Errorf("read TPM response: %w", err)
	}
	return rsp, nil
}

func (s *streamTPM) Close() error { return s.conn.Close() }
