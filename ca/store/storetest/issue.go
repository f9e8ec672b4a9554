package storetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
)

// secret is the secret of every token mkToken makes.
var secret = [32]byte{1}

func mkToken(t *testing.T, s store.Store, id string, uses int) {
	t.Helper()
	mkTokenFor(t, s, store.Token{ID: id, MaxUses: uses})
}

// mkTokenFor stores tok with the suite's secret and lifetime.
func mkTokenFor(t *testing.T, s store.Store, tok store.Token) {
	t.Helper()
	tok.SecretHash, tok.CreatedAt, tok.ExpiresAt = secret, now, now.Add(time.Hour)
	if err := s.CreateToken(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
}

// enrollReq is a token enrollment whose certificate is no real one (so
// never replayed): each serial has a key of its own.
func enrollReq(tok, dev, serial string) store.TokenEnrollment {
	return store.TokenEnrollment{TokenID: tok, SecretHash: secret, DeviceID: dev, Time: now,
		Issuance: store.Issuance{Serial: serial, NotAfter: now.Add(time.Hour), DER: []byte("cert " + serial), KeyHash: sha256.Sum256([]byte(serial))},
		Audit:    store.AuditRecord{Time: now, Op: "simpleenroll", TokenID: tok, DeviceID: dev, Result: store.ResultOK}}
}

func renewReq(dev, presented, serial string) store.Renewal {
	return store.Renewal{DeviceID: dev, Presented: presented, Time: now,
		Issuance: store.Issuance{Serial: serial, NotAfter: now.Add(time.Hour), DER: []byte("cert " + serial), KeyHash: sha256.Sum256([]byte(serial))},
		Audit:    store.AuditRecord{Time: now, Op: "simplereenroll", DeviceID: dev, Result: store.ResultOK}}
}

// realIssuance is an Issuance with a parseable certificate for key, so
// that a retry can be answered with it.
func realIssuance(t *testing.T, key *ecdsa.PrivateKey, serial int64) store.Issuance {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "d"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return store.Issuance{Serial: fmt.Sprintf("%x", cert.SerialNumber.Bytes()), NotAfter: cert.NotAfter, DER: der, KeyHash: sha256.Sum256(cert.RawSubjectPublicKeyInfo)}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// refusedAs fails unless err is a *store.Refusal of kind want.
func refusedAs(t *testing.T, what string, err error, want store.RefusalKind) *store.Refusal {
	t.Helper()
	var r *store.Refusal
	if !errors.As(err, &r) || r.Kind != want {
		t.Fatalf("%s: %v, want refusal %v", what, err, (&store.Refusal{Kind: want}).Error())
	}
	return r
}

// tokenUsesExact races 64 callers spread over three handles for a token
// of N uses, for several N: exactly N win, the others are refused as used
// up, and the token says N uses.
func tokenUsesExact(t *testing.T, b Backend) {
	rs := replicas(t, b, 3)
	ctx := context.Background()
	for _, uses := range []int{1, 5, 64} {
		rounds := 20
		if uses > 1 {
			rounds = 3
		}
		for round := range rounds {
			id := fmt.Sprintf("tok-%d-%d", uses, round)
			mkToken(t, rs[0], id, uses)
			const racers = 64
			var wg sync.WaitGroup
			errs := make([]error, racers)
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = rs[i%len(rs)].IssueWithToken(ctx, enrollReq(id, fmt.Sprintf("%s-dev-%d", id, i), fmt.Sprintf("%s-%d", id, i)))
				}()
			}
			wg.Wait()
			won := 0
			for _, err := range errs {
				if err == nil {
					won++
				} else {
					refusedAs(t, "token "+id, err, store.RefuseTokenUsedUp)
				}
			}
			tok, err := rs[1].Token(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if want := min(uses, racers); won != want || tok.Uses != want {
				t.Fatalf("token %s of %d uses raced by %d: %d winners, %d uses recorded, want %d", id, uses, racers, won, tok.Uses, want)
			}
		}
	}
}

// refusalsChangeNothing: every refusal of every intent is a *Refusal of
// its kind, and writes no use, device or audit record.
func refusalsChangeNothing(t *testing.T, b Backend) {
	s := replicas(t, b, 1)[0]
	ctx := context.Background()
	mkToken(t, s, "open", 1)
	mkTokenFor(t, s, store.Token{ID: "bound", MaxUses: 1, Device: "other"})
	mkTokenFor(t, s, store.Token{ID: "pattern", MaxUses: 1, Pattern: "pump-*"})
	mkToken(t, s, "revoked", 1)
	if err := s.RevokeToken(ctx, "revoked", now); err != nil {
		t.Fatal(err)
	}
	wrong := enrollReq("open", "d", "A")
	wrong.SecretHash = [32]byte{2}
	late := enrollReq("open", "d", "A")
	late.Time = now.Add(2 * time.Hour)
	for _, tc := range []struct {
		name string
		do   func() (store.Outcome, error)
		want store.RefusalKind
	}{
		{"unknown token", func() (store.Outcome, error) { return s.IssueWithToken(ctx, enrollReq("nope", "d", "A")) }, store.RefuseTokenUnknown},
		{"wrong secret", func() (store.Outcome, error) { return s.IssueWithToken(ctx, wrong) }, store.RefuseTokenSecret},
		{"revoked token", func() (store.Outcome, error) { return s.IssueWithToken(ctx, enrollReq("revoked", "d", "A")) }, store.RefuseTokenRevoked},
		{"expired token", func() (store.Outcome, error) { return s.IssueWithToken(ctx, late) }, store.RefuseTokenExpired},
		{"token for another device", func() (store.Outcome, error) { return s.IssueWithToken(ctx, enrollReq("bound", "d", "A")) }, store.RefuseTokenDevice},
		{"id outside the pattern", func() (store.Outcome, error) { return s.IssueWithToken(ctx, enrollReq("pattern", "d", "A")) }, store.RefuseTokenPattern},
		{"renewal of an unknown device", func() (store.Outcome, error) { return s.Reissue(ctx, renewReq("d", "00", "A")) }, store.RefuseDeviceUnknown},
		{"recovery of an unknown device", func() (store.Outcome, error) {
			return s.Recover(ctx, store.Recovery{DeviceID: "d", Time: now, Issuance: store.Issuance{Serial: "A", NotAfter: now.Add(time.Hour)}})
		}, store.RefuseDeviceUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.do()
			refusedAs(t, tc.name, err, tc.want)
			toks, _ := s.Tokens(ctx)
			for _, tk := range toks {
				if tk.Uses != 0 {
					t.Errorf("a refusal spent a use of %s", tk.ID)
				}
			}
			if _, err := s.Device(ctx, "d"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("a refusal recorded the device: %v", err)
			}
			if recs, _ := s.Audit(ctx, 0); len(recs) != 0 {
				t.Errorf("a refusal wrote %d audit records", len(recs))
			}
		})
	}
	// Used up, and a superseded certificate, on a device that exists.
	if _, err := s.IssueWithToken(ctx, enrollReq("open", "d", "A")); err != nil {
		t.Fatal(err)
	}
	mkTokenFor(t, s, store.Token{ID: "claim", MaxUses: 1, Pattern: "*"})
	before, _ := s.Device(ctx, "d")
	for _, tc := range []struct {
		name string
		do   func() (store.Outcome, error)
		want store.RefusalKind
	}{
		{"used up", func() (store.Outcome, error) { return s.IssueWithToken(ctx, enrollReq("open", "d2", "B")) }, store.RefuseTokenUsedUp},
		{"claim token for an enrolled id", func() (store.Outcome, error) { return s.IssueWithToken(ctx, enrollReq("claim", "d", "B")) }, store.RefuseDeviceEnrolled},
		{"renewal with a certificate never held", func() (store.Outcome, error) { return s.Reissue(ctx, renewReq("d", "ZZ", "B")) }, store.RefuseSuperseded},
	} {
		_, err := tc.do()
		refusedAs(t, tc.name, err, tc.want)
		if d, _ := s.Device(ctx, "d"); d.Serial != before.Serial || d.Enrollments != before.Enrollments {
			t.Errorf("%s changed the device: %+v", tc.name, d)
		}
	}
	if tk, _ := s.Token(ctx, "claim"); tk.Uses != 0 {
		t.Errorf("a refused claim spent a use: %+v", tk)
	}
}

