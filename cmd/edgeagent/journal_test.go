package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

func TestSyslogPriority(t *testing.T) {
	for _, c := range []struct {
		l    slog.Level
		want int
	}{
		{slog.LevelDebug - 4, 7}, {slog.LevelDebug, 7}, {slog.LevelDebug + 1, 6}, {slog.LevelInfo, 6},
		{slog.LevelInfo + 1, 4}, {slog.LevelWarn, 4}, {slog.LevelError, 3}, {slog.LevelError + 4, 3},
	} {
		if got := syslogPriority(c.l); got != c.want {
			t.Errorf("syslogPriority(%v) = %d, want %d", c.l, got, c.want)
		}
	}
}

func TestJournalHandlerPrefixesEachLine(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(newJournalHandler(&out, func(w io.Writer) slog.Handler {
		return slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: dropTime})
	}))
	log.Info("one", "k", "v")
	log.With("c", "x").WithGroup("g").Warn("two", "k", "v")
	log.Error("three")
	log.Debug("four")
	want := "<6>level=INFO msg=one k=v\n<4>level=WARN msg=two c=x g.k=v\n<3>level=ERROR msg=three\n<7>level=DEBUG msg=four\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}

func dropTime(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

func TestStderrIsJournal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	dev, ino := strconv.FormatUint(uint64(st.Dev), 10), strconv.FormatUint(st.Ino, 10)
	for _, c := range []struct {
		env  string
		want bool
	}{
		{dev + ":" + ino, true},
		{dev + ":" + ino + "1", false},
		{"1" + dev + ":" + ino, false},
		{"", false},
		{"garbage", false},
	} {
		if got := stderrIsJournal(f, c.env); got != c.want {
			t.Errorf("JOURNAL_STREAM=%q: %v, want %v", c.env, got, c.want)
		}
	}
}
