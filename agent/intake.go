package agent

import (
	"sort"

	"github.com/edgeagent/edgeagent/uplink/spool"
)

// spoolGroup makes the intake's writer over every uplink's spool, in name
// order: a message is stored for all uplinks or refused for all, so a
// refused batch is never delivered by one of them.
func spoolGroup(spools map[string]*spool.Spool) *spool.Group {
	names := make([]string, 0, len(spools))
	for n := range spools {
		names = append(names, n)
	}
	sort.Strings(names)
	list := make([]*spool.Spool, len(names))
	for i, n := range names {
		list[i] = spools[n]
	}
	return spool.NewGroup(names, list)
}

// spoolHealth is why /healthz fails for the spools: "" when every spool
// stores messages, else which cannot and since when.
func spoolHealth(ups map[string]UplinkStatus) string {
	names := make([]string, 0, len(ups))
	for n, u := range ups {
		if u.SpoolError != "" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var msg string
	for _, n := range names {
		msg += "spool " + n + ": " + ups[n].SpoolError + "\n"
	}
	return msg
}
