// Command bench is `make bench`: it runs each benchmark section in turn and
// prints a compact table per section. Sections are plain functions so that
// later ones (MQTT uplink, TPM signing) slot in next to the enrollment one.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"
)

// section is one benchmark: it prints its own table to w.
type section struct {
	name string
	run  func(ctx context.Context, w io.Writer) error
}

func main() {
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file (goroutines labelled side=client|server in the enrollment section)")
	only := flag.String("only", "", "run only the sections whose name contains this")
	memProfile := flag.String("memprofile", "", "write an allocation profile of the whole run to this file (go tool pprof -sample_index=alloc_space)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	sections := []section{
		{"edgeca enrollment", enrollSection},
		{"edgeca enrollment by store", storesSection},
		{"edgeca renewal storm", stormSection},
		{"TPM key vs file key", tpmSection},
		{"TPM-attested enrollment", attestSection},
	}
	fmt.Printf("edgeagent benchmarks: %s/%s, GOMAXPROCS=%d, %s\n", runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.Version())
	failed := false
	for _, s := range sections {
		if !strings.Contains(s.name, *only) {
			continue
		}
		fmt.Printf("\n== %s ==\n", s.name)
		start := time.Now()
		if err := s.run(ctx, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: %v\n", s.name, err)
			failed = true
			continue
		}
		fmt.Printf("(%s in %.1fs)\n", s.name, time.Since(start).Seconds())
	}
	if *memProfile != "" {
		f, err := os.Create(*memProfile)
		if err == nil {
			err = pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: memprofile:", err)
			failed = true
		}
	}
	if failed {
		stop()
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}
