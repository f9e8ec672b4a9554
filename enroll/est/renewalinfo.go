package est

import "time"

// OpRenewalInfo is edgeca's ARI-like resource (after RFC 9773, ACME
// Renewal Information): GET with the device's client certificate answers
// RenewalInfo, the window in which the CA suggests renewing it. Not part
// of RFC 7030; a server without it answers 404 and the agent keeps its own
// schedule.
const OpRenewalInfo = "renewal-info"

// MediaJSON is the renewal-info answer's media type.
const MediaJSON = "application/json"

// RenewalInfo is the renewal-info answer, shaped like RFC 9773's.
type RenewalInfo struct {
	SuggestedWindow Window `json:"suggestedWindow"`
	// ExplanationURL, when set, says why the window moved.
	ExplanationURL string `json:"explanationURL,omitempty"`
}

// Window is a time range, start inclusive.
type Window struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}
