package collector

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSampleFixture(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := New(Options{Root: "testdata/root", Disks: []string{"/"}, Now: func() time.Time { return now }})
	s := c.Sample()
	if len(s.Errors) != 0 {
		t.Fatalf("errors: %v", s.Errors)
	}
	checks := []struct {
		name      string
		got, want float64
	}{
		{"mem total", float64(s.MemTotalBytes), 8167848 * 1024},
		{"mem avail", float64(s.MemAvailBytes), 4000000 * 1024},
		{"load1", s.Load1, 0.52},
		{"load15", s.Load15, 0.59},
		{"uptime", s.UptimeSeconds, 350735.47},
		{"temp", s.TempsCelsius["cpu-thermal"], 47.5},
		{"first cpu sample", s.CPUPercent, 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if len(s.Net) != 2 || s.Net[0].Name != "eth0" || s.Net[0].RxBytes != 1215645 || s.Net[0].TxBytes != 1782404 {
		t.Errorf("net = %+v", s.Net)
	}
	if len(s.Disks) != 1 || s.Disks[0].TotalBytes == 0 {
		t.Errorf("disks = %+v", s.Disks)
	}
	if !s.Time.Equal(now) {
		t.Errorf("time %v", s.Time)
	}
}

func TestCPUPercent(t *testing.T) {
	cases := []struct {
		name      string
		prev, cur cpuTimes
		want      float64
	}{
		{"first", cpuTimes{}, cpuTimes{50, 100}, 0},
		{"half busy", cpuTimes{50, 100}, cpuTimes{100, 200}, 50},
		{"idle", cpuTimes{50, 100}, cpuTimes{50, 200}, 0},
		{"counter reset", cpuTimes{50, 100}, cpuTimes{10, 20}, 0},
		{"no time passed", cpuTimes{50, 100}, cpuTimes{50, 100}, 0},
	}
	for _, c := range cases {
		if got := cpuPercent(c.prev, c.cur); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestMissingFilesAreReportedNotFatal(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "proc/loadavg"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := New(Options{Root: root}).Sample()
	if len(s.Errors) < 5 {
		t.Fatalf("want an error per unreadable source, got %v", s.Errors)
	}
}

func TestLiveSystem(t *testing.T) {
	c := New(Options{})
	c.Sample()
	s := c.Sample()
	if s.MemTotalBytes == 0 || s.UptimeSeconds == 0 || len(s.Net) == 0 {
		t.Fatalf("live sample incomplete: %+v", s)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	c := New(Options{Root: "testdata/root"})
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan Sample, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, 5*time.Millisecond, func(s Sample) error {
			select {
			case got <- s:
			default:
			}
			return nil
		})
	}()
	<-got
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := c.Run(context.Background(), 0, nil); err == nil {
		t.Fatal("zero interval accepted")
	}
}
