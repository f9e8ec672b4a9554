package agent

import (
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/edgeagent/edgeagent/agent/lifecycle"
	"github.com/edgeagent/edgeagent/agent/metrics"
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
	Connected    bool   `json:"connected"`
	LastError    string `json:"last_error,omitempty"`
	Acked        uint64 `json:"acked"`
	SpoolDepth   int    `json:"spool_depth"`
	SpoolBytes   int64  `json:"spool_bytes"`
	SpoolDropped uint64 `json:"spool_dropped"`
	SpoolLost    uint64 `json:"spool_lost"`            // records lost to damage on disk, since start
	SpoolRefused uint64 `json:"spool_refused"`         // messages refused because they could not be stored
	SpoolError   string `json:"spool_error,omitempty"` // set while storing fails (a full disk, say)
}

// UplinkStats is implemented by uplinks that report their connection.
type UplinkStats interface {
	Connected() bool
	LastError() string
	Acked() uint64
}

// Status returns a snapshot.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	id, r := d.ident, d.renewal
	counts := map[string]uint64{}
	for k, v := range r.Renewals {
		counts[k] = v
	}
	d.mu.Unlock()
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
		ExpiredPolicy:    d.renewSettings().ExpiredPolicy,
		ClockSkew:        d.clock.Offset().Round(time.Millisecond).String(),
		ClockSkewSeconds: d.clock.Offset().Seconds(),
		Clock:            d.clockStatus(id),
		Uplinks:          map[string]UplinkStatus{},
		CommandsDropped:  d.hub.Dropped(),
	}
	if m, ok := d.clock.Measured(); ok {
		st.ClockMeasured = m.Round(time.Millisecond).String()
	}
	hsender, mq := d.uplinks()
	for name, sp := range d.spools {
		ss := sp.Stats()
		u := UplinkStatus{SpoolDepth: ss.Depth, SpoolBytes: ss.Bytes, SpoolDropped: ss.Dropped, SpoolLost: ss.Lost, SpoolRefused: ss.Refused}
		if ss.WriteError != "" {
			u.SpoolError = fmt.Sprintf("cannot store messages since %s: %s", ss.WriteFailingSince.UTC().Format(time.RFC3339), ss.WriteError)
		}
		switch name {
		case "https":
			hs := hsender.Stats()
			u.Connected, u.LastError, u.Acked = hs.Connected, hs.LastError, hs.Acked
		case "mqtt":
			if s, ok := mq.(UplinkStats); ok {
				u.Connected, u.LastError, u.Acked = s.Connected(), s.LastError(), s.Acked()
			}
		}
		st.Uplinks[name] = u
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

// metricsHandler serves /healthz and /metrics (Prometheus text format).
func (d *Daemon) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := d.Status()
		if d.clock.Now().After(st.NotAfter) {
			http.Error(w, "certificate expired", http.StatusServiceUnavailable)
			return
		}
		if msg := spoolHealth(st.Uplinks); msg != "" {
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_ = metrics.Write(w, d.metricFamilies())
	})
	return mux
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (d *Daemon) metricFamilies() []metrics.Family {
	st := d.Status()
	now := d.clock.Now()
	skew, ok := d.clock.Measured()
	if !ok {
		skew = d.clock.Offset()
	}
	renewals := metrics.Family{Name: "edgeagent_renewals_total", Help: "Certificate renewals by result.", Type: metrics.Counter}
	for _, res := range []string{"ok", "error", "rebootstrap", "not_extended"} {
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
	}
	return append(fams, up, acked, depth, bytes, failing)
}
