package ca

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/deviceid"
	wire "github.com/edgeagent/edgeagent/enroll/attest"
	"github.com/edgeagent/edgeagent/enroll/est"
	"github.com/edgeagent/edgeagent/revocation"
)

// TLSConfig returns the server side TLS configuration: the CA-issued server
// certificate served with the intermediate, and with the root too to a
// client that asks for it (est.ALPNRootInChain: a device that knows only
// the root's pin finds it in the chain), TLS 1.2 minimum, and a client certificate requested but
// not required. The certificate is verified by the simplereenroll handler
// rather than in the handshake, so that one from another CA, an expired one
// or one of a revoked device gets a readable EST error and an audit record
// instead of a bare TLS alert, and so that an agent whose identity expired
// can still bootstrap again with a token over the same client.
func (c *CA) TLSConfig() (*tls.Config, error) {
	if _, err := c.serverCert(false); err != nil {
		return nil, fmt.Errorf("TLS config: %w", err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// TLS 1.2: ECDHE key exchange (forward secrecy) with AEAD ciphers
		// only; no CBC, no RSA key transport. TLS 1.3 suites are all AEAD.
		CipherSuites: tls12Suites,
		// The root goes only to clients that ask for it. Every other
		// client has it already (it is the trust anchor), and Go's
		// verifier, finding it among the presented certificates as well
		// as among its roots, checks the intermediate's signature twice:
		// an ECDSA verification, a sixth of a client's handshake work,
		// for nothing (RFC 8446 §4.4.2 lets a server omit the anchor).
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.serverCert(slices.Contains(hello.SupportedProtos, est.ALPNRootInChain))
		},
		// RequestClientCert still checks the client's proof of possession
		// of the key (CertificateVerify); ClientCAs tells clients which
		// certificate to pick.
		ClientAuth: tls.RequestClientCert,
		ClientCAs:  c.clientRoots,
		Time:       c.now,
		// Devices talk to the CA once per renewal, hours apart: resuming
		// a session never happens, so do not spend work on tickets.
		SessionTicketsDisabled: true,
		CurvePreferences:       keyExchanges(c.postQuantum),
	}, nil
}

// tls12Suites are the TLS 1.2 cipher suites the EST server accepts.
var tls12Suites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// keyExchanges is the server's TLS key exchange preference.
//
// By default the EST server does not use the hybrid post-quantum key
// exchanges, although Go would (and prefers them even at the price of a
// HelloRetryRequest). What they protect against is traffic recorded today
// and decrypted by a future quantum computer, and EST traffic holds nothing
// that is still secret by then: the CSR and the issued certificates are
// public, a reenrollment authenticates with a signature, and the one
// secret, the enrollment token, is used up by the enrollment it travels in
// or expires within its TTL (hours to days). ML-KEM-768 costs the server an
// encapsulation per handshake (about 65 µs here, an eighth of all its work
// per enrollment) and the client a key generation and a decapsulation.
// A fleet whose policy wants post-quantum key exchange on every TLS
// connection turns it on here with Options.PostQuantumTLS (edgeca serve
// --tls-post-quantum) and in the EST client (enroll.Options.PostQuantumTLS),
// which by default does not offer the hybrids, for the same reason.
func keyExchanges(postQuantum bool) []tls.CurveID {
	classic := []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}
	if !postQuantum {
		return classic
	}
	return append([]tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024}, classic...)
}

// Serve serves EST over TLS on ln until ctx is done, then shuts down
// gracefully (in-flight requests get up to 10 seconds).
func (c *CA) Serve(ctx context.Context, ln net.Listener) error {
	cfg, err := c.TLSConfig()
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: c.Handler(),
		// The TLS handshake gets the shortest of these (net/http), so a
		// connection that never completes one is closed after
		// headerTimeout.
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       headerTimeout + bodyTimeout,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	// The CRL over plain HTTP shares the port (sniffListener).
	plain := &http.Server{
		Handler:           c.PlainHandler(),
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       headerTimeout,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	limited := newLimitListener(ln, c.maxConnsPerPeer, c.maxConns, c.log)
	sctxAll, stopSniff := context.WithCancel(context.WithoutCancel(ctx))
	sniff := newSniffListener(sctxAll, limited)
	defer func() { stopSniff(); sniff.Close(); sniff.wait() }()
	plainDone := make(chan struct{})
	go func() { defer close(plainDone); _ = plain.Serve(sniff.Plain()) }()
	defer func() { _ = plain.Close(); <-plainDone }()
	go func() { errc <- srv.Serve(tls.NewListener(sniff.TLS(), cfg)) }()
	mctx, stopMaintain := context.WithCancel(context.WithoutCancel(ctx))
	maintained := make(chan struct{}, 3)
	go func() { defer func() { maintained <- struct{}{} }(); c.maintain(mctx) }()
	go func() { defer func() { maintained <- struct{}{} }(); c.followRevocations(mctx) }()
	go func() { defer func() { maintained <- struct{}{} }(); c.runFleet(mctx) }() // webhook_hooks.go
	defer func() { stopMaintain(); <-maintained; <-maintained; <-maintained }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve EST: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("serve EST: shutdown: %w", err)
	}
	return nil
}

