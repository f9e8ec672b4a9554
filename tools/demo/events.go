package demo

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Event is one log record worth showing a person.
type Event struct {
	At     time.Time
	Source string // agent, edgeca, broker, sink
	Level  slog.Level
	Msg    string
	Attrs  map[string]string
	Repeat int // times the same message came again right after
}

// Text is the event on one line: message, then the attributes that say
// most (serial, error, ...), in a stable order.
func (e Event) Text() string {
	var b strings.Builder
	b.WriteString(e.Source)
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Repeat > 0 {
		fmt.Fprintf(&b, " (x%d)", e.Repeat+1)
	}
	for _, k := range []string{"op", "device", "serial", "not_after", "uplink", "code", "reason", "err", "retry_in", "retry_at"} {
		if v, ok := e.Attrs[k]; ok && v != "" {
			if k == "serial" {
				v = short(v)
			}
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	return b.String()
}

// events keeps the last few events for the view and passes every one to a
// listener (the demo's step tracker and, without a terminal, its log).
type events struct {
	mu     sync.Mutex
	recent []Event
	max    int
	notify func(Event)
}

func newEvents(max int, notify func(Event)) *events {
	return &events{max: max, notify: notify}
}

// add records ev. A message already among the recent ones (a reconnect
// loop, or two uplinks retrying in turn) moves to the end and counts, so
// it does not push out the rest.
func (e *events) add(ev Event) {
	e.mu.Lock()
	for i, old := range e.recent {
		if old.Source == ev.Source && old.Msg == ev.Msg && old.Attrs["op"] == ev.Attrs["op"] {
			ev.Repeat = old.Repeat + 1
			e.recent = append(e.recent[:i], e.recent[i+1:]...)
			break
		}
	}
	e.recent = append(e.recent, ev)
	if len(e.recent) > e.max {
		e.recent = e.recent[len(e.recent)-e.max:]
	}
	e.mu.Unlock()
	if e.notify != nil {
		e.notify(ev)
	}
}

// Recent returns a copy of the last events, oldest first.
func (e *events) Recent() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.recent...)
}

// teeHandler writes every record to the demo's log file and turns those at
// or above min into events.
type teeHandler struct {
	file   slog.Handler
	ev     *events
	source string
	min    slog.Level
	attrs  []slog.Attr
}

func (h *teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min || h.file.Enabled(ctx, l)
}

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if h.file.Enabled(ctx, r.Level) {
		err = h.file.Handle(ctx, r)
	}
	if r.Level < h.min || r.Message == "" {
		return err
	}
	ev := Event{At: r.Time, Source: h.source, Level: r.Level, Msg: r.Message, Attrs: map[string]string{}}
	add := func(a slog.Attr) bool {
		v := a.Value.Resolve()
		switch x := v.Any().(type) {
		case time.Time:
			ev.Attrs[a.Key] = x.Local().Format("15:04:05")
		case time.Duration:
			ev.Attrs[a.Key] = x.Round(100 * time.Millisecond).String()
		default:
			ev.Attrs[a.Key] = v.String()
		}
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	h.ev.add(ev)
	return err
}

func (h *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.file = h.file.WithAttrs(as)
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

// WithGroup is passed to the file; events stay flat (no component here
// logs in groups).
func (h *teeHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.file = h.file.WithGroup(name)
	return &c
}
