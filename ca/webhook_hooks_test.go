package ca

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/webhook"
	"github.com/edgeagent/edgeagent/testkit/postgres"
)

var hookSecret = []byte("test-webhook-secret-0123456789")

// eventSink is a real receiver on 127.0.0.1:0: it refuses each event's
// first delivery, checks every signature, and keeps the events by id.
type eventSink struct {
	mu     sync.Mutex
	tries  map[string]int
	events map[string]Event
	bad    int
	url    string
}

func newEventSink(t *testing.T) *eventSink {
	s := &eventSink{tries: map[string]int{}, events: map[string]Event{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := webhook.Verify(hookSecret, r.Header.Get(webhook.HeaderSignature), body, time.Now(), 3*time.Hour); err != nil { // the CA clock is advanced past an expiry
			s.bad++
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		var ev Event
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.tries[ev.ID]++
		if s.tries[ev.ID] == 1 {
			http.Error(w, "try again", http.StatusBadGateway)
			return
		}
		s.events[ev.ID] = ev
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.url = "http://" + ln.Addr().String() + "/events"
	return s
}

// wait returns the first received event of type typ for device, polling
// with a deadline.
func (s *eventSink) wait(t *testing.T, typ, device string) Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		for _, ev := range s.events {
			if ev.Type == typ && ev.Device == device {
				s.mu.Unlock()
				return ev
			}
		}
		s.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s event for %s arrived", typ, device)
	return Event{}
}

func webhookServer(t *testing.T, sink *eventSink, extra func(*Options)) *testServer {
	o := Options{CertTTL: time.Hour, Fleet: FleetOptions{ExpiryCheck: 20 * time.Millisecond, Webhooks: &webhook.Config{
		URLs: []string{sink.url}, Secret: hookSecret, Poll: 20 * time.Millisecond, MinDelay: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond}}}
	if extra != nil {
		extra(&o)
	}
	return newTestServer(t, o)
}

// A device's life as webhooks tell it: enrolled (with its token's labels),
// renewed, revoked, renewal refused; another expired without renewal. Each
// event arrives signed despite its first delivery being refused.
func TestWebhookEventsOfADeviceLife(t *testing.T) {
	sink := newEventSink(t)
	s := webhookServer(t, sink, nil)
	ctx := context.Background()
	toks, _, err := s.ca.CreateTokens(ctx, TokenOptions{URL: s.url}, 2, map[string]string{"site": "hamburg"})
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	certs := s.client(nil).enroll(t, csrFor(t, key, "dev-w1"), toks[0]).certs(t)
	ev := sink.wait(t, webhook.TypeEnrolled, "dev-w1")
	if ev.Labels["site"] != "hamburg" || ev.Token != toks[0].ID || ev.Serial != SerialHex(certs[0].SerialNumber) || ev.NotAfter == nil {
		t.Fatalf("enrolled event %+v", ev)
	}
	if labels, _ := s.ca.Fleet().DeviceLabels(ctx, "dev-w1"); labels["site"] != "hamburg" {
		t.Fatalf("device labels %v", labels)
	}
	renewed := s.client(tlsCert(certs, key)).reenroll(t, csrFor(t, key, "dev-w1", DeviceURIPrefix+"dev-w1")).certs(t)
	if ev := sink.wait(t, webhook.TypeRenewed, "dev-w1"); ev.Serial != SerialHex(renewed[0].SerialNumber) || ev.Labels["site"] != "hamburg" {
		t.Fatalf("renewed event %+v", ev)
	}
	if _, err := s.ca.Revoke(ctx, "dev-w1"); err != nil {
		t.Fatal(err)
	}
	sink.wait(t, webhook.TypeRevoked, "dev-w1")
	if r := s.client(tlsCert(renewed, key)).reenroll(t, csrFor(t, key, "dev-w1", DeviceURIPrefix+"dev-w1")); r.status != http.StatusForbidden {
		t.Fatalf("renewal of a revoked device: %d %s", r.status, r.body)
	}
	if ev := sink.wait(t, webhook.TypeRenewalRefused, "dev-w1"); ev.Code != "device_revoked" {
		t.Fatalf("refused event %+v", ev)
	}

	key2 := newKey(t)
	c2 := s.client(nil).enroll(t, csrFor(t, key2, "dev-w2"), toks[1]).certs(t)
	s.clock.Advance(time.Until(c2[0].NotAfter) + time.Minute)
	if ev := sink.wait(t, webhook.TypeExpired, "dev-w2"); ev.Serial != SerialHex(c2[0].SerialNumber) {
		t.Fatalf("expired event %+v", ev)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.bad != 0 {
		t.Fatalf("%d deliveries with a bad signature", sink.bad)
	}
	for id := range sink.events {
		if n := sink.tries[id]; n < 2 {
			t.Errorf("event %s was accepted after %d tries, want a retry after the refusal", id, n)
		}
	}
}

// authHook is a real authorizing hook: it allows devices named in allow,
// denies the rest, and records what it was asked.
func authHook(t *testing.T, allow map[string]bool) (string, func() []AuthorizeRequest) {
	var mu sync.Mutex
	var asked []AuthorizeRequest
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var q AuthorizeRequest
		if err := json.NewDecoder(r.Body).Decode(&q); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		asked = append(asked, q)
		mu.Unlock()
		json.NewEncoder(w).Encode(AuthorizeAnswer{Allow: allow[q.Device], Reason: "inventory says so"})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/authorize", func() []AuthorizeRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]AuthorizeRequest(nil), asked...)
	}
}

// The hook decides; a denied device keeps its token unspent (the hook runs
// before Issue), and both decisions are audited.
func TestAuthorizingHook(t *testing.T) {
	url, asked := authHook(t, map[string]bool{"dev-ok": true})
	s := newTestServer(t, Options{Fleet: FleetOptions{Authorize: &AuthorizeOptions{URL: url, Timeout: 5 * time.Second}}})
	ctx := context.Background()
	toks, _, err := s.ca.CreateTokens(ctx, TokenOptions{URL: s.url, Uses: 2}, 1, map[string]string{"fleet": "north"})
	if err != nil {
		t.Fatal(err)
	}
	tok := toks[0]
	r := s.client(nil).enroll(t, csrFor(t, newKey(t), "dev-no"), tok)
	if r.status != http.StatusForbidden || errCode(r.body) != "device_not_allowed" {
		t.Fatalf("denied device: %d %s", r.status, r.body)
	}
	if st, _ := s.ca.st.Token(ctx, tok.ID); st.Uses != 0 {
		t.Fatalf("a denied enrollment spent a token use: %d", st.Uses)
	}
	s.client(nil).enroll(t, csrFor(t, newKey(t), "dev-ok"), tok).certs(t)
	q := asked()
	if len(q) != 2 || q[0].Device != "dev-no" || q[0].Token != tok.ID || q[0].Labels["fleet"] != "north" || q[0].Peer == "" {
		t.Fatalf("the hook was asked %+v", q)
	}
	recs, _ := s.ca.Audit(ctx, 0)
	var decisions []string
	for _, rec := range recs {
		if rec.Op == "authorize" {
			decisions = append(decisions, rec.DeviceID+" "+rec.Result+" "+rec.Reason)
		}
	}
	want := []string{"dev-ok ok authorizing hook allowed: inventory says so", "dev-no denied authorizing hook denied: inventory says so"}
	if len(decisions) != 2 || decisions[0] != want[0] || decisions[1] != want[1] {
		t.Fatalf("audited decisions %q, want %q", decisions, want)
	}
}

// A hook that does not answer gets the configured default.
func TestAuthorizingHookDefault(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/authorize"
	ln.Close() // nothing listens: every call fails at once
	for _, c := range []struct {
		name  string
		allow bool
		want  int
	}{{"deny", false, http.StatusForbidden}, {"allow", true, http.StatusOK}} {
		t.Run(c.name, func(t *testing.T) {
			s := newTestServer(t, Options{Fleet: FleetOptions{Authorize: &AuthorizeOptions{URL: dead, Timeout: 2 * time.Second, DefaultAllow: c.allow}}})
			tok := s.token(t, TokenOptions{})
			if r := s.client(nil).enroll(t, csrFor(t, newKey(t), "dev-d"), tok); r.status != c.want {
				t.Fatalf("status %d, want %d: %s", r.status, c.want, r.body)
			}
			recs, _ := s.ca.Audit(context.Background(), 0)
			found := false
			for _, rec := range recs {
				found = found || rec.Op == "authorize" && rec.Reason != "" && rec.DeviceID == "dev-d"
			}
			if !found {
				t.Fatal("the default decision was not audited")
			}
		})
	}
}

func TestAuthorizeDecision(t *testing.T) {
	cases := []struct {
		name     string
		ans      *AuthorizeAnswer
		err      error
		def      bool
		allow    bool
		whyStart string
	}{
		{"allowed", &AuthorizeAnswer{Allow: true}, nil, false, true, "authorizing hook allowed"},
		{"denied with reason", &AuthorizeAnswer{Reason: "unknown serial"}, nil, true, false, "authorizing hook denied: unknown serial"},
		{"failed, default deny", nil, io.ErrUnexpectedEOF, false, false, "authorizing hook failed (unexpected EOF): default deny"},
		{"failed, default allow", nil, io.ErrUnexpectedEOF, true, true, "authorizing hook failed (unexpected EOF): default allow"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			allow, why := authorizeDecision(c.ans, c.err, c.def)
			if allow != c.allow || why != c.whyStart {
				t.Fatalf("= %v %q, want %v %q", allow, why, c.allow, c.whyStart)
			}
		})
	}
}

// Two replicas on one PostgreSQL database, each with a dispatcher: the
// enrollments made through either arrive, each event once or more, none
// missing, all signed.
func TestWebhooksAcrossReplicas(t *testing.T) {
	pg := postgres.Start(t)
	sink := newEventSink(t)
	o := Options{Fleet: FleetOptions{Webhooks: &webhook.Config{URLs: []string{sink.url}, Secret: hookSecret,
		Poll: 20 * time.Millisecond, MinDelay: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond}}}
	rs := startReplicas(t, pg, pg.CreateDB("webhooks"), 2, o)
	const n = 10
	for i := range n {
		s := rs.srvs[i%2]
		id := fmt.Sprintf("dev-r%d", i)
		s.client(nil).enroll(t, csrFor(t, newKey(t), id), s.token(t, TokenOptions{Device: id})).certs(t)
	}
	for i := range n {
		sink.wait(t, webhook.TypeEnrolled, fmt.Sprintf("dev-r%d", i))
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.bad != 0 || len(sink.events) != n {
		t.Fatalf("%d events (want %d), %d bad signatures", len(sink.events), n, sink.bad)
	}
}
