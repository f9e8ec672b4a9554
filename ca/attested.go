package ca

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/edgeagent/edgeagent/ca/attest"
	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/deviceid"
	wire "github.com/edgeagent/edgeagent/enroll/attest"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// Error codes of attested enrollment.
const (
	CodeAttestationFailed   est.Code = "attestation_failed"   // 403: a check of the TPM's evidence failed
	CodeAttestationRequired est.Code = "attestation_required" // 403: the token or the CA requires attested enrollment
)

// Settings keys. The EK binding and the token requirement live in the
// settings table for now, beside the store schema that issue 14 rewrites;
// they belong in the device and token records.
const (
	settingTokenRequiresTPM = "token.require_tpm."
	settingDeviceEK         = "device.ek_sha256."
)

// AttestOptions configures attested enrollment.
type AttestOptions struct {
	// Roots (manufacturer root CAs), Intermediates and Allowlist (EK
	// public key hashes) decide which TPMs are genuine; see attest.Config.
	Roots, Intermediates *x509.CertPool
	Allowlist            map[[32]byte]bool
	NonceTTL             time.Duration
	// RequireTPM makes every token enrollment need attestation, whatever
	// the token says (the CA-wide default of --require-tpm).
	RequireTPM bool
	// Recovery lets a device whose EK is on record enroll again by
	// attestation alone, without a token: the way back for a device whose
	// certificate expired beyond the renewal grace.
	Recovery bool
}

type attestState struct {
	v                    *attest.Verifier
	requireTPM, recovery bool
}

func newAttestState(o *AttestOptions, now func() time.Time) *attestState {
	if o == nil {
		return nil
	}
	return &attestState{
		v:          attest.New(attest.Config{Roots: o.Roots, Intermediates: o.Intermediates, Allowlist: o.Allowlist, NonceTTL: o.NonceTTL, Now: now}),
		requireTPM: o.RequireTPM, recovery: o.Recovery,
	}
}

// attestedKey is what a successful attestation proved about a CSR's key.
type attestedKey struct{ ekHash [32]byte }

func (k *attestedKey) ekHex() string { return hex.EncodeToString(k.ekHash[:]) }

// attestOp recognizes /.well-known/est/[label/]attest/{start,finish}.
func attestOp(p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, est.PathPrefix)
	if !ok {
		return "", false
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 && validLabel(rest[:i]) && (rest[i+1:] == wire.OpStart || rest[i+1:] == wire.OpFinish) {
		rest = rest[i+1:]
	}
	if rest == wire.OpStart || rest == wire.OpFinish {
		return rest, true
	}
	return "", false
}

// serveAttest serves the attested enrollment extension; false when the
// path is not one of its resources.
func (c *CA) serveAttest(w http.ResponseWriter, r *http.Request) bool {
	op, ok := attestOp(r.URL.Path)
	if !ok {
		return false
	}
	if !allowMethod(w, r, http.MethodPost) {
		return true
	}
	if c.attest == nil {
		writeError(w, refuse(http.StatusNotFound, est.CodeNotFound, "this CA does not offer attested enrollment (edgeca serve --attest-roots or --attest-allowlist)"))
		return true
	}
	if op == wire.OpStart {
		c.attestStart(w, r)
		return true
	}
	c.enroll(w, r, wire.OpFinish)
	return true
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != wire.MediaJSON {
		return refuse(http.StatusUnsupportedMediaType, est.CodeWrongContentType, "send "+wire.MediaJSON)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wire.MaxRequestBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return refuse(http.StatusRequestEntityTooLarge, est.CodeBodyTooLarge, fmt.Sprintf("request body is over the %d byte limit", wire.MaxRequestBytes))
		}
		return refuse(http.StatusBadRequest, est.CodeBadCSR, "reading the request body: "+err.Error())
	}
	if err := json.Unmarshal(body, v); err != nil {
		return refuse(http.StatusBadRequest, est.CodeBadCSR, "request body is not the expected JSON: "+err.Error())
	}
	return nil
}

