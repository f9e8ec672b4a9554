package agent

import (
	"fmt"
	"runtime"
	"sort"
	"time"

	"github.com/edgeagent/edgeagent/agent/lifecycle"
	"github.com/edgeagent/edgeagent/agent/metrics"
	"github.com/edgeagent/edgeagent/internal/version"
)

// Status is what `edgeagent status` and GET /v1/status report.
type Status struct {
	// Now is the agent's (corrected) clock when the snapshot was taken:
	// status prints times relative to it, not to the caller's clock.
	Now          time.Time         `json:"now"`
	DeviceID     string            `json:"device_id"`
	Keystore     string            `json:"keystore"`
	KeystoreInfo map[string]string `json:"keystore_info,omitempty"`
	Serial       string            `json:"serial"`
	NotBefore    time.Time         `json:"not_before"`
	NotAfter     time.Time         `json:"not_after"`
	NextRenew    time.Time         `json:"next_renewal"`
	LastRenew    RenewStatus       `json:"last_renewal"`
	// Phase is valid, renewing (past the renewal time) or expired.
	Phase string `json:"phase"`
	// Expired, when the certificate expired, says what the expired
	// policy (ExpiredPolicy) is doing about it.
	Expired       string `json:"expired,omitempty"`
	ExpiredPolicy string `json:"expired_policy"`
	// Revoked, when set, says the CA revoked the device (Phase revoked).
	Revoked string `json:"revoked,omitempty"`
	// ClockSkew is the correction applied to the system clock (0s when it
	// is trusted as is); ClockSkewSeconds the same in seconds.
	ClockSkew        string  `json:"clock_skew"`
	ClockSkewSeconds float64 `json:"clock_skew_seconds"`
	// ClockMeasured is the CA's clock minus the system clock, as last
	// measured from an EST answer's Date header ("" before any).
	ClockMeasured string `json:"clock_measured_skew,omitempty"`
	// Clock says whether the system clock is plausible and corrected.
	Clock           string                  `json:"clock"`
	Uplinks         map[string]UplinkStatus `json:"uplinks"`
	CommandsDropped uint64                  `json:"commands_dropped"`
	// Healthy is false when Problems lists why: /healthz answers 503
	// and `edgeagent status` exits 1.
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems,omitempty"`
	// Attest is the enrollment attestation (enroll.attest), "" for none.
	Attest string `json:"attest,omitempty"`
}

// RenewStatus is the outcome of the last renewal attempt.
type RenewStatus struct {
	At     time.Time         `json:"at,omitempty"`
	Result string            `json:"result,omitempty"`
	Error  string            `json:"error,omitempty"`
	Counts map[string]uint64 `json:"counts"`
}

// UplinkStatus is one backend's connection and spool.
type UplinkStatus struct {
	Connected bool   `json:"connected"`
	LastError string `json:"last_error,omitempty"`
	Acked     uint64 `json:"acked"`
	// Errors counts failed sends (HTTPS batches, MQTT connections lost).
	Errors uint64 `json:"errors"`
	// Dropping: the backend acknowledges messages it does not deliver
	// (MQTT: the agent's own retained status never came back), so Acked
	// proves nothing.
	Dropping     bool   `json:"dropping,omitempty"`
	SpoolDepth   int    `json:"spool_depth"`
	SpoolBytes   int64  `json:"spool_bytes"`
	SpoolDropped uint64 `json:"spool_dropped"`
	SpoolLost    uint64 `json:"spool_lost"`            // records lost to damage on disk, since start
	SpoolRefused uint64 `json:"spool_refused"`         // messages refused because they could not be stored
	SpoolError   string `json:"spool_error,omitempty"` // set while storing fails (a full disk, say)
}

// Status returns a snapshot.
func (d *Daemon) Status() Status {
	id, r := d.ren.snapshot()
	counts := r.Renewals
	st := Status{
		Now:              d.clock.Now().UTC().Round(0),
		DeviceID:         id.DeviceID,
		Keystore:         d.ks.Info().Backend,
		KeystoreInfo:     d.ks.Info().Details,
		Attest:           d.config().Enroll.Attest,
		Serial:           id.Serial(),
		NotBefore:        id.Leaf().NotBefore,
		NotAfter:         id.Leaf().NotAfter,
		NextRenew:        r.Next,
		LastRenew:        RenewStatus{At: r.LastAt, Result: r.LastResult, Error: r.LastError, Counts: counts},
		Phase:            phaseOf(d.clock.Now(), r.Due, id.NotAfter()),
		Expired:          r.Expired,
		Revoked:          r.Revoked,
		ExpiredPolicy:    d.renewSettings().ExpiredPolicy,
		ClockSkew:        d.clock.Offset().Round(time.Millisecond).String(),
		ClockSkewSeconds: d.clock.Offset().Seconds(),
		Clock:            d.clockStatus(id),
		Uplinks:          map[string]UplinkStatus{},
		CommandsDropped:  d.hub.Dropped(),
	}
	if r.Revoked != "" {
		st.Phase = "revoked"
	}
	if m, ok := d.clock.Measured(); ok {
		st.ClockMeasured = m.Round(time.Millisecond).String()
	}
	for _, p := range d.uplinks {
		ss := p.spool.Stats()
		u := UplinkStatus{SpoolDepth: ss.Depth, SpoolBytes: ss.Bytes, SpoolDropped: ss.Dropped, SpoolLost: ss.Lost, SpoolRefused: ss.Refused}
		if ss.WriteError != "" {
			u.SpoolError = fmt.Sprintf("cannot store messages since %s: %s", ss.WriteFailingSince.UTC().Format(time.RFC3339), ss.WriteError)
		}
		if up := p.uplink(); up != nil {
			s := up.State()
			u.Connected, u.LastError, u.Acked, u.Errors, u.Dropping = s.Connected, s.LastError, s.Acked, s.Errors, s.Dropping
		}
		st.Uplinks[p.name] = u
	}
	return st
}

