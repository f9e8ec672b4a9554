// Package backoff computes retry delays: exponential, capped, jittered.
// Every retry loop in the agent (renewal, uplinks) uses it, so none of them
// can hammer a server that is down or retry in lockstep across a fleet.
package backoff

import (
	"math"
	"time"
)

// Delay is the wait before retry number attempt (0 for the first retry):
// min doubled per attempt, capped at max, with "equal jitter" (half fixed,
// half random by r in [0,1)) so retries never bunch up yet never shrink to
// nothing.
func Delay(attempt int, min, max time.Duration, r float64) time.Duration {
	if min <= 0 {
		min = time.Second
	}
	if max < min {
		max = min
	}
	attempt = int(math.Max(0, float64(attempt)))
	d := max
	if attempt < 62 {
		if m := min << uint(attempt); m > 0 && m < max {
			d = m
		}
	}
	half := d / 2
	return half + time.Duration(r*float64(d-half))
}
