package enroll

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestServerRetryAfter: a 503 or 429 answer carries its Retry-After (at
// most an hour) to the caller's retry loop; other failures carry none.
func TestServerRetryAfter(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	tests := []struct {
		name, retryAfter string
		status           int
		want             time.Duration
	}{
		{"shed", "7", http.StatusServiceUnavailable, 7 * time.Second},
		{"rate limited", "2", http.StatusTooManyRequests, 2 * time.Second},
		{"a day capped", "86400", http.StatusServiceUnavailable, time.Hour},
		{"no header", "", http.StatusServiceUnavailable, 0},
		{"garbage", "soon", http.StatusServiceUnavailable, 0},
		{"500 ignores it", "7", http.StatusInternalServerError, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := serveTLS(t, p, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				w.WriteHeader(tc.status)
			}))
			c, err := New(Options{Server: srv.URL, Roots: p.pool(), Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseIdleConnections()
			csr, _ := BuildCSR(mustKey(t), "dev-1")
			_, err = c.SimpleEnroll(context.Background(), csr, "u", "p")
			if err == nil {
				t.Fatal("no error")
			}
			if got := RetryAfter(err); got != tc.want {
				t.Errorf("RetryAfter = %s, want %s (err %v)", got, tc.want, err)
			}
		})
	}
}
