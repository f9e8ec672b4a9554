//go:build tools

// Package stepca pins smallstep's step-ca, a CA that keeps what it issues,
// for the `make bench` row that puts edgeca beside it (tools/bench/peer
// builds and runs it as a process). It is a module of its own so that
// step-ca's dependency tree never enters the edgeagent module, nor the
// bench peer's (GlobalSign est needs go-tpm v0.3). Nothing here is shipped
// or linked into edgeagent or edgeca; the build tag keeps `go vet` and
// `go test` from compiling step-ca.
//
// Built by: go build -o step-ca github.com/smallstep/certificates/cmd/step-ca
package stepca

import _ "github.com/smallstep/certificates/cmd/step-ca"
