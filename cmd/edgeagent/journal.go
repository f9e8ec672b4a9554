package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Under systemd the agent's stderr is a stream into journald, which gives
// every line priority info unless the line starts with a sd-daemon(3)
// "<N>" prefix (SyslogLevelPrefix=yes, the default). Without the prefix
// `journalctl -p warning` would show none of the agent's warnings.

// stderrIsJournal reports whether f is the stream JOURNAL_STREAM
// ("device:inode", set by systemd) names: only then does journald read it,
// and a terminal or a pipe gets no prefixes.
func stderrIsJournal(f *os.File, journalStream string) bool {
	dev, ino, ok := strings.Cut(journalStream, ":")
	if !ok || f == nil {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return strconv.FormatUint(uint64(st.Dev), 10) == dev && strconv.FormatUint(st.Ino, 10) == ino
}

// syslogPriority maps a slog level to a syslog priority: debug 7, info 6,
// warn 4, error 3 (levels between round towards the more severe).
func syslogPriority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l > slog.LevelInfo:
		return 4
	case l > slog.LevelDebug:
		return 6
	default:
		return 7
	}
}

// journalHandler prefixes each record its inner handler formats with the
// record's syslog priority. The inner handler writes into buf; one mutex,
// shared with the handlers WithAttrs/WithGroup derive, keeps a record's
// prefix and line together.
type journalHandler struct {
	inner slog.Handler
	out   *journalOut
}

type journalOut struct {
	mu  sync.Mutex
	buf bytes.Buffer
	w   io.Writer
}

// newJournalHandler builds the inner handler with mk, writing through the
// priority prefixer to w.
func newJournalHandler(w io.Writer, mk func(io.Writer) slog.Handler) slog.Handler {
	out := &journalOut{w: w}
	return &journalHandler{inner: mk(&out.buf), out: out}
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.buf.Reset()
	h.out.buf.WriteString("<" + strconv.Itoa(syslogPriority(r.Level)) + ">")
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	_, err := h.out.w.Write(h.out.buf.Bytes())
	return err
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), out: h.out}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), out: h.out}
}