func attestRefusal(err error) *Error {
	var ae *attest.Error
	if errors.As(err, &ae) {
		return &Error{Status: http.StatusForbidden, Code: CodeAttestationFailed, Msg: ae.Error()}
	}
	if errors.Is(err, attest.ErrBusy) {
		return &Error{Status: http.StatusServiceUnavailable, Code: est.CodeRateLimited, Msg: "too many attestations in progress: retry later", RetryAfter: time.Second}
	}
	return nil
}

func (c *CA) attestStart(w http.ResponseWriter, r *http.Request) {
	a := attempt{op: wire.OpStart, peer: r.RemoteAddr}
	var req wire.StartRequest
	err := readJSON(w, r, &req)
	var resp *wire.StartResponse
	if err == nil {
		resp, err = c.attest.v.Start(req)
	}
	if err != nil {
		e := attestRefusal(err)
		if e == nil && !errors.As(err, &e) {
			e = &Error{Status: http.StatusInternalServerError, Code: est.CodeInternal, Msg: "internal error, see the edgeca log", Reason: err.Error()}
		}
		c.recordFailure(r.Context(), a, e)
		drain(r.Body)
		writeError(w, e)
		return
	}
	b, _ := json.Marshal(resp)
	w.Header().Set("Content-Type", wire.MediaJSON)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
}

// attestFinish checks the evidence and enrolls: with a token (HTTP Basic)
// as simpleenroll does, or without one as the recovery of a device whose
// EK is on record.
func (c *CA) attestFinish(w http.ResponseWriter, r *http.Request, a *attempt) (*x509.Certificate, error) {
	var req wire.FinishRequest
	if err := readJSON(w, r, &req); err != nil {
		return nil, err
	}
	if len(req.CSR) == 0 {
		return nil, refuse(http.StatusBadRequest, est.CodeBadCSR, "attest/finish carries no csr (the DER PKCS#10 request, base64 in the JSON)")
	}
	csr, err := ParseCSR([]byte(est.EncodeBase64(req.CSR)))
	if err != nil {
		return nil, err
	}
	a.deviceID = csr.DeviceID
	res, err := c.attest.v.Finish(req, csr.Request.PublicKey)
	if err != nil {
		if e := attestRefusal(err); e != nil {
			return nil, e
		}
		return nil, err
	}
	ak := &attestedKey{ekHash: res.EKHash}
	now := c.now()
	if user, pass, ok := r.BasicAuth(); ok {
		if len(user) > 64 {
			user = user[:64]
		}
		a.tokenID = Printable(user, maxFieldLen)
		peer := peerIP(r.RemoteAddr)
		if wait := max(c.peerGuesses.wait(peer, now), c.tokenGuesses.wait(user, now)); wait > 0 {
			return nil, &Error{Status: http.StatusTooManyRequests, Code: est.CodeRateLimited, RetryAfter: wait,
				Msg: "too many failed token checks: retry after the time in Retry-After"}
		}
		return c.tokenEnroll(r.Context(), a, user, pass, peer, now, csr, ak)
	}
	return c.recoverByAttestation(r.Context(), a, now, csr, ak)
}

