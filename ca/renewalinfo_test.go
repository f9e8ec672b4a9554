package ca

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll"
	"github.com/edgeagent/edgeagent/enroll/est"
)

func TestRenewalWindow(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(24 * time.Hour)
	now := nb.Add(2 * time.Hour)
	req := nb.Add(time.Hour)
	cases := []struct {
		name       string
		requested  time.Time
		start, end time.Time
	}{
		{"normal: two thirds to three quarters", time.Time{}, nb.Add(16 * time.Hour), nb.Add(18 * time.Hour)},
		{"renew-now: from the request", req, req, now.Add(renewalInfoPoll)},
		{"renew-now requested ahead of the clock", now.Add(time.Minute), now.Add(time.Minute), now.Add(time.Minute + renewalInfoPoll)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := renewalWindow(nb, na, c.requested, now)
			if !w.Start.Equal(c.start) || !w.End.Equal(c.end) {
				t.Fatalf("window %v to %v, want %v to %v", w.Start, w.End, c.start, c.end)
			}
		})
	}
}

// renewal-info over real mTLS with the agent's EST client: the normal
// window, then a window that has started once the operator asked for a
// renewal, then the normal window of the new certificate after renewing.
func TestRenewalInfoCarriesRenewNow(t *testing.T) {
	s := newTestServer(t, Options{CertTTL: 24 * time.Hour})
	ctx := context.Background()
	cert, key := s.enrolled(t, "dev-ri")
	client := func(c *tls.Certificate) *enroll.Client {
		ec, err := enroll.New(enroll.Options{Server: s.url, Roots: s.roots, Time: s.clock.Now, Certificate: func() *tls.Certificate { return c }})
		if err != nil {
			t.Fatal(err)
		}
		return ec
	}
	ri, again, err := client(cert).RenewalInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if !ri.SuggestedWindow.Start.Equal(leaf.NotBefore.Add(life*2/3)) || again != renewalInfoPoll {
		t.Fatalf("normal answer %+v, again %v", ri, again)
	}
	at := s.clock.Now().Truncate(time.Second)
	if n, err := s.ca.Fleet().RequestRenewal(ctx, []string{"dev-ri"}, at); err != nil || n != 1 {
		t.Fatalf("RequestRenewal = %d, %v", n, err)
	}
	ri, _, err = client(cert).RenewalInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !ri.SuggestedWindow.Start.Equal(at) {
		t.Fatalf("after renew-now: window starts %v, want %v", ri.SuggestedWindow.Start, at)
	}
	s.clock.Advance(time.Second)
	renewed := s.client(cert).reenroll(t, csrFor(t, key, "dev-ri", DeviceURIPrefix+"dev-ri")).certs(t)
	ri, _, err = client(tlsCert(renewed, key)).RenewalInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !ri.SuggestedWindow.Start.After(s.clock.Now()) {
		t.Fatalf("after the renewal the window still starts at %v", ri.SuggestedWindow.Start)
	}
	// Without a client certificate: refused.
	_, _, err = client(nil).RenewalInfo(ctx)
	var se *enroll.ServerError
	if !errors.As(err, &se) || se.Status != http.StatusUnauthorized || se.Code != est.CodeClientCertRequired {
		t.Fatalf("without a certificate: %v", err)
	}
}