// Handler returns the EST HTTP handler for /.well-known/est/[label/]op.
func (c *CA) Handler() http.Handler {
	return http.HandlerFunc(c.serveHTTP)
}

func (c *CA) serveHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if c.serveAttest(w, r) {
		return
	}
	switch {
	case strings.HasPrefix(r.URL.Path, CRLPathPrefix):
		c.serveCRL(w, r)
		c.noteContact(r) // inventory.go
		return
	case r.URL.Path == revocation.FeedPath:
		c.serveFeed(w, r)
		return
	}
	op, ok := estOp(r.URL.Path)
	if !ok {
		writeError(w, refuse(http.StatusNotFound, est.CodeNotFound, "no such EST resource: the paths are "+est.PathPrefix+"{cacerts,simpleenroll,simplereenroll,csrattrs}"))
		return
	}
	switch op {
	case est.OpCACerts:
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		w.Header().Set("Content-Type", est.MediaPKCS7)
		w.Header().Set("Content-Transfer-Encoding", est.TransferEncoding)
		w.Header().Set("Content-Length", strconv.Itoa(len(c.cacerts)))
		_, _ = w.Write(c.cacerts)
		c.noteContact(r) // inventory.go
	case est.OpCSRAttrs:
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		w.Header().Set("Content-Type", est.MediaCSRAttrs)
		w.Header().Set("Content-Transfer-Encoding", est.TransferEncoding)
		w.Header().Set("Content-Length", strconv.Itoa(len(c.csrattrs)))
		_, _ = w.Write(c.csrattrs)
		c.noteContact(r)
	case est.OpSimpleEnroll, est.OpSimpleReenroll:
		if !allowMethod(w, r, http.MethodPost) {
			return
		}
		c.enroll(w, r, op)
	case est.OpRenewalInfo:
		c.serveRenewalInfo(w, r) // renewalinfo.go
	default:
		writeError(w, refuse(http.StatusNotFound, est.CodeNotFound, fmt.Sprintf("EST operation %q is not supported", op)))
	}
}

// estOp extracts the operation from /.well-known/est/op or
// /.well-known/est/label/op.
func estOp(p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, est.PathPrefix)
	if !ok {
		return "", false
	}
	parts := strings.Split(rest, "/")
	switch len(parts) {
	case 1:
		return parts[0], parts[0] != ""
	case 2:
		if !validLabel(parts[0]) {
			return "", false
		}
		return parts[1], parts[1] != ""
	}
	return "", false
}

func validLabel(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func allowMethod(w http.ResponseWriter, r *http.Request, m string) bool {
	if r.Method == m || m == http.MethodGet && r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", m)
	writeError(w, refuse(http.StatusMethodNotAllowed, est.CodeMethodNotAllowed, fmt.Sprintf("use %s", m)))
	return false
}

func writeError(w http.ResponseWriter, e *Error) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	switch e.Status {
	case http.StatusUnauthorized:
		// RFC 9110 §11.6.1: a 401 carries a challenge. Basic is the only
		// scheme EST defines (§3.2.3); a client refused for its
		// certificate gets it too, and edgeca ignores Basic there.
		h.Set("WWW-Authenticate", AuthChallenge)
	}
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(e.Status)
	_, _ = io.WriteString(w, est.ErrorBody(e.Code, e.Msg))
}

// The client sees one message for every token failure: whether the token
// was unknown, wrong, expired, used up or revoked is for the audit log.
const tokenInvalidMsg = "enrollment token not accepted (unknown, expired, used up or revoked): ask the operator for a new one"

