// Package interop drives edgeca with an EST implementation this project
// did not write: the client of github.com/globalsign/est. It is a module of
// its own because that client needs go-tpm v0.3 (its encoding imports the
// old tpm2 API), which the agent's go-tpm v0.9 replaces; the test runs the
// edgeca binary built from the parent module, so nothing here links
// edgeagent code. `make test` runs it (cd ca/interop && go test ./...).
package interop
