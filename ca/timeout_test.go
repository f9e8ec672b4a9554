package ca

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/enroll/est"
)

func TestClientTimeoutDecision(t *testing.T) {
	refusal := &Error{Status: http.StatusUnauthorized, Code: est.CodeTokenInvalid}
	tests := []struct {
		name   string
		ctxErr error
		err    error
		want   bool
	}{
		{"no error", nil, nil, false},
		{"body read deadline", nil, fmt.Errorf("reading the request body: %w", os.ErrDeadlineExceeded), true},
		{"body cut short", nil, fmt.Errorf("reading the request body: %w", io.ErrUnexpectedEOF), true},
		{"client gone, store call cancelled", context.Canceled, fmt.Errorf("issue: %w", context.Canceled), true},
		{"client gone while waiting for a worker", context.Canceled, &Error{Status: http.StatusServiceUnavailable, Code: est.CodeUnavailable}, true},
		{"client gone after a refusal: the refusal stands", context.Canceled, refusal, false},
		{"refusal, client still there", nil, refusal, false},
		{"store down, client still there", nil, fmt.Errorf("issue: %w", store.ErrUnavailable), false},
		{"internal error, client still there", nil, errors.New("sign: boom"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := clientTimeout(tt.ctxErr, tt.err)
			if (e != nil) != tt.want {
				t.Fatalf("clientTimeout = %v, want client timeout %v", e, tt.want)
			}
			if e != nil && (e.Status != http.StatusRequestTimeout || e.Code != CodeClientTimeout) {
				t.Fatalf("got %d %s, want 408 %s", e.Status, e.Code, CodeClientTimeout)
			}
		})
	}
}

// TestClientGoneIsAuditedAsTimeout: a client that closes its connection in
// the middle of an enrollment body is audited as client_timeout, not as
// an internal error.
func TestClientGoneIsAuditedAsTimeout(t *testing.T) {
	s := newTestServer(t, Options{})
	before := s.auditLen(t)
	c, err := tls.Dial("tcp", strings.TrimPrefix(s.url, "https://"), &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: 1000\r\nAuthorization: Basic %s\r\n\r\nMIIB",
		est.Path("", est.OpSimpleEnroll), est.MediaPKCS10, "dDpz")
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for s.auditLen(t) == before {
		if time.Now().After(deadline) {
			t.Fatal("no audit record of the abandoned request")
		}
		time.Sleep(10 * time.Millisecond)
	}
	rec := s.lastAudit(t)
	if rec.Code != string(CodeClientTimeout) || rec.Result == store.ResultError {
		t.Fatalf("audited as %s %s (%s), want %s, not an error", rec.Result, rec.Code, rec.Reason, CodeClientTimeout)
	}
}