// attempt collects what the audit record of one request says.
type attempt struct {
	op, peer, tokenID, deviceID string
	agent                       string // agentOf the User-Agent (inventory.go)
	authenticated               bool   // deviceID is from a verified client certificate
}

// enroll serves simpleenroll and simplereenroll.
func (c *CA) enroll(w http.ResponseWriter, r *http.Request, op string) {
	a := attempt{op: op, peer: r.RemoteAddr, agent: agentOf(r.Header.Get("User-Agent"))}
	if n := c.inFlight.Add(1); n > maxInFlight {
		// Shed like the gate's 503s: a jittered Retry-After, counted,
		// not audited one by one (in a storm every second would bring
		// the whole excess back and write an audit record for each).
		c.inFlight.Add(-1)
		c.gate.shed.Add(1)
		drain(r.Body)
		writeError(w, c.gate.shedError(jitter()))
		return
	}
	defer c.inFlight.Add(-1)
	// The body must arrive soon after the headers, whatever the client
	// does before any token or certificate is looked at.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
	cert, err := c.enrollChecked(w, r, op, &a)
	var rp *replay
	if errors.As(err, &rp) {
		cert, err = rp.cert, nil
		c.recordReplay(r.Context(), a, rp)
	}
	if e := clientTimeout(r.Context().Err(), err); e != nil {
		// The client went away or was too slow: what failed is the
		// client, not the CA or its store (no 500, no store-down note).
		err = e
	}
	if errors.Is(err, store.ErrUnavailable) {
		c.noteStore(err)
		e := unavailableError(err, jitter())
		drain(r.Body)
		writeError(w, e)
		return
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			c.log.Error("enrollment failed", "op", op, "peer", a.peer, "device", a.deviceID, "err", err)
			e = &Error{Status: http.StatusInternalServerError, Code: est.CodeInternal, Msg: "internal error, see the edgeca log", Reason: err.Error()}
		}
		// Shed requests are counted (CA.Shed), not audited one by one:
		// a storm must not turn into a storm of audit writes.
		if e.Code != est.CodeUnavailable {
			c.recordFailure(r.Context(), a, e)
			c.metrics.noteRefused(op, e.Code)
			c.noteRenewalRefused(r.Context(), a, e) // inventory.go
		}
		drain(r.Body)
		writeError(w, e)
		return
	}
	// Only the issued certificate (RFC 7030 §4.2.3): a conforming client
	// refuses an answer with more ("2 certificates returned"); the chain
	// is what /cacerts is for.
	der, err := est.EncodeCertsOnly([]*x509.Certificate{cert})
	if err != nil {
		// The certificate is recorded as issued; the client will retry.
		c.log.Error("encode response", "op", op, "device", a.deviceID, "err", err)
		writeError(w, refuse(http.StatusInternalServerError, est.CodeInternal, "internal error, see the edgeca log"))
		return
	}
	body := est.EncodeBase64(der)
	h := w.Header()
	h.Set("Content-Type", est.MediaCertsOnly)
	h.Set("Content-Transfer-Encoding", est.TransferEncoding)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	c.metrics.noteIssued(op)
	c.contacts.note("seen "+deviceid.Canonical(a.deviceID), c.now())
	c.log.Info("certificate issued", "op", op, "peer", a.peer, "device", a.deviceID, "token", a.tokenID, "serial", SerialHex(cert.SerialNumber), "not_after", cert.NotAfter)
}

// recordReplay writes the audit record of a retry answered with the
// certificate already issued.
func (c *CA) recordReplay(ctx context.Context, a attempt, rp *replay) {
	c.writeAudit(ctx, store.AuditRecord{
		Time: c.now(), Op: a.op, Peer: a.peer, TokenID: a.tokenID, DeviceID: a.deviceID,
		Result: store.ResultOK, Reason: rp.reason, Serial: SerialHex(rp.cert.SerialNumber),
	})
}

