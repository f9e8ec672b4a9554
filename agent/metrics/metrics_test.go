package metrics

import (
	"math"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	var b strings.Builder
	err := Write(&b, []Family{
		{Name: "edgeagent_cert_expiry_seconds", Help: "Seconds until the certificate expires.", Type: Gauge,
			Samples: []Sample{{Value: 3600.5}}},
		{Name: "edgeagent_renewals_total", Help: "Renewals by result.", Type: Counter, Samples: []Sample{
			{Labels: map[string]string{"result": "ok"}, Value: 3},
			{Labels: map[string]string{"result": "error", "a": "x\"y\\z\n"}, Value: 1},
		}},
		{Name: "edgeagent_skew", Help: "line1\nline2", Type: Gauge, Samples: []Sample{{Value: math.Inf(-1)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `# HELP edgeagent_cert_expiry_seconds Seconds until the certificate expires.
# TYPE edgeagent_cert_expiry_seconds gauge
edgeagent_cert_expiry_seconds 3600.5
# HELP edgeagent_renewals_total Renewals by result.
# TYPE edgeagent_renewals_total counter
edgeagent_renewals_total{result="ok"} 3
edgeagent_renewals_total{a="x\"y\\z\n",result="error"} 1
# HELP edgeagent_skew line1\nline2
# TYPE edgeagent_skew gauge
edgeagent_skew -Inf
`
	if b.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestWriteRejectsBadNames(t *testing.T) {
	for _, f := range []Family{
		{Name: "", Type: Gauge},
		{Name: "1abc", Type: Gauge},
		{Name: "a-b", Type: Gauge},
		{Name: "ok", Type: Gauge, Samples: []Sample{{Labels: map[string]string{"a:b": "x"}}}},
	} {
		if err := Write(&strings.Builder{}, []Family{f}); err == nil {
			t.Errorf("%+v accepted", f)
		}
	}
}
