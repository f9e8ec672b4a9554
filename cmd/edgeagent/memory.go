package main

import (
	"runtime"
	"runtime/debug"
	"strconv"
)

// The agent's live heap is under a megabyte (spools are files, messages
// pass through), so at Go's default GOGC=100 its heap is sized by the
// runtime's 4 MB floor (4 MB x GOGC/100), not by what it holds: under a
// stream of telemetry the heap fills to that floor between collections and
// the scavenger keeps it resident. GOGC=50 halves the floor; each
// collection has little to mark, so the extra cycles cost little CPU (the
// MQTT bench prints agent_cpu_us/msg beside agent_rss_MB). GOGC in the
// environment still decides when set.
const defaultGCPercent = 50

// gcPercent is the GC percent the agent runs with: GOGC when set (Go's
// runtime already applied it, "off" included), otherwise defaultGCPercent.
func gcPercent(getenv func(string) string) (percent int, fromEnv bool) {
	if v := getenv("GOGC"); v != "" {
		if v == "off" {
			return -1, true
		}
		if n, err := strconv.Atoi(v); err == nil {
			return n, true
		}
		return 100, true // the runtime ignores a bad GOGC and keeps 100
	}
	return defaultGCPercent, false
}

// tuneMemory sets the agent's GC percent and turns heap profiling off:
// nothing in the agent reads a heap profile, and the profiler's bucket
// table (1.4 MB of address space, touched page by page as sampled stacks
// spread over it) would stay resident for nobody.
func tuneMemory(getenv func(string) string) {
	runtime.MemProfileRate = 0
	if p, fromEnv := gcPercent(getenv); !fromEnv {
		debug.SetGCPercent(p)
	}
}
