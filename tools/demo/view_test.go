package demo

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/agent"
)

func testSnapshot(renewals uint64, mqttMsgs, httpsMsgs uint64) Snapshot {
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.Local)
	steps := make([]Step, stepRunning+1)
	for i := range steps {
		steps[i] = Step{Text: "step", Done: true}
	}
	return Snapshot{
		Now: t0.Add(42 * time.Second), Started: t0, DeviceID: "demo-device-1", CertTTL: time.Minute, Steps: steps,
		Agent: &agent.Status{DeviceID: "demo-device-1", Serial: "0123456789abcdef0123",
			NotAfter: t0.Add(80 * time.Second), NextRenew: t0.Add(55 * time.Second),
			LastRenew: agent.RenewStatus{Counts: map[string]uint64{"ok": renewals}},
			Uplinks: map[string]agent.UplinkStatus{
				"mqtt":  {Connected: false, Acked: 30, SpoolDepth: 7},
				"https": {Connected: true, Acked: 37, SpoolDepth: 0},
			}},
		MQTT:  Backend{Up: false, Received: mqttMsgs, Unique: mqttMsgs, Serial: "0123456789abcdef0123"},
		HTTPS: Backend{Up: true, Received: httpsMsgs + 1, Unique: httpsMsgs, Serial: "fedcba"},
		Events: []Event{{At: t0.Add(time.Second), Source: "agent", Msg: "mqtt: connect failed", Repeat: 2,
			Attrs: map[string]string{"err": "refused", "uplink": "mqtt"}}},
		Keys: true,
	}
}

// The view shows the agent's own status next to what each backend counted.
func TestScreenAndLine(t *testing.T) {
	s := testSnapshot(2, 30, 37)
	screen := Screen(s)
	for _, want := range []string{
		"running 42s",
		"serial 0123456789ab…",
		"(in 38s)",
		"next renewal in 13s",
		"renewals done 2, failed 0",
		"mqtt    down          30      7 | stopped        30      30  0123456789ab…",
		"https   connected     37      0 | up             38      37  fedcba",
		"agent: mqtt: connect failed (x3) uplink=mqtt err=refused",
		"b stop/start the MQTT broker",
	} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q:\n%s", want, screen)
		}
	}
	line := Line(s)
	for _, want := range []string{"t=42s", "renewals=2", "next_renewal_in=13s", "mqtt=down acked=30 spool=7", "mqtt_server_received=30", "https=connected acked=37 spool=0", "https_server_received=38"} {
		if !strings.Contains(line, want) {
			t.Errorf("line lacks %q: %s", want, line)
		}
	}
	s.Agent, s.AgentErr = nil, "enrolling"
	if got := Screen(s); !strings.Contains(got, "waiting for the agent: enrolling") {
		t.Errorf("screen before the agent answers:\n%s", got)
	}
	if got := Line(s); !strings.Contains(got, "agent=waiting") {
		t.Errorf("line before the agent answers: %s", got)
	}
}

func TestVerify(t *testing.T) {
	cases := []struct {
		name   string
		snap   Snapshot
		failed []string
	}{
		{"all good", testSnapshot(1, 5, 5), nil},
		{"no renewal", testSnapshot(0, 5, 5), []string{"renewed"}},
		{"nothing at the broker", testSnapshot(2, 0, 5), []string{"mqtt broker acked"}},
		{"nothing at the sink", testSnapshot(2, 5, 0), []string{"https sink acked"}},
		{"never enrolled", func() Snapshot { s := testSnapshot(0, 0, 0); s.Agent = nil; return s }(),
			[]string{"enrolled", "renewed", "mqtt broker acked", "https sink acked"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var failed []string
			for _, ch := range Verify(c.snap) {
				if !ch.OK {
					failed = append(failed, ch.Name)
				}
			}
			if strings.Join(failed, ",") != strings.Join(c.failed, ",") {
				t.Fatalf("failed checks %v, want %v", failed, c.failed)
			}
		})
	}
}

// Retry loops' repeated messages move to the end and count instead of
// pushing the enrollment out of the recent events.
func TestEventsCollapseRepeats(t *testing.T) {
	var seen []string
	ev := newEvents(3, func(e Event) { seen = append(seen, e.Msg) })
	for _, m := range []string{"enrolled", "connect failed", "send failed", "connect failed", "send failed", "connect failed"} {
		ev.add(Event{Source: "agent", Msg: m, Level: slog.LevelInfo})
	}
	got := ev.Recent()
	if len(got) != 3 || got[0].Msg != "enrolled" || got[1].Msg != "send failed" || got[1].Repeat != 1 ||
		got[2].Msg != "connect failed" || got[2].Repeat != 2 {
		t.Fatalf("recent events %+v", got)
	}
	if len(seen) != 6 {
		t.Fatalf("listener saw %d events, want all 6", len(seen))
	}
}

func TestClip(t *testing.T) {
	cases := []struct {
		in    string
		width int
		want  string
	}{
		{"abcdef", 0, "abcdef"},
		{"abcdef", 4, "abc"},
		{"ab…cd", 4, "ab…"},
		{"abc", 10, "abc"},
	}
	for _, c := range cases {
		if got := clip(c.in, c.width); got != c.want {
			t.Errorf("clip(%q, %d) = %q, want %q", c.in, c.width, got, c.want)
		}
	}
}

// The CA's enrollment and its renewals are different events.
func TestEventsKeepOperationsApart(t *testing.T) {
	ev := newEvents(6, nil)
	for _, op := range []string{"simpleenroll", "simplereenroll", "simplereenroll"} {
		ev.add(Event{Source: "edgeca", Msg: "certificate issued", Attrs: map[string]string{"op": op}})
	}
	got := ev.Recent()
	if len(got) != 2 || got[0].Attrs["op"] != "simpleenroll" || got[0].Repeat != 0 || got[1].Repeat != 1 {
		t.Fatalf("recent events %+v", got)
	}
}
