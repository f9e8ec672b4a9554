package demo

import (
	"fmt"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/agent"
)

// Step is one enrollment step and whether it happened.
type Step struct {
	Text   string
	Detail string
	Done   bool
}

// Snapshot is everything the view shows at one moment. The agent's part is
// its own status (GET /v1/status); the backends' part is what the broker
// and the sink counted on their side.
type Snapshot struct {
	Now      time.Time
	Started  time.Time
	Deadline time.Time // zero when the demo runs until stopped
	DeviceID string
	CertTTL  time.Duration
	Steps    []Step
	Agent    *agent.Status // nil until the agent's API answers
	AgentErr string        // why the last status request failed
	MQTT     Backend
	HTTPS    Backend
	Events   []Event
	Keys     bool   // single-key commands are read from the terminal
	Note     string // the answer to the last key pressed
	LogFile  string
}

// short abbreviates a certificate serial for the screen.
func short(serial string) string {
	if len(serial) > 12 {
		return serial[:12] + "…"
	}
	if serial == "" {
		return "-"
	}
	return serial
}

// dur formats a countdown in whole seconds.
func dur(d time.Duration) string {
	if d < 0 {
		return "now"
	}
	return d.Round(time.Second).String()
}

func (s Snapshot) renewals() (ok, failed uint64) {
	if s.Agent == nil {
		return 0, 0
	}
	return s.Agent.LastRenew.Counts["ok"], s.Agent.LastRenew.Counts["error"]
}

func state(connected bool) string {
	if connected {
		return "connected"
	}
	return "down"
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "stopped"
}

// Screen renders the full-screen view: one string of lines, no escape
// codes (the terminal writer adds them).
func Screen(s Snapshot) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	elapsed := s.Now.Sub(s.Started).Round(time.Second)
	head := fmt.Sprintf("edgeagent live demo · device %s · running %s", s.DeviceID, elapsed)
	if !s.Deadline.IsZero() {
		head += fmt.Sprintf(" · stops in %s", dur(s.Deadline.Sub(s.Now)))
	}
	line("%s", head)
	line("")
	line("Enrollment")
	for _, st := range s.Steps {
		mark := "[ ]"
		if st.Done {
			mark = "[x]"
		}
		line("  %s %-44s %s", mark, st.Text, st.Detail)
	}
	line("")
	line("Certificate (lifetime %s, renewed at about 2/3 of it)", s.CertTTL)
	if a := s.Agent; a != nil {
		ok, failed := s.renewals()
		line("  serial %-16s not after %s (in %s)", short(a.Serial), a.NotAfter.Local().Format("15:04:05"), dur(a.NotAfter.Sub(s.Now)))
		line("  next renewal in %-8s renewals done %d, failed %d", dur(a.NextRenew.Sub(s.Now)), ok, failed)
		if a.LastRenew.Error != "" {
			line("  last renewal error: %s", a.LastRenew.Error)
		}
	} else {
		line("  (waiting for the agent: %s)", orDash(s.AgentErr))
	}
	line("")
	line("Uplinks   agent view            | server side")
	line("          state      acked  spool | server   received  unique  client cert")
	for _, u := range []struct {
		name string
		be   Backend
	}{{"mqtt", s.MQTT}, {"https", s.HTTPS}} {
		st, acked, spool := "-", "-", "-"
		if s.Agent != nil {
			if us, ok := s.Agent.Uplinks[u.name]; ok {
				st, acked, spool = state(us.Connected), fmt.Sprint(us.Acked), fmt.Sprint(us.SpoolDepth)
			}
		}
		line("  %-6s  %-9s %6s %6s | %-7s %9d %7d  %s", u.name, st, acked, spool, upDown(u.be.Up), u.be.Received, u.be.Unique, short(u.be.Serial))
	}
	line("")
	line("Recent events")
	for _, e := range s.Events {
		line("  %s %s", e.At.Local().Format("15:04:05"), e.Text())
	}
	line("")
	if s.Keys {
		line("Try: b stop/start the MQTT broker (watch the mqtt spool grow, then drain)")
		line("     s stop/start the HTTPS sink   r renew now   q quit (or Ctrl-C)")
	} else {
		line("Stop with Ctrl-C.")
	}
	if s.Note != "" {
		line("%s", s.Note)
	}
	line("Full logs: %s", s.LogFile)
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Line renders the snapshot as one log line, for output that is not a
// terminal (CI logs).
func Line(s Snapshot) string {
	var b strings.Builder
	fmt.Fprintf(&b, "t=%s", s.Now.Sub(s.Started).Round(time.Second))
	if a := s.Agent; a != nil {
		ok, failed := s.renewals()
		fmt.Fprintf(&b, " serial=%s not_after=%s next_renewal_in=%s renewals=%d renewal_failures=%d",
			short(a.Serial), a.NotAfter.Local().Format("15:04:05"), dur(a.NextRenew.Sub(s.Now)), ok, failed)
	} else {
		fmt.Fprintf(&b, " agent=waiting")
	}
	for _, u := range []struct {
		name string
		be   Backend
	}{{"mqtt", s.MQTT}, {"https", s.HTTPS}} {
		if s.Agent != nil {
			if us, ok := s.Agent.Uplinks[u.name]; ok {
				fmt.Fprintf(&b, " %s=%s acked=%d spool=%d", u.name, state(us.Connected), us.Acked, us.SpoolDepth)
			}
		}
		fmt.Fprintf(&b, " %s_server_received=%d", u.name, u.be.Received)
	}
	return b.String()
}
