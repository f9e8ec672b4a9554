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