// writeAudit appends a record with every string made printable and
// bounded; it is written even if the client has gone away.
func (c *CA) writeAudit(ctx context.Context, rec store.AuditRecord) {
	rec.Op, rec.Peer, rec.TokenID, rec.DeviceID = Printable(rec.Op, maxFieldLen), Printable(rec.Peer, maxFieldLen), Printable(rec.TokenID, maxFieldLen), Printable(rec.DeviceID, maxFieldLen)
	rec.Code, rec.Reason, rec.Serial = Printable(rec.Code, maxFieldLen), Printable(rec.Reason, maxReasonLen), Printable(rec.Serial, maxFieldLen)
	err := c.st.AddAudit(context.WithoutCancel(ctx), rec)
	c.noteStore(err)
	if err != nil && !errors.Is(err, store.ErrUnavailable) {
		c.log.Error("write audit record", "err", err, "op", rec.Op, "device", rec.DeviceID, "reason", rec.Reason)
	}
}

// recordFailure audits and logs a refusal, sampled per peer (see
// refusalSampler): a peer without credentials cannot grow the audit log
// or the server log by more than a few records a minute.
func (c *CA) recordFailure(ctx context.Context, a attempt, e *Error) {
	result := store.ResultDenied
	if e.Status >= 500 {
		result = store.ResultError
	}
	reason := e.Reason
	if reason == "" {
		reason = e.Msg
	}
	now := c.now()
	record, summary := c.sampler.note(peerIP(a.peer), string(e.Code), now)
	if summary != nil {
		c.writeSummary(ctx, *summary)
	}
	if !record && result != store.ResultError {
		return
	}
	reason = Printable(reason, maxReasonLen)
	c.writeAudit(ctx, store.AuditRecord{
		Time: now, Op: a.op, Peer: a.peer, TokenID: a.tokenID, DeviceID: a.deviceID,
		Result: result, Code: string(e.Code), Reason: reason,
	})
	c.log.Info("enrollment refused", "op", a.op, "peer", a.peer, "token", a.tokenID, "device", a.deviceID, "code", e.Code, "reason", reason)
	c.refusedEvent(ctx, a, e, now) // webhook_hooks.go
}

func (c *CA) writeSummary(ctx context.Context, rec store.AuditRecord) {
	c.writeAudit(ctx, rec)
	c.log.Info("enrollment refusals summarized", "peer", rec.Peer, "reason", rec.Reason)
}

// maintain runs until ctx is done: it writes the summaries of closed
// refusal windows and keeps the audit log within its maximum.
func (c *CA) maintain(ctx context.Context) {
	tick := time.NewTicker(refusalWindow)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			// Whatever was counted is summarized before the server ends.
			for _, r := range c.sampler.flush(c.now().Add(refusalWindow)) {
				c.writeSummary(ctx, r)
			}
			return
		case <-tick.C:
		}
		now := c.now()
		for _, r := range c.sampler.flush(now) {
			c.writeSummary(ctx, r)
		}
		c.peerGuesses.sweep(now)
		c.tokenGuesses.sweep(now)
		c.contacts.sweep(now)
		c.pruneAudit(ctx)
	}
}

// pruneAudit enforces the configured maximum number of audit records.
func (c *CA) pruneAudit(ctx context.Context) {
	if c.auditMaxRows <= 0 {
		return
	}
	n, err := c.st.PruneAudit(ctx, time.Time{}, c.auditMaxRows)
	if err != nil {
		c.log.Error("prune audit log", "err", err)
	} else if n > 0 {
		c.log.Info("audit log pruned to its maximum", "deleted", n, "max_rows", c.auditMaxRows)
	}
}

// drain reads and discards what is left of a refused body, up to a bound,
// so that the client (which may still be sending) reads our error response
// instead of a connection reset. Bodies larger than that get the reset.
func drain(body io.Reader) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 1<<20))
}

// readCSR checks the content type, reads the bounded body and parses it.
func readCSR(w http.ResponseWriter, r *http.Request) (*CSR, error) {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != est.MediaPKCS10 {
		return nil, refuse(http.StatusUnsupportedMediaType, est.CodeWrongContentType,
			fmt.Sprintf("Content-Type %q: send %s (base64 of the DER CSR)", ct, est.MediaPKCS10))
	}
	raw := r.Body
	if r.ContentLength > est.MaxBodyBytes {
		return nil, refuse(http.StatusRequestEntityTooLarge, est.CodeBodyTooLarge, fmt.Sprintf("request body of %d bytes is over the %d byte limit", r.ContentLength, est.MaxBodyBytes))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, raw, est.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, refuse(http.StatusRequestEntityTooLarge, est.CodeBodyTooLarge, fmt.Sprintf("request body is over the %d byte limit", est.MaxBodyBytes))
		}
		if e := clientTimeout(r.Context().Err(), fmt.Errorf("reading the request body: %w", err)); e != nil {
			return nil, e
		}
		return nil, refuse(http.StatusBadRequest, est.CodeBadCSR, "reading the request body: "+err.Error())
	}
	return ParseCSR(body)
}

