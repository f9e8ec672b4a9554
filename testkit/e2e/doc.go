// Package e2e holds end-to-end tests that build the real edgeagent and
// edgeca binaries, run them as processes and check the results with
// independent peers (openssl, curl).
package e2e