// phaseOf is the certificate's phase; before the first schedule is known
// (next zero) it is valid until expiry.
func phaseOf(now, next, notAfter time.Time) string {
	if next.IsZero() {
		next = notAfter
	}
	return lifecycle.PhaseAt(now, next, notAfter).String()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricFamilies are the series of st (a health snapshot).
func (d *Daemon) metricFamilies(st Status) []metrics.Family {
	now := d.clock.Now()
	skew, ok := d.clock.Measured()
	if !ok {
		skew = d.clock.Offset()
	}
	renewals := metrics.Family{Name: "edgeagent_renewals_total", Help: "Certificate renewals by result.", Type: metrics.Counter}
	for _, res := range []string{"ok", "error", "rebootstrap", "not_extended", "revoked"} {
		renewals.Samples = append(renewals.Samples, metrics.Sample{Labels: map[string]string{"result": res}, Value: float64(st.LastRenew.Counts[res])})
	}
	fams := []metrics.Family{
		{Name: "edgeagent_cert_expiry_seconds", Help: "Seconds until the device certificate expires.", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: st.NotAfter.Sub(now).Seconds()}}},
		{Name: "edgeagent_cert_next_renewal_seconds", Help: "Seconds until the next scheduled renewal.", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: st.NextRenew.Sub(now).Seconds()}}},
		renewals,
		{Name: "edgeagent_clock_skew_seconds", Help: "The CA's clock minus the system clock, from the last EST answer's Date header (the applied correction before any).", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: skew.Seconds()}}},
		{Name: "edgeagent_clock_correction_seconds", Help: "Correction applied to the system clock because it was implausible.", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: st.ClockSkewSeconds}}},
		{Name: "edgeagent_cert_expired", Help: "1 when the device certificate has expired (see the expired policy).", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: b2f(!now.Before(st.NotAfter))}}},
		{Name: "edgeagent_cert_not_after_timestamp_seconds", Help: "When the device certificate expires, in seconds since the epoch.", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: float64(st.NotAfter.Unix())}}},
		{Name: "edgeagent_healthy", Help: "1 when the agent is healthy (see /healthz for why not).", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: b2f(st.Healthy)}}},
		{Name: "edgeagent_build_info", Help: "The agent's version; always 1.", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Labels: map[string]string{"version": version.Version, "commit": version.Commit, "goversion": runtime.Version()}, Value: 1}}},
		{Name: "edgeagent_device_revoked", Help: "1 when the CA has revoked this device (terminal until it is enrolled again).", Type: metrics.Gauge,
			Samples: []metrics.Sample{{Value: b2f(st.Revoked != "")}}},
	}
	names := make([]string, 0, len(st.Uplinks))
	for n := range st.Uplinks {
		names = append(names, n)
	}
	sort.Strings(names)
	up := metrics.Family{Name: "edgeagent_uplink_connected", Help: "1 when the uplink is connected.", Type: metrics.Gauge}
	acked := metrics.Family{Name: "edgeagent_messages_total", Help: "Messages by uplink and result.", Type: metrics.Counter}
	depth := metrics.Family{Name: "edgeagent_spool_messages", Help: "Messages waiting in the spool.", Type: metrics.Gauge}
	bytes := metrics.Family{Name: "edgeagent_spool_bytes", Help: "Bytes on disk in the spool.", Type: metrics.Gauge}
	drops := metrics.Family{Name: "edgeagent_uplink_broker_dropping", Help: "1 when the backend acknowledges messages it does not deliver (MQTT: the agent's own retained status did not come back).", Type: metrics.Gauge}
	sendErrs := metrics.Family{Name: "edgeagent_uplink_send_errors_total", Help: "Failed sends by uplink (HTTPS batches that failed, MQTT connections lost).", Type: metrics.Counter}
	failing := metrics.Family{Name: "edgeagent_spool_write_failing", Help: "1 while the spool cannot store messages (the local API refuses them).", Type: metrics.Gauge}
	for _, n := range names {
		u := st.Uplinks[n]
		l := map[string]string{"uplink": n}
		up.Samples = append(up.Samples, metrics.Sample{Labels: l, Value: b2f(u.Connected)})
		acked.Samples = append(acked.Samples,
			metrics.Sample{Labels: map[string]string{"uplink": n, "result": "acked"}, Value: float64(u.Acked)},
			metrics.Sample{Labels: map[string]string{"uplink": n, "result": "dropped"}, Value: float64(u.SpoolDropped)},
			metrics.Sample{Labels: map[string]string{"uplink": n, "result": "lost"}, Value: float64(u.SpoolLost)},
			metrics.Sample{Labels: map[string]string{"uplink": n, "result": "refused"}, Value: float64(u.SpoolRefused)})
		failing.Samples = append(failing.Samples, metrics.Sample{Labels: l, Value: b2f(u.SpoolError != "")})
		depth.Samples = append(depth.Samples, metrics.Sample{Labels: l, Value: float64(u.SpoolDepth)})
		bytes.Samples = append(bytes.Samples, metrics.Sample{Labels: l, Value: float64(u.SpoolBytes)})
		sendErrs.Samples = append(sendErrs.Samples, metrics.Sample{Labels: l, Value: float64(u.Errors)})
		drops.Samples = append(drops.Samples, metrics.Sample{Labels: l, Value: b2f(u.Dropping)})
	}
	fams = append(fams, up, acked, depth, bytes, failing, sendErrs, drops)
	return append(fams, processFamilies(d.started)...)
}