func (c *CA) enrollChecked(w http.ResponseWriter, r *http.Request, op string, a *attempt) (*x509.Certificate, error) {
	if op == est.OpSimpleEnroll {
		return c.simpleEnroll(w, r, a)
	}
	if op == wire.OpFinish {
		return c.attestFinish(w, r, a)
	}
	return c.simpleReenroll(w, r, a)
}

func (c *CA) simpleEnroll(w http.ResponseWriter, r *http.Request, a *attempt) (*x509.Certificate, error) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return nil, refuse(http.StatusUnauthorized, est.CodeAuthRequired, "simpleenroll needs HTTP Basic credentials: the token id as user name and its secret as password")
	}
	if len(user) > 64 {
		user = user[:64] // no token id is longer
	}
	a.tokenID = Printable(user, maxFieldLen)
	now := c.now()
	peer := peerIP(r.RemoteAddr)
	if wait := max(c.peerGuesses.wait(peer, now), c.tokenGuesses.wait(user, now)); wait > 0 {
		return nil, &Error{Status: http.StatusTooManyRequests, Code: est.CodeRateLimited, RetryAfter: wait,
			Msg:    "too many failed token checks: retry after the time in Retry-After",
			Reason: fmt.Sprintf("token guessing backoff: %s to wait", wait.Round(time.Millisecond))}
	}
	csr, err := readCSR(w, r)
	if err != nil {
		return nil, err
	}
	release, shed := c.gate.admit(r.Context(), jitter())
	if shed != nil {
		return nil, shed
	}
	defer release()
	return c.tokenEnroll(r.Context(), a, user, pass, peer, now, csr, nil)
}

// tokenEnroll is simpleenroll after the CSR is read; attested enrollment
// (attested non-nil) comes here too when it carries a token.
func (c *CA) tokenEnroll(ctx context.Context, a *attempt, user, pass, peer string, now time.Time, csr *CSR, attested *attestedKey) (*x509.Certificate, error) {
	a.deviceID = csr.DeviceID
	secretHash := sha256.Sum256([]byte(pass))
	// The token is checked before anything is signed: a guess costs a
	// read and a hash, and counts against the peer and the token id.
	if err := c.precheckToken(ctx, user, secretHash, now); err != nil {
		var e *Error
		if errors.As(err, &e) && e.Code == est.CodeTokenInvalid {
			c.peerGuesses.fail(peer, now)
			c.tokenGuesses.fail(user, now)
		}
		return nil, err
	}
	c.tokenGuesses.reset(user)
	if attested == nil {
		if err := c.refuseUnattested(ctx, user); err != nil {
			return nil, err
		}
	}
	// Before the intent: a denied device does not spend the token (authorize.go).
	if err := c.authorizeEnroll(ctx, a, user, csr.DeviceID, now); err != nil {
		return nil, err
	}
	e := store.TokenEnrollment{
		TokenID:    user,
		SecretHash: secretHash,
		DeviceID:   deviceid.Canonical(csr.DeviceID),
		Time:       now,
		Audit: store.AuditRecord{Time: now, Op: a.op, Peer: a.peer, TokenID: a.tokenID, DeviceID: csr.DeviceID,
			Result: store.ResultOK, Reason: "enrolled with token"},
		Agent: a.agent,
	}
	if attested != nil {
		e.Audit.Reason = "enrolled with token and TPM attestation (EK sha256 " + attested.ekHex() + ")"
	}
	cert, iss, err := c.sign(csr, now)
	if err != nil {
		return nil, err
	}
	e.Issuance = iss
	e.Outbox = c.issuedEvents(ctx, user, e.DeviceID, now, iss, a.peer) // webhook_hooks.go
	start := time.Now()
	out, err := c.st.IssueWithToken(ctx, e)
	c.metrics.noteStoreLatency(storeOpIssue, time.Since(start))
	c.noteStore(err)
	if err != nil {
		return nil, tokenRefusal(err, csr.DeviceID)
	}
	if out.Replayed {
		return nil, enrollReplayOf(user, &out.Device, now)
	}
	c.wakeWebhooks()
	if out.Existed {
		// The device was enrolled before: a token enrollment supersedes
		// its older certificates.
		c.supersede(ctx, e.DeviceID, cert)
	}
	if attested != nil {
		err = c.bindEK(ctx, e.DeviceID, attested)
	}
	return cert, err
}

