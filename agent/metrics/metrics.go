// Package metrics writes the Prometheus text exposition format (version
// 0.0.4) for the agent's health endpoint. The agent has a dozen series, so a
// snapshot function that lists them beats pulling in a client library.
package metrics

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Type is a metric family type.
type Type string

// Family types the agent uses.
const (
	Counter Type = "counter"
	Gauge   Type = "gauge"
)

// Family is one metric name with its help text and samples.
type Family struct {
	Name    string
	Help    string
	Type    Type
	Samples []Sample
}

// Sample is one labelled value.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Write renders families in order, each sample's labels sorted by name.
func Write(w io.Writer, fams []Family) error {
	var b strings.Builder
	for _, f := range fams {
		if !validName(f.Name) {
			return fmt.Errorf("metrics: invalid metric name %q", f.Name)
		}
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.Name, escapeHelp(f.Help), f.Name, f.Type)
		for _, s := range f.Samples {
			b.WriteString(f.Name)
			if len(s.Labels) > 0 {
				keys := make([]string, 0, len(s.Labels))
				for k := range s.Labels {
					if !validName(k) || strings.Contains(k, ":") {
						return fmt.Errorf("metrics: %s: invalid label name %q", f.Name, k)
					}
					keys = append(keys, k)
				}
				sort.Strings(keys)
				b.WriteByte('{')
				for i, k := range keys {
					if i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=\"%s\"", k, escapeLabel(s.Labels[k]))
				}
				b.WriteByte('}')
			}
			b.WriteByte(' ')
			b.WriteString(formatValue(s.Value))
			b.WriteByte('\n')
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if !(r == '_' || r == ':' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`).Replace(s)
}

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
