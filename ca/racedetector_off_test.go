//go:build !race

package ca

const raceDetector = false
