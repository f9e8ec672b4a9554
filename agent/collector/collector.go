// Package collector samples system metrics from /proc and /sys: CPU, memory,
// disk, load, uptime, temperatures and network counters. It reads files
// under a configurable root so tests can point it at a fixture tree.
package collector

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Sample is one reading. Fields that could not be read are left zero and
// named in Errors, so one missing file does not lose the rest.
type Sample struct {
	Time          time.Time          `json:"time"`
	CPUPercent    float64            `json:"cpu_percent"` // since the previous sample; 0 on the first
	MemTotalBytes uint64             `json:"mem_total_bytes"`
	MemAvailBytes uint64             `json:"mem_available_bytes"`
	Load1         float64            `json:"load1"`
	Load5         float64            `json:"load5"`
	Load15        float64            `json:"load15"`
	UptimeSeconds float64            `json:"uptime_seconds"`
	Disks         []Disk             `json:"disks,omitempty"`
	TempsCelsius  map[string]float64 `json:"temps_celsius,omitempty"`
	Net           []NetIf            `json:"net,omitempty"`
	Errors        []string           `json:"errors,omitempty"`
}

// Disk is the usage of one mounted file system.
type Disk struct {
	Path       string `json:"path"`
	TotalBytes uint64 `json:"total_bytes"`
	FreeBytes  uint64 `json:"free_bytes"`
}

// NetIf holds one interface's counters since boot.
type NetIf struct {
	Name    string `json:"name"`
	RxBytes uint64 `json:"rx_bytes"`
	TxBytes uint64 `json:"tx_bytes"`
	RxErrs  uint64 `json:"rx_errors"`
	TxErrs  uint64 `json:"tx_errors"`
}

// Collector keeps the previous CPU reading so it can report utilisation.
type Collector struct {
	root  string
	disks []string
	now   func() time.Time
	prev  cpuTimes
}

// Options configure a Collector.
type Options struct {
	Root  string           // "" means "/"
	Disks []string         // mount points to report; nil means ["/"]
	Now   func() time.Time // nil means time.Now
}

// New returns a Collector.
func New(o Options) *Collector {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Disks == nil {
		o.Disks = []string{"/"}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Collector{root: o.Root, disks: o.Disks, now: o.Now}
}

// Sample reads everything once.
func (c *Collector) Sample() Sample {
	s := Sample{Time: c.now().UTC()}
	fail := func(what string, err error) { s.Errors = append(s.Errors, what+": "+err.Error()) }
	if cur, err := c.readCPU(); err != nil {
		fail("cpu", err)
	} else {
		s.CPUPercent = cpuPercent(c.prev, cur)
		c.prev = cur
	}
	if err := c.readMem(&s); err != nil {
		fail("memory", err)
	}
	if err := c.readLoad(&s); err != nil {
		fail("load", err)
	}
	if err := c.readUptime(&s); err != nil {
		fail("uptime", err)
	}
	for _, d := range c.disks {
		var st syscall.Statfs_t
		if err := syscall.Statfs(filepath.Join(c.root, d), &st); err != nil {
			fail("disk "+d, err)
			continue
		}
		s.Disks = append(s.Disks, Disk{Path: d, TotalBytes: st.Blocks * uint64(st.Bsize), FreeBytes: st.Bavail * uint64(st.Bsize)})
	}
	s.TempsCelsius = c.readTemps()
	if nets, err := c.readNet(); err != nil {
		fail("net", err)
	} else {
		s.Net = nets
	}
	return s
}

// Run samples every interval and hands each sample to emit until ctx ends.
func (c *Collector) Run(ctx context.Context, interval time.Duration, emit func(Sample) error) error {
	if interval <= 0 {
		return fmt.Errorf("collector: interval must be positive, got %v", interval)
	}
	c.Sample() // prime the CPU counters so the first emitted sample has a rate
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := emit(c.Sample()); err != nil {
				return fmt.Errorf("collector: emit: %w", err)
			}
		}
	}
}

func (c *Collector) read(rel string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(c.root, rel))
	if err != nil {
		return nil, err
	}
	return b, nil
}

type cpuTimes struct{ busy, total uint64 }

func (c *Collector) readCPU() (cpuTimes, error) {
	b, err := c.read("proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return cpuTimes{}, errors.New("proc/stat: no aggregate cpu line")
	}
	var t cpuTimes
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("proc/stat: field %d: %w", i+1, err)
		}
		t.total += n
		// idle (3) and iowait (4) are not busy time.
		if i != 3 && i != 4 {
			t.busy += n
		}
	}
	return t, nil
}

// cpuPercent is the busy share between two readings, 0 when there is no
// earlier reading or the counters went backwards.
func cpuPercent(prev, cur cpuTimes) float64 {
	if prev.total == 0 || cur.total <= prev.total || cur.busy < prev.busy {
		return 0
	}
	return 100 * float64(cur.busy-prev.busy) / float64(cur.total-prev.total)
}

func (c *Collector) readMem(s *Sample) error {
	b, err := c.read("proc/meminfo")
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "MemTotal":
			s.MemTotalBytes = n * 1024
		case "MemAvailable":
			s.MemAvailBytes = n * 1024
		}
	}
	if s.MemTotalBytes == 0 {
		return errors.New("proc/meminfo: no MemTotal")
	}
	return nil
}

func (c *Collector) readLoad(s *Sample) error {
	b, err := c.read("proc/loadavg")
	if err != nil {
		return err
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return errors.New("proc/loadavg: too few fields")
	}
	vals := make([]float64, 3)
	for i := range vals {
		if vals[i], err = strconv.ParseFloat(f[i], 64); err != nil {
			return fmt.Errorf("proc/loadavg: %w", err)
		}
	}
	s.Load1, s.Load5, s.Load15 = vals[0], vals[1], vals[2]
	return nil
}

func (c *Collector) readUptime(s *Sample) error {
	b, err := c.read("proc/uptime")
	if err != nil {
		return err
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return errors.New("proc/uptime: empty")
	}
	if s.UptimeSeconds, err = strconv.ParseFloat(f[0], 64); err != nil {
		return fmt.Errorf("proc/uptime: %w", err)
	}
	return nil
}

// readTemps reads every thermal zone; boards without one report none.
func (c *Collector) readTemps() map[string]float64 {
	zones, _ := filepath.Glob(filepath.Join(c.root, "sys/class/thermal/thermal_zone*"))
	out := map[string]float64{}
	for _, z := range zones {
		raw, err := os.ReadFile(filepath.Join(z, "temp"))
		if err != nil {
			continue
		}
		milli, err := strconv.ParseFloat(strings.TrimSpace(string(raw)), 64)
		if err != nil {
			continue
		}
		name := filepath.Base(z)
		if t, err := os.ReadFile(filepath.Join(z, "type")); err == nil && len(bytes.TrimSpace(t)) > 0 {
			name = strings.TrimSpace(string(t))
		}
		out[name] = milli / 1000
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func (c *Collector) readNet() ([]NetIf, error) {
	b, err := c.read("proc/net/dev")
	if err != nil {
		return nil, err
	}
	var out []NetIf
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 16 {
			continue
		}
		n := make([]uint64, 16)
		bad := false
		for i := range n {
			if n[i], err = strconv.ParseUint(f[i], 10, 64); err != nil {
				bad = true
				break
			}
		}
		if bad {
			continue
		}
		out = append(out, NetIf{Name: strings.TrimSpace(name), RxBytes: n[0], RxErrs: n[2], TxBytes: n[8], TxErrs: n[10]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
