package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/enroll/token"
)

// TestServerTime reads the time from a server whose certificate is valid
// for an hour either side of now, and refuses every answer that is not
// verified or not plausible.
func TestServerTime(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	var date string
	// written is the Date the handler sent for date "" (the server's own
	// clock, as net/http would send it): the sample must carry exactly it,
	// however long the exchange took on a loaded machine.
	var written atomic.Pointer[string]
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch date {
		case "-":
			w.Header()["Date"] = nil // net/http then sends none
		case "":
			now := time.Now().UTC().Format(http.TimeFormat)
			written.Store(&now)
			w.Header().Set("Date", now)
		default:
			w.Header().Set("Date", date)
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}}
	srv.StartTLS()
	defer srv.Close()
	epoch := time.Unix(0, 0)
	build := time.Now().Add(-30 * time.Minute)
	other := newPKI(t, "127.0.0.1")
	for _, c := range []struct {
		name    string
		date    string
		pin     token.Pin
		wantErr string
	}{
		{"now by the pin", "", token.PinOf(p.root), ""},
		{"now by the roots", "", token.Pin{}, ""},
		{"a pin of another CA", "", token.PinOf(other.root), "CA pin mismatch"},
		{"after the server certificate expired", time.Now().Add(3 * time.Hour).UTC().Format(http.TimeFormat), token.Pin{}, "not valid at the time it reports"},
		{"before the build", time.Now().Add(-45 * time.Minute).UTC().Format(http.TimeFormat), token.Pin{}, "refusing an implausible time"},
		{"no Date", "-", token.Pin{}, "no usable Date"},
		{"garbage Date", "yesterday", token.Pin{}, "no usable Date"},
	} {
		t.Run(c.name, func(t *testing.T) {
			date = c.date
			written.Store(nil)
			o := TimeOptions{Server: srv.URL, Pin: c.pin, NotBefore: build, Now: func() time.Time { return epoch }}
			if c.pin.IsZero() {
				o.Roots = p.pool()
			}
			s, err := ServerTime(context.Background(), o)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w := written.Load()
			if w == nil {
				t.Fatal("the handler wrote no Date")
			}
			if want, _ := http.ParseTime(*w); !s.Date.Equal(want) || !s.Sent.Equal(epoch) || !s.Received.Equal(epoch) {
				t.Fatalf("sample %+v, want Date %s (as sent) and Sent, Received at the injected clock %v", s, *w, epoch)
			}
		})
	}
	// Roots that did not issue the server's certificate: the handshake
	// fails whatever the time.
	_, err := ServerTime(context.Background(), TimeOptions{Server: srv.URL, Roots: other.pool()})
	if err == nil || !strings.Contains(err.Error(), "not signed by a trusted CA") {
		t.Fatalf("foreign roots: %v", err)
	}
}

// TestServerTimeLeafOnly: a device whose clock says 1970 reads the time
// from a server that presents only its own certificate: by the pin,
// through /cacerts (RFC 7030 §4.1.1), or by its trust anchors with the CA
// bundle as intermediates.
func TestServerTimeLeafOnly(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	other := newPKI(t, "127.0.0.1")
	leaf, err := x509.ParseCertificate(p.server.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat))
		der, _ := est.EncodeCertsOnly([]*x509.Certificate{p.inter, p.root})
		w.Header().Set("Content-Type", est.MediaPKCS7)
		w.Write(est.EncodeBase64(der))
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw}, PrivateKey: p.server.PrivateKey}}}
	srv.StartTLS()
	defer srv.Close()
	epoch := time.Unix(0, 0)
	for _, c := range []struct {
		name    string
		o       TimeOptions
		wantErr string
	}{
		{"by the pin of the root", TimeOptions{Pin: token.PinOf(p.root)}, ""},
		{"by the roots and the CA bundle", TimeOptions{Roots: p.pool(), Intermediates: []*x509.Certificate{p.inter, p.root}}, ""},
		{"by the roots alone, through /cacerts", TimeOptions{Roots: p.pool()}, ""},
		{"by roots of another CA", TimeOptions{Roots: other.pool()}, "not signed by a trusted CA"},
		{"by a pin of another CA", TimeOptions{Pin: token.PinOf(other.root)}, "CA pin mismatch"},
		{"by the roots and a look-alike bundle, through /cacerts", TimeOptions{Roots: p.pool(), Intermediates: []*x509.Certificate{other.inter}}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := c.o
			o.Server, o.Now, o.NotBefore = srv.URL, func() time.Time { return epoch }, time.Now().Add(-30*time.Minute)
			before := time.Now().Truncate(time.Second) // Date has a resolution of a second
			s, err := ServerTime(context.Background(), o)
			after := time.Now()
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Date.Before(before) || s.Date.After(after) {
				t.Fatalf("server time %v, want the server's Date, between %v and %v", s.Date, before, after)
			}
		})
	}
}
