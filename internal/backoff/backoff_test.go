package backoff

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	min, max := 10*time.Second, 5*time.Minute
	cases := []struct {
		attempt int
		r       float64
		want    time.Duration
	}{
		{0, 0, 5 * time.Second},
		{0, 0.999999999, 10 * time.Second},
		{1, 0, 10 * time.Second},
		{3, 0.5, 60 * time.Second},
		{5, 0, 150 * time.Second}, // 320s capped to 300s, half fixed
		{100, 1, 5 * time.Minute},
		{-1, 0, 5 * time.Second},
	}
	for _, c := range cases {
		got := Delay(c.attempt, min, max, c.r)
		if got.Round(time.Millisecond) != c.want {
			t.Errorf("attempt %d r %v: %v, want %v", c.attempt, c.r, got, c.want)
		}
	}
	if got := Delay(0, 0, 0, 0); got != 500*time.Millisecond {
		t.Errorf("zero config: %v", got)
	}
}