// confirmedSerial walks a device through renewals, each step on another
// handle: a renewal presenting the newest certificate confirms it; one
// presenting the confirmed certificate (an answer was lost) keeps it
// confirmed however often it happens; a token enrollment clears it.
func confirmedSerial(t *testing.T, b Backend) {
	rs := replicas(t, b, 2)
	ctx := context.Background()
	mkTokenFor(t, rs[0], store.Token{ID: "t1", MaxUses: 2, Device: "d1"})
	steps := []struct {
		token, presented, serial string
		wantConfirmed, wantPrev  string
	}{
		{"t1", "", "A", "", ""},
		{"", "A", "B", "A", "A"}, // renewed with the newest: A confirmed
		{"", "A", "C", "A", "B"}, // B's answer was lost: A still good
		{"", "A", "D", "A", "C"}, // and again
		{"", "D", "E", "D", "D"}, // the device shows D: A is done
		{"t1", "", "F", "", "E"}, // a token enrollment starts over
	}
	for i, st := range steps {
		s := rs[i%2]
		var err error
		var out store.Outcome
		if st.token != "" {
			out, err = s.IssueWithToken(ctx, enrollReq(st.token, "d1", st.serial))
		} else {
			out, err = s.Reissue(ctx, renewReq("d1", st.presented, st.serial))
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if out.Replayed || out.Existed != (i > 0) {
			t.Errorf("step %d: outcome %+v", i, out)
		}
		d, err := rs[(i+1)%2].Device(ctx, "d1")
		if err != nil {
			t.Fatal(err)
		}
		if d.Serial != st.serial || d.Confirmed != st.wantConfirmed || d.PrevSerial != st.wantPrev || string(d.Cert) != "cert "+st.serial ||
			d.KeyHash != sha256.Sum256([]byte(st.serial)) || d.CertToken != st.token || d.Enrollments != i+1 || d.Status != store.StatusActive {
			t.Errorf("step %d (%+v): device %+v", i, st, d)
		}
	}
	// A after D was shown: superseded.
	if _, err := rs[0].Reissue(ctx, renewReq("d1", "A", "G")); err == nil {
		t.Error("renewal with a certificate older than the confirmed one was accepted")
	}
	tok, _ := rs[0].Token(ctx, "t1")
	if tok.Uses != 2 || tok.LastUsedAt.IsZero() {
		t.Errorf("token after two enrollments: %+v", tok)
	}
}

// revokeDeviceVisible: a device revoked through one handle is refused at
// once by every intent on every other handle.
func revokeDeviceVisible(t *testing.T, b Backend) {
	rs := replicas(t, b, 3)
	ctx := context.Background()
	mkToken(t, rs[0], "t", 10)
	mkToken(t, rs[0], "t2", 10)
	for i := range 10 {
		dev := fmt.Sprintf("d%d", i)
		if _, err := rs[0].IssueWithToken(ctx, enrollReq("t", dev, dev+"-A")); err != nil {
			t.Fatal(err)
		}
		if err := rs[1].RevokeDevice(ctx, dev, now); err != nil {
			t.Fatal(err)
		}
		_, err := rs[2].Reissue(ctx, renewReq(dev, dev+"-A", dev+"-B"))
		r := refusedAs(t, "renewal on another handle right after the revocation", err, store.RefuseDeviceRevoked)
		if r.Device == nil || r.Device.Status != store.StatusRevoked || !r.Device.RevokedAt.Equal(now) {
			t.Fatalf("the refusal saw %+v", r.Device)
		}
		_, err = rs[(i+2)%3].IssueWithToken(ctx, enrollReq("t2", dev, dev+"-C"))
		refusedAs(t, "token enrollment after the revocation", err, store.RefuseDeviceRevoked)
		_, err = rs[(i+1)%3].Recover(ctx, store.Recovery{DeviceID: dev, Time: now, Issuance: store.Issuance{Serial: dev + "-D", NotAfter: now.Add(time.Hour)}})
		refusedAs(t, "recovery after the revocation", err, store.RefuseDeviceRevoked)
	}
	if tk, _ := rs[1].Token(ctx, "t2"); tk.Uses != 0 {
		t.Errorf("refused enrollments of revoked devices spent %d uses", tk.Uses)
	}
	if err := rs[0].RevokeDevice(ctx, "nobody", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke an unknown device: %v, want ErrNotFound", err)
	}
	// Revoking twice keeps the first time.
	if err := rs[0].RevokeDevice(ctx, "d0", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if d, _ := rs[2].Device(ctx, "d0"); !d.RevokedAt.Equal(now) {
		t.Errorf("revoked twice: revoked_at %v, want the first %v", d.RevokedAt, now)
	}
}

func revokeTokenVisible(t *testing.T, b Backend) {
	rs := replicas(t, b, 2)
	ctx := context.Background()
	mkToken(t, rs[0], "t", 5)
	if err := rs[0].RevokeToken(ctx, "t", now); err != nil {
		t.Fatal(err)
	}
	_, err := rs[1].IssueWithToken(ctx, enrollReq("t", "d", "A"))
	refusedAs(t, "enrollment with a token revoked on another handle", err, store.RefuseTokenRevoked)
	if err := rs[0].RevokeToken(ctx, "none", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke an unknown token: %v, want ErrNotFound", err)
	}
}

// newDeviceRace: many first enrollments of one device id at once, each
// with a claim token of its own: one wins, the others see the winner's
// device (a claim token cannot take over an enrolled id), and only the
// winner's token is spent.
func newDeviceRace(t *testing.T, b Backend) {
	rs := replicas(t, b, 3)
	ctx := context.Background()
	const racers = 32
	for i := range racers {
		mkToken(t, rs[0], fmt.Sprintf("t%d", i), 1)
	}
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = rs[i%3].IssueWithToken(ctx, enrollReq(fmt.Sprintf("t%d", i), "same", fmt.Sprintf("S%d", i)))
		}()
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		if err == nil {
			won++
		} else {
			refusedAs(t, fmt.Sprintf("racer %d", i), err, store.RefuseDeviceEnrolled)
		}
	}
	toks, err := rs[1].Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spent := 0
	for _, tk := range toks {
		spent += tk.Uses
	}
	d, err := rs[2].Device(ctx, "same")
	if won != 1 || spent != 1 || err != nil || d.Enrollments != 1 {
		t.Fatalf("%d winners, %d token uses, device %+v %v: want one of each", won, spent, d, err)
	}
}

