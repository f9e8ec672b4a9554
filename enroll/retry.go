package enroll

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ParseRetryAfter reads a Retry-After header: delay-seconds or an HTTP-date
// (RFC 9110 §10.2.3). A date in the past means retry now.
func ParseRetryAfter(v string, now time.Time) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, fmt.Errorf("no Retry-After header")
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, fmt.Errorf("Retry-After %q: want seconds or an HTTP date", v)
	}
	if d := t.Sub(now); d > 0 {
		return d, nil
	}
	return 0, nil
}

// minDeferralWait is the least a client waits after a 202, whatever the
// server said: a Retry-After of 0 or a date in the past must not turn the
// deferral loop into a busy loop against the CA.
const minDeferralWait = time.Second

// DeferralWait is how long to wait after a 202 whose Retry-After asked for
// retryAfter, with r in [0,1) from a random source. It never waits less
// than the server asked (nor less than a second) unless that is over
// maxWait, and adds up to a quarter more, within maxWait, so a fleet
// deferred at the same moment does not come back at the same moment. A
// request at or over maxWait waits between 7/8 of maxWait and maxWait,
// for the same reason.
func DeferralWait(retryAfter, maxWait time.Duration, r float64) time.Duration {
	base := max(retryAfter, min(minDeferralWait, maxWait))
	if base >= maxWait {
		return maxWait - time.Duration(r*float64(maxWait)/8)
	}
	return base + time.Duration(r*float64(min(base/4, maxWait-base)))
}