// sign signs the certificate an enrollment of csr would hand out, before
// the store's intent decides whether it does: a refused request's
// certificate is dropped unseen. Signing before the decision costs one
// ECDSA signature on a refused request, less than the CSR check every
// request costs anyway, and saves a read of the state on every accepted
// one.
func (c *CA) sign(csr *CSR, now time.Time) (*x509.Certificate, store.Issuance, error) {
	// The certificate keeps the device's spelling of its id; the
	// registry is keyed by the canonical form.
	cert, err := c.auth.issueLeaf(csr.Request.PublicKey, csr.DeviceID, c.ttl, now)
	if err != nil {
		return nil, store.Issuance{}, err
	}
	return cert, store.Issuance{Serial: SerialHex(cert.SerialNumber), NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
		DER: cert.Raw, KeyHash: sha256.Sum256(cert.RawSubjectPublicKeyInfo)}, nil
}

// precheckToken refuses an unknown, wrong, revoked or expired token before
// the CSR is signed. Uses are counted, and checked again, in
// IssueWithToken's transaction.
func (c *CA) precheckToken(ctx context.Context, id string, secretHash [32]byte, now time.Time) error {
	tok, err := c.st.Token(ctx, id)
	var tp *store.Token
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return fmt.Errorf("read token: %w", err)
	default:
		tp = &tok
	}
	if r := store.DecideTokenSecret(tp, secretHash, now); r != nil {
		return tokenRefusal(r, "")
	}
	return nil
}

// tokenRefusal is the answer to a token enrollment the store refused
// (deviceID as the CSR spells it); other errors pass unchanged.
func tokenRefusal(err error, deviceID string) error {
	var r *store.Refusal
	if !errors.As(err, &r) {
		return err
	}
	invalid := func(reason string) error {
		return &Error{Status: http.StatusUnauthorized, Code: est.CodeTokenInvalid, Msg: tokenInvalidMsg, Reason: reason}
	}
	tok := r.Token
	switch r.Kind {
	case store.RefuseTokenUnknown:
		return invalid("unknown token")
	case store.RefuseTokenSecret:
		return invalid("wrong secret")
	case store.RefuseTokenRevoked:
		return invalid("token revoked at " + tok.RevokedAt.Format(time.RFC3339))
	case store.RefuseTokenExpired:
		return invalid("token expired at " + tok.ExpiresAt.Format(time.RFC3339))
	case store.RefuseTokenUsedUp:
		return invalid(fmt.Sprintf("token used up (%d of %d uses)", tok.Uses, tok.MaxUses))
	case store.RefuseTokenDevice:
		return &Error{Status: http.StatusForbidden, Code: est.CodeDeviceNotAllowed,
			Msg:    fmt.Sprintf("this token does not allow device id %q", deviceID),
			Reason: fmt.Sprintf("token is bound to device %q, CSR names %q", tok.Device, deviceID)}
	case store.RefuseTokenPattern:
		return &Error{Status: http.StatusForbidden, Code: est.CodeDeviceNotAllowed,
			Msg:    fmt.Sprintf("this token does not allow device id %q", deviceID),
			Reason: fmt.Sprintf("device id %q does not match the token pattern %q", deviceID, tok.Pattern)}
	case store.RefuseDeviceRevoked:
		return &Error{Status: http.StatusForbidden, Code: est.CodeDeviceRevoked,
			Msg: fmt.Sprintf("device %s is revoked", deviceID), Reason: "enroll of a revoked device"}
	case store.RefuseDeviceEnrolled:
		// A claim token (pattern or open) must not take over an identity
		// that is already enrolled.
		return &Error{Status: http.StatusForbidden, Code: est.CodeDeviceNotAllowed,
			Msg:    fmt.Sprintf("device %s is already enrolled: enrolling it again needs a token made for it (edgeca token create --device %s)", deviceID, deviceID),
			Reason: "claim token used for an already enrolled device id"}
	}
	return fmt.Errorf("token enrollment: unexpected refusal: %w", r)
}