// enrollRetryReplayed: a token enrollment retried with the same token and
// key is answered with the certificate already issued, spends no use and
// writes nothing; a new key with the used token is refused.
func enrollRetryReplayed(t *testing.T, b Backend) {
	rs := replicas(t, b, 2)
	ctx := context.Background()
	mkToken(t, rs[0], "t", 1)
	key := newKey(t)
	first := enrollReq("t", "d", "")
	first.Issuance = realIssuance(t, key, 100)
	if out, err := rs[0].IssueWithToken(ctx, first); err != nil || out.Replayed || out.Existed {
		t.Fatalf("first enrollment: %+v %v", out, err)
	}
	audits, _ := rs[0].Audit(ctx, 0)
	retry := first
	retry.Issuance = realIssuance(t, key, 101) // signed again, same key
	out, err := rs[1].IssueWithToken(ctx, retry)
	if err != nil || !out.Replayed || out.Device.Serial != first.Issuance.Serial || string(out.Device.Cert) != string(first.Issuance.DER) {
		t.Fatalf("retry with the same token and key: %+v %v, want the first certificate replayed", out, err)
	}
	if tk, _ := rs[0].Token(ctx, "t"); tk.Uses != 1 {
		t.Errorf("the retry spent a use: %+v", tk)
	}
	if d, _ := rs[0].Device(ctx, "d"); d.Serial != first.Issuance.Serial || d.Enrollments != 1 {
		t.Errorf("the retry changed the device: %+v", d)
	}
	if recs, _ := rs[0].Audit(ctx, 0); len(recs) != len(audits) {
		t.Errorf("the replay wrote audit records: %d, want %d", len(recs), len(audits))
	}
	other := first
	other.Issuance = realIssuance(t, newKey(t), 102)
	_, err = rs[1].IssueWithToken(ctx, other)
	refusedAs(t, "new key with the used token", err, store.RefuseTokenUsedUp)
	wrong := retry
	wrong.SecretHash = [32]byte{9}
	_, err = rs[1].IssueWithToken(ctx, wrong)
	refusedAs(t, "same key, wrong secret", err, store.RefuseTokenSecret)
}