// recoverByAttestation enrolls an already known device again without a
// token, if the CA allows it and the EK is the one the device enrolled with.
func (c *CA) recoverByAttestation(ctx context.Context, a *attempt, now time.Time, csr *CSR, ak *attestedKey) (*x509.Certificate, error) {
	id := deviceid.Canonical(csr.DeviceID)
	if !c.attest.recovery {
		return nil, refuse(http.StatusUnauthorized, est.CodeAuthRequired, "attested enrollment needs a token on this CA (recovery by attestation alone is off: edgeca serve --attest-recovery)")
	}
	bound, err := c.st.Setting(ctx, settingDeviceEK+id)
	if err != nil {
		return nil, fmt.Errorf("read EK binding: %w", err)
	}
	if bound == "" || bound != ak.ekHex() {
		return nil, &Error{Status: http.StatusUnauthorized, Code: est.CodeAuthRequired,
			Msg:    fmt.Sprintf("device %s did not enroll with this TPM's EK: recovery without a token is refused; enroll with a token", csr.DeviceID),
			Reason: fmt.Sprintf("EK sha256 %s, on record %q", ak.ekHex(), bound)}
	}
	rc := store.Recovery{
		DeviceID: id,
		Time:     now,
		Audit: store.AuditRecord{Time: now, Op: a.op, Peer: a.peer, DeviceID: csr.DeviceID, Result: store.ResultOK,
			Reason: "recovered by TPM attestation alone (EK sha256 " + ak.ekHex() + ")"},
	}
	cert, iss, err := c.sign(csr, now)
	if err != nil {
		return nil, err
	}
	rc.Issuance = iss
	rc.Outbox = c.issuedEvents(ctx, "", id, now, iss, a.peer) // webhook_hooks.go
	_, err = c.st.Recover(ctx, rc)
	c.noteStore(err)
	if err == nil {
		c.wakeWebhooks()
	}
	var r *store.Refusal
	switch {
	case errors.As(err, &r) && r.Kind == store.RefuseDeviceUnknown:
		return nil, refuse(http.StatusUnauthorized, est.CodeAuthRequired, fmt.Sprintf("device %s is not enrolled: enroll with a token", csr.DeviceID))
	case errors.As(err, &r) && r.Kind == store.RefuseDeviceRevoked:
		return nil, &Error{Status: http.StatusForbidden, Code: est.CodeDeviceRevoked,
			Msg: fmt.Sprintf("device %s is revoked", csr.DeviceID), Reason: "attested recovery of a revoked device"}
	case err != nil:
		return nil, err
	}
	return cert, nil
}

// refuseUnattested refuses a plain token enrollment when the CA or the
// token requires attestation.
func (c *CA) refuseUnattested(ctx context.Context, tokenID string) error {
	msg := "this CA requires TPM-attested enrollment: set enroll.attest: tpm on the device (a software key cannot enroll)"
	if c.attest == nil || !c.attest.requireTPM {
		v, err := c.st.Setting(ctx, settingTokenRequiresTPM+tokenID)
		if err != nil {
			return fmt.Errorf("read token policy: %w", err)
		}
		if v == "" {
			return nil
		}
		msg = "this token requires TPM-attested enrollment (created with --require-tpm): set enroll.attest: tpm on the device (a software key cannot enroll)"
	}
	return &Error{Status: http.StatusForbidden, Code: CodeAttestationRequired, Msg: msg}
}

// bindEK records the EK a device enrolled with. A failure leaves the device
// enrolled but unable to recover by attestation alone, so it is logged and
// not returned: the certificate is already issued.
func (c *CA) bindEK(ctx context.Context, deviceID string, ak *attestedKey) error {
	if err := c.st.SetSetting(context.WithoutCancel(ctx), settingDeviceEK+deviceID, ak.ekHex()); err != nil {
		c.log.Error("record the device's EK (recovery by attestation will be refused)", "device", deviceID, "err", err)
	}
	return nil
}

// DeviceEK returns the SHA-256 (hex) of the EK a device enrolled with, ""
// when it never enrolled with attestation.
func (c *CA) DeviceEK(ctx context.Context, id string) (string, error) {
	return c.st.Setting(ctx, settingDeviceEK+deviceid.Canonical(id))
}

// TokenRequiresTPM says whether a token was created with --require-tpm.
func (c *CA) TokenRequiresTPM(ctx context.Context, id string) (bool, error) {
	v, err := c.st.Setting(ctx, settingTokenRequiresTPM+id)
	return v != "", err
}
