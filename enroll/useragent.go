package enroll

import (
	"net/http"

	"github.com/edgeagent/edgeagent/internal/version"
)

// UserAgent is what the agent sends as User-Agent on every EST request, so
// that the CA's inventory knows which agent version each device runs.
func UserAgent() string { return "edgeagent/" + version.Version }

// userAgentTransport sets User-Agent on requests that do not carry one.
type userAgentTransport struct{ rt *http.Transport }

func withUserAgent(rt *http.Transport) http.RoundTripper { return userAgentTransport{rt} }

func (u userAgentTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("User-Agent") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("User-Agent", UserAgent())
	}
	return u.rt.RoundTrip(r)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// transport.
func (u userAgentTransport) CloseIdleConnections() { u.rt.CloseIdleConnections() }