// enrollRetryRace: 32 retries of one enrollment (same single-use token,
// same key) race over three handles: exactly one issues, every other one
// is answered with the winner's certificate, and one use is spent.
func enrollRetryRace(t *testing.T, b Backend) {
	rs := replicas(t, b, 3)
	ctx := context.Background()
	key := newKey(t)
	for round := range 5 {
		tok, dev := fmt.Sprintf("t%d", round), fmt.Sprintf("d%d", round)
		mkToken(t, rs[0], tok, 1)
		const racers = 32
		reqs := make([]store.TokenEnrollment, racers)
		for i := range reqs {
			reqs[i] = enrollReq(tok, dev, "")
			reqs[i].Issuance = realIssuance(t, key, int64(1000*round+i+1))
		}
		outs := make([]store.Outcome, racers)
		errs := make([]error, racers)
		var wg sync.WaitGroup
		for i := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				outs[i], errs[i] = rs[i%3].IssueWithToken(ctx, reqs[i])
			}()
		}
		wg.Wait()
		winner := -1
		for i := range racers {
			switch {
			case errs[i] != nil:
				t.Fatalf("round %d racer %d: %v", round, i, errs[i])
			case !outs[i].Replayed && winner >= 0:
				t.Fatalf("round %d: racers %d and %d both issued", round, winner, i)
			case !outs[i].Replayed:
				winner = i
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody issued", round)
		}
		for i := range racers {
			if outs[i].Replayed && outs[i].Device.Serial != reqs[winner].Issuance.Serial {
				t.Fatalf("round %d racer %d replayed %s, the winner issued %s", round, i, outs[i].Device.Serial, reqs[winner].Issuance.Serial)
			}
		}
		tk, _ := rs[1].Token(ctx, tok)
		d, _ := rs[2].Device(ctx, dev)
		if tk.Uses != 1 || d.Enrollments != 1 || d.Serial != reqs[winner].Issuance.Serial {
			t.Fatalf("round %d: token %+v, device %+v: want one use, one enrollment, the winner's serial", round, tk, d)
		}
	}
}

