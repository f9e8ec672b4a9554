package main

import (
	"os"
	"syscall"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		want       time.Duration
		ok         bool
	}{
		{"plain", "42 (edgeca) S 1 42 42 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 8 0 100 0 0", 1750 * time.Millisecond, true},
		{"spaces and parens in the name", "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 8 0 100 0 0", 100 * time.Millisecond, true},
		{"no name", "42 S 1", 0, false},
		{"cut short", "42 (edgeca) S 1 42", 0, false},
		{"not a number", "42 (edgeca) S 1 42 42 0 -1 4194560 100 0 0 0 x 25 0 0", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU(tc.line)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("parseStatCPU = %v, %v; want %v (ok %v)", got, err, tc.want, tc.ok)
			}
		})
	}
	// This process's own line parses, and burning CPU moves it.
	before, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for start := selfCPU(); selfCPU()-start < 50*time.Millisecond; {
	}
	after, err := procCPU(os.Getpid())
	if err != nil || after <= before {
		t.Fatalf("own CPU %v then %v (%v): want it to grow", before, after, err)
	}
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