func (c *CA) simpleReenroll(w http.ResponseWriter, r *http.Request, a *attempt) (*x509.Certificate, error) {
	now := c.now()
	peer, err := c.verifyClientCert(r, now)
	if err != nil {
		return nil, err
	}
	certID, err := DeviceIDFromCert(peer)
	if err != nil {
		return nil, &Error{Status: http.StatusUnauthorized, Code: est.CodeClientCertRequired,
			Msg: "the client certificate does not name a device: " + err.Error()}
	}
	a.deviceID, a.authenticated = certID, true
	csr, err := readCSR(w, r)
	if err != nil {
		return nil, err
	}
	release, shed := c.gate.admit(r.Context(), jitter())
	if shed != nil {
		return nil, shed
	}
	defer release()
	if !deviceid.Equal(csr.DeviceID, certID) {
		return nil, &Error{Status: http.StatusForbidden, Code: est.CodeDeviceNotAllowed,
			Msg: fmt.Sprintf("the CSR names device %q but the client certificate is for %q", csr.DeviceID, certID)}
	}
	if err := sameIdentity(csr.Request, peer); err != nil {
		return nil, &Error{Status: http.StatusBadRequest, Code: est.CodeIdentityMismatch,
			Msg: "a reenrollment CSR must copy the Subject and SubjectAltName of the certificate being renewed (RFC 7030 §4.2.2): " + err.Error()}
	}
	peerSerial := SerialHex(peer.SerialNumber)
	if revoked, err := c.rev.IsRevoked(r.Context(), peerSerial); err != nil {
		return nil, err
	} else if revoked {
		return nil, &Error{Status: http.StatusForbidden, Code: est.CodeDeviceRevoked,
			Msg: fmt.Sprintf("certificate %s is revoked", peerSerial), Reason: "reenroll with a revoked certificate"}
	}
	reason := "renewed with certificate " + peerSerial
	if late := now.Sub(peer.NotAfter); late > 0 {
		reason += fmt.Sprintf(", %s after it expired (grace %s)", late.Round(time.Second), c.renewGrace)
	}
	rn := store.Renewal{
		DeviceID:  deviceid.Canonical(certID),
		Time:      now,
		Presented: peerSerial,
		Audit: store.AuditRecord{Time: now, Op: a.op, Peer: a.peer, DeviceID: certID,
			Result: store.ResultOK, Reason: reason},
		Agent: a.agent,
	}
	cert, iss, err := c.sign(csr, now)
	if err != nil {
		return nil, err
	}
	rn.Issuance = iss
	rn.Outbox = c.issuedEvents(r.Context(), "", rn.DeviceID, now, iss, a.peer) // webhook_hooks.go
	start := time.Now()
	out, err := c.st.Reissue(r.Context(), rn)
	c.metrics.noteStoreLatency(storeOpIssue, time.Since(start))
	c.noteStore(err)
	if err != nil {
		return nil, renewalRefusal(err, certID, peerSerial)
	}
	if out.Replayed {
		return nil, renewalReplayOf(&out.Device, peerSerial, now)
	}
	c.wakeWebhooks()
	return cert, nil
}

// verifyClientCert checks the TLS client certificate: present, currently
// valid, issued by this CA's intermediate, for client authentication.
func (c *CA) verifyClientCert(r *http.Request, now time.Time) (*x509.Certificate, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, refuse(http.StatusUnauthorized, est.CodeClientCertRequired,
			"simplereenroll needs the current device certificate as the TLS client certificate")
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, ic := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	at := now
	if late := now.Sub(leaf.NotAfter); late > 0 && late <= c.renewGrace {
		// Expired within the grace period: the handshake proved the
		// device holds the key, and the store still checks it is the
		// device's newest (or confirmed) certificate, so verify it as of
		// its last valid moment.
		at = leaf.NotAfter
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         c.clientRoots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		msg := "the client certificate was not issued by this CA"
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			msg = fmt.Sprintf("the client certificate has expired (renewal grace %s) or is not yet valid: enroll again with a token", c.renewGrace)
		}
		return nil, &Error{Status: http.StatusUnauthorized, Code: est.CodeClientCertRequired, Msg: msg,
			Reason: fmt.Sprintf("client certificate %q serial %s: %v", leaf.Subject, SerialHex(leaf.SerialNumber), err)}
	}
	return leaf, nil
}
