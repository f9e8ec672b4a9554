// Package interop holds interoperability tests of edgeagent's EST client
// against an EST server this project did not write: GlobalSign's
// github.com/globalsign/est, a test-only dependency. It is a module of its
// own because that server needs the old go-tpm API (v0.3) while edgeagent
// uses go-tpm v0.9; the tests drive the real edgeagent binary, built from
// the parent module, so the two never meet in one build.
package interop
