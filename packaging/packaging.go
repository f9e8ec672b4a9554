// Package packaging holds the files that ship in edgeagent's and edgeca's
// .deb, .rpm and .apk packages (see nfpm/ and `make package`). The systemd
// units are embedded here so that `edgeagent install` writes the very unit
// the packages ship: the unit text exists once.
package packaging

import _ "embed"

//go:embed systemd/edgeagent.service
var agentUnit string

//go:embed systemd/edgeca.service
var caUnit string

//go:embed sysusers/edgeagent.conf
var agentSysusers string

// Paths the packages and the agent's unit agree on.
const (
	AgentBinary = "/usr/bin/edgeagent"
	AgentConfig = "/etc/edgeagent/edgeagent.yaml"
	AgentUser   = "edgeagent"
	AgentState  = "/var/lib/edgeagent"
	// TPMGroup owns /dev/tpmrm0 on distributions with tpm-udev rules.
	TPMGroup = "tss"
)

// AgentUnit returns the systemd unit of edgeagent as packaged: ExecStart is
// /usr/bin/edgeagent with --config /etc/edgeagent/edgeagent.yaml.
func AgentUnit() string { return agentUnit }

// AgentSysusers returns the sysusers.d(5) lines that make the agent's
// account: user edgeagent in group tss.
func AgentSysusers() string { return agentSysusers }

// CAUnit returns the systemd unit of edgeca as packaged.
func CAUnit() string { return caUnit }