// renewalRetryReplayed: a renewal with the confirmed certificate and the
// key of the newest (whose answer was lost) gets the newest again and
// writes nothing; with another key it gets a new certificate.
func renewalRetryReplayed(t *testing.T, b Backend) {
	rs := replicas(t, b, 2)
	ctx := context.Background()
	mkToken(t, rs[0], "t", 1)
	k1, k2 := newKey(t), newKey(t)
	e := enrollReq("t", "d", "")
	e.Issuance = realIssuance(t, k1, 1)
	if _, err := rs[0].IssueWithToken(ctx, e); err != nil {
		t.Fatal(err)
	}
	c1 := e.Issuance.Serial
	r := renewReq("d", c1, "")
	r.Issuance = realIssuance(t, k2, 2)
	if out, err := rs[1].Reissue(ctx, r); err != nil || out.Replayed || !out.Existed || out.Device.Serial != c1 {
		t.Fatalf("renewal with the newest: %+v %v", out, err)
	}
	c2 := r.Issuance.Serial
	retry := renewReq("d", c1, "")
	retry.Issuance = realIssuance(t, k2, 3)
	out, err := rs[0].Reissue(ctx, retry)
	if err != nil || !out.Replayed || out.Device.Serial != c2 {
		t.Fatalf("retry with the confirmed certificate and the newest's key: %+v %v, want %s replayed", out, err, c2)
	}
	if d, _ := rs[1].Device(ctx, "d"); d.Serial != c2 || d.Enrollments != 2 || d.Confirmed != c1 {
		t.Errorf("the replay changed the device: %+v", d)
	}
	rekey := renewReq("d", c1, "")
	rekey.Issuance = realIssuance(t, newKey(t), 4)
	if out, err := rs[1].Reissue(ctx, rekey); err != nil || out.Replayed {
		t.Fatalf("renewal with the confirmed certificate and a new key: %+v %v, want a new certificate", out, err)
	}
	if d, _ := rs[0].Device(ctx, "d"); d.Serial != rekey.Issuance.Serial || d.Enrollments != 3 || d.Confirmed != c1 {
		t.Errorf("after the rekey: %+v", d)
	}
}

