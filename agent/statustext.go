package agent

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteStatus prints st for a person, with times relative to now.
func WriteStatus(w io.Writer, st Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rel := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		d := t.Sub(now).Round(time.Second)
		if d >= 0 {
			return fmt.Sprintf("%s (in %s)", t.UTC().Format(time.RFC3339), d)
		}
		return fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), -d)
	}
	last := "none yet"
	if st.LastRenew.Result != "" {
		last = st.LastRenew.Result + " at " + st.LastRenew.At.UTC().Format(time.RFC3339)
		if st.LastRenew.Error != "" {
			last += ": " + st.LastRenew.Error
		}
	}
	health := "ok"
	if !st.Healthy {
		health = "UNHEALTHY"
		if len(st.Problems) > 0 {
			health += ": " + strings.Join(st.Problems, "; ")
		}
	}
	fmt.Fprintf(tw, "health\t%s\n", health)
	fmt.Fprintf(tw, "device\t%s\n", st.DeviceID)
	ks := st.Keystore
	keys := make([]string, 0, len(st.KeystoreInfo))
	for k := range st.KeystoreInfo {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ks += fmt.Sprintf(", %s %s", k, st.KeystoreInfo[k])
	}
	fmt.Fprintf(tw, "keystore\t%s\n", ks)
	if st.Attest != "" {
		fmt.Fprintf(tw, "enrollment\tattested (%s)\n", st.Attest)
	}
	fmt.Fprintf(tw, "serial\t%s\n", st.Serial)
	fmt.Fprintf(tw, "not after\t%s\n", rel(st.NotAfter))
	if st.Phase != "" {
		phase := st.Phase
		if st.Expired != "" {
			phase += ": " + st.Expired
		}
		fmt.Fprintf(tw, "certificate\t%s\n", phase)
	}
	fmt.Fprintf(tw, "next renewal\t%s\n", rel(st.NextRenew))
	fmt.Fprintf(tw, "last renewal\t%s\n", last)
	renewals := fmt.Sprintf("ok %d, failed %d", st.LastRenew.Counts["ok"], st.LastRenew.Counts["error"])
	if n := st.LastRenew.Counts["rebootstrap"]; n > 0 {
		renewals += fmt.Sprintf(", re-enrolled after expiry %d", n)
	}
	if n := st.LastRenew.Counts["not_extended"]; n > 0 {
		renewals += fmt.Sprintf(", not extended by the CA %d", n)
	}
	fmt.Fprintf(tw, "renewals\t%s\n", renewals)
	skew := "correction " + st.ClockSkew
	if st.ClockMeasured != "" {
		skew += ", CA minus system clock " + st.ClockMeasured
	}
	fmt.Fprintf(tw, "clock skew\t%s\n", skew)
	if st.Clock != "" {
		fmt.Fprintf(tw, "clock\t%s\n", st.Clock)
	}
	names := make([]string, 0, len(st.Uplinks))
	for n := range st.Uplinks {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		fmt.Fprintf(tw, "uplinks\tnone configured\n")
	}
	for _, n := range names {
		u := st.Uplinks[n]
		state := "disconnected"
		if u.Connected {
			state = "connected"
		}
		if u.Dropping {
			state += " but THE BROKER DROPS THIS DEVICE'S MESSAGES (acks prove nothing)"
		}
		line := fmt.Sprintf("%s, %d acked, spool %d messages (%d bytes), %d dropped", state, u.Acked, u.SpoolDepth, u.SpoolBytes, u.SpoolDropped)
		if u.SpoolLost > 0 {
			line += fmt.Sprintf(", %d lost to disk damage", u.SpoolLost)
		}
		if u.SpoolRefused > 0 {
			line += fmt.Sprintf(", %d refused", u.SpoolRefused)
		}
		if u.SpoolError != "" {
			line += ", " + u.SpoolError
		}
		if u.LastError != "" {
			line += ", last error: " + strings.ReplaceAll(u.LastError, "\n", " ")
		}
		fmt.Fprintf(tw, "uplink %s\t%s\n", n, line)
	}
	return tw.Flush()
}
