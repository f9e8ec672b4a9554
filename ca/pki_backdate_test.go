package ca

import (
	"testing"
	"time"
)

func TestLeafBackdate(t *testing.T) {
	for _, tc := range []struct{ ttl, want time.Duration }{
		{24 * time.Hour, Backdate},
		{20 * time.Minute, Backdate},
		{time.Minute, 15 * time.Second},
		{20 * time.Second, 5 * time.Second},
	} {
		if got := LeafBackdate(tc.ttl); got != tc.want {
			t.Errorf("LeafBackdate(%s) = %s, want %s", tc.ttl, got, tc.want)
		}
	}
}
