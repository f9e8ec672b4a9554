//go:build race

package ca

// raceDetector: the race detector slows every handshake several times;
// the long replica races run fewer rounds under it (make test runs them
// in full without it first).
const raceDetector = true