// renewalRace: 32 renewals of one device with its newest certificate race
// over three handles, each with a key of its own: the first makes the
// presented one confirmed, so all are issued, none is lost (32
// enrollments counted), and the confirmed serial stays the presented one.
func renewalRace(t *testing.T, b Backend) {
	rs := replicas(t, b, 3)
	ctx := context.Background()
	mkToken(t, rs[0], "t", 1)
	if _, err := rs[0].IssueWithToken(ctx, enrollReq("t", "d", "S0")); err != nil {
		t.Fatal(err)
	}
	const racers = 32
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = rs[i%3].Reissue(ctx, renewReq("d", "S0", fmt.Sprintf("R%d", i)))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("racer %d: %v", i, err)
		}
	}
	d, err := rs[1].Device(ctx, "d")
	if err != nil || d.Enrollments != racers+1 || d.Confirmed != "S0" {
		t.Fatalf("device after %d racing renewals: %+v %v, want %d enrollments, S0 confirmed", racers, d, err, racers+1)
	}
	recs, _ := rs[2].Audit(ctx, 0)
	if len(recs) != racers+1 {
		t.Errorf("%d audit records, want %d", len(recs), racers+1)
	}
}

// recoverDevice: an enrolled device recovers without a token: a new
// certificate, Confirmed cleared, no token use.
func recoverDevice(t *testing.T, b Backend) {
	rs := replicas(t, b, 2)
	ctx := context.Background()
	mkToken(t, rs[0], "t", 1)
	if _, err := rs[0].IssueWithToken(ctx, enrollReq("t", "d", "A")); err != nil {
		t.Fatal(err)
	}
	if _, err := rs[1].Reissue(ctx, renewReq("d", "A", "B")); err != nil {
		t.Fatal(err)
	}
	out, err := rs[1].Recover(ctx, store.Recovery{DeviceID: "d", Time: now, Issuance: store.Issuance{Serial: "C", NotAfter: now.Add(time.Hour), DER: []byte("cert C")},
		Audit: store.AuditRecord{Time: now, Op: "attest", DeviceID: "d", Result: store.ResultOK}})
	if err != nil || out.Replayed || !out.Existed || out.Device.Serial != "B" {
		t.Fatalf("recover: %+v %v", out, err)
	}
	d, _ := rs[0].Device(ctx, "d")
	if d.Serial != "C" || d.Confirmed != "" || d.Enrollments != 3 || d.CertToken != "" {
		t.Errorf("after recovery: %+v", d)
	}
	if tk, _ := rs[0].Token(ctx, "t"); tk.Uses != 1 {
		t.Errorf("recovery spent a token use: %+v", tk)
	}
}
