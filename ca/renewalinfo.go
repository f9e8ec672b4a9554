package ca

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/deviceid"
	"github.com/edgeagent/edgeagent/enroll/est"
)

// renewalInfoPoll is the Retry-After of a renewal-info answer: how soon
// the device should ask again (its own interval is used when longer).
const renewalInfoPoll = time.Hour

// renewalWindow is the pure decision of a renewal-info answer for a
// certificate valid from notBefore to notAfter: normally from two thirds
// to three quarters of its lifetime (the agent acts only on a window that
// ends before its own due time, so this pulls forward only agents set to
// renew later than three quarters); with a renew-now request at
// requested, a window starting then and ending within the hour, so the
// device renews at once.
func renewalWindow(notBefore, notAfter, requested, now time.Time) est.Window {
	if !requested.IsZero() {
		return est.Window{Start: requested, End: maxTime(requested, now).Add(renewalInfoPoll)}
	}
	life := notAfter.Sub(notBefore)
	return est.Window{Start: notBefore.Add(life * 2 / 3), End: notBefore.Add(life * 3 / 4)}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// serveRenewalInfo answers GET renewal-info for the device whose client
// certificate authenticates the request. A renew-now mark (edgeca device
// renew-now) reaches the device here, at its next check, without any
// other channel to it.
func (c *CA) serveRenewalInfo(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet) {
		return
	}
	now := c.now()
	peer, err := c.verifyClientCert(r, now)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = refuse(http.StatusUnauthorized, est.CodeClientCertRequired, "renewal-info needs the device certificate as the TLS client certificate")
		}
		writeError(w, e)
		return
	}
	id, err := DeviceIDFromCert(peer)
	if err != nil {
		writeError(w, refuse(http.StatusUnauthorized, est.CodeClientCertRequired, "the client certificate does not name a device: "+err.Error()))
		return
	}
	requested, err := c.fleet.fs.RenewalRequested(r.Context(), deviceid.Canonical(id))
	if err != nil {
		c.noteStore(err)
		if errors.Is(err, store.ErrUnavailable) {
			writeError(w, unavailableError(err, jitter()))
			return
		}
		c.log.Error("renewal-info", "device", id, "err", err)
		writeError(w, refuse(http.StatusInternalServerError, est.CodeInternal, "internal error, see the edgeca log"))
		return
	}
	// The mark is cleared by the device's next issuance, in its Issue
	// transaction: one that is still here is not fulfilled yet.
	body, _ := json.Marshal(est.RenewalInfo{SuggestedWindow: renewalWindow(peer.NotBefore, peer.NotAfter, requested, now)}) // times always marshal
	h := w.Header()
	h.Set("Content-Type", est.MediaJSON)
	h.Set("Retry-After", strconv.Itoa(int(renewalInfoPoll.Seconds())))
	h.Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}
