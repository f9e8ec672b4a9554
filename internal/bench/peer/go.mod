module github.com/edgeagent/edgeagent/internal/bench/peer

go 1.26.8

require (
	github.com/edgeagent/edgeagent v0.0.0
	github.com/globalsign/est v1.0.6
)

require (
	github.com/dustin/go-humanize v1.1.0 // indirect
	github.com/go-chi/chi v4.1.2+incompatible // indirect
	github.com/google/go-tpm v0.9.8 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/mattn/go-isatty v0.0.24 // indirect
	github.com/ncruces/go-strftime v1.1.0 // indirect
	github.com/remyoudompheng/bigfft v0.0.0-20230129092748-24d4a6f8daec // indirect
	go.mozilla.org/pkcs7 v0.0.0-20200128120323-432b2356ecb1 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/time v0.0.0-20210220033141-f8bda1e9f3ba // indirect
	modernc.org/libc v1.79.0 // indirect
	modernc.org/mathutil v1.7.1 // indirect
	modernc.org/memory v1.12.1 // indirect
	modernc.org/sqlite v1.61.1 // indirect
)

replace github.com/edgeagent/edgeagent => ../../..

// globalsign/est is built against go-tpm's v0.3 API (tpm2.DecodePublic),
// which v0.9, edgeagent's, no longer has. The edgeagent packages this
// program imports (ca, enroll, enroll/est, enroll/token) do not use go-tpm,
// so the whole build can take v0.3.2. (`go mod tidy` follows the tests of
// those packages into go-tpm v0.9 code: tidy with `go mod tidy -e`.)
replace github.com/google/go-tpm => github.com/google/go-tpm v0.3.2
