package ca

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"time"

	"github.com/edgeagent/edgeagent/internal/version"
)

// FleetPath is the read-only fleet page on the health address: counts by
// state, the devices closest to expiry and the recent refusals. It is
// server-rendered (html/template escapes every device-supplied string) and
// needs no script; the health address is loopback by default, and the
// page shows nothing secret (no token secrets, no keys).
const FleetPath = "/fleet"

var fleetTmpl = template.Must(template.New("fleet").Funcs(template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	},
	"left": func(t, now time.Time) string { return roughDuration(t.Sub(now)) },
	"dash": func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	},
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>edgeca fleet</title>
<style>
body{font-family:sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:24px 0 8px}
.sub{color:#666;font-size:13px}
.counts{display:flex;gap:12px;flex-wrap:wrap}
.count{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:110px}
.count .n{font-size:28px;font-weight:bold}
.active .n{color:#1a7f37}.expiring .n{color:#b08800}.renewal-failing .n{color:#cf222e}.expired .n{color:#cf222e}.revoked .n{color:#666}
table{border-collapse:collapse;background:#fff;font-size:13px;width:100%}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;white-space:nowrap}
td:last-child{white-space:normal}
th{background:#f0f0f0}
td.state-expiring{background:#fff8c5}td.state-renewal-failing{background:#ffebe9}
</style></head>
<body>
<h1>edgeca fleet</h1>
<div class="sub">{{.Total}} devices, as of {{ts .At}} (edgeca {{.Version}}, read-only; refreshed at most every 15 s)</div>
<h2>Devices by state</h2>
<div class="counts" id="counts">
{{range .States}}<div class="count {{.Name}}" id="count-{{.Name}}"><div class="n">{{.N}}</div><div>{{.Name}}</div></div>
{{end}}<div class="count" id="count-expiring-unrenewed"><div class="n">{{.ExpiringUnrenewed}}</div><div>in last third, unrenewed</div></div>
</div>
<h2>Closest to expiry</h2>
<table id="soonest"><tr><th>device</th><th>state</th><th>not after</th><th>left</th><th>last seen</th><th>agent</th><th>last renewal</th></tr>
{{range .Soonest}}<tr class="device"><td class="id">{{.ID}}</td><td class="state-{{.State}}">{{.State}}</td><td>{{ts .NotAfter}}</td><td>{{left .NotAfter $.At}}</td><td>{{ts .LastSeen}}</td><td>{{dash .Agent}}</td><td>{{dash .Renewal.Result}}{{if .Renewal.Code}} ({{.Renewal.Code}}){{end}}</td></tr>
{{else}}<tr><td colspan="7">no devices</td></tr>
{{end}}</table>
<h2>Recent refusals</h2>
<table id="refusals"><tr><th>time</th><th>op</th><th>device</th><th>token</th><th>peer</th><th>code</th><th>reason</th></tr>
{{range .Refusals}}<tr class="refusal"><td>{{ts .Time}}</td><td>{{.Op}}</td><td>{{dash .DeviceID}}</td><td>{{dash .TokenID}}</td><td>{{.Peer}}</td><td>{{.Code}}</td><td>{{.Reason}}</td></tr>
{{else}}<tr><td colspan="7">none</td></tr>
{{end}}</table>
</body></html>
`))

type stateCount struct {
	Name string
	N    int
}

func (c *CA) serveFleetPage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	fs, err := c.Summary(r.Context())
	if err != nil {
		c.noteStore(err)
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "fleet summary unavailable: %v\n", err)
		return
	}
	data := struct {
		FleetSummary
		States  []stateCount
		Version string
	}{FleetSummary: fs, Version: version.Version}
	for _, st := range States {
		data.States = append(data.States, stateCount{st, fs.Counts[st]})
	}
	var buf bytes.Buffer
	if err := fleetTmpl.Execute(&buf, data); err != nil {
		c.log.Error("render fleet page", "err", err)
		http.Error(w, "internal error, see the edgeca log", http.StatusInternalServerError)
		return
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	_, _ = w.Write(buf.Bytes())
}

// roughDuration is d for people: "3h12m", "45s", "-2m" (past).
func roughDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + roughDuration(-d)
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return d.Truncate(time.Minute).String()
	}
	return d.Truncate(time.Second).String()
}
