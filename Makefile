# edgeagent — see README.md. Every target works on a fresh machine with Go.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED := 0

# One version for the binaries and the packages (scripts/version.sh).
VERSION ?= $(shell bash scripts/version.sh)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Build time from the commit, so two builds of one commit are identical.
BUILD_TIME ?= $(shell git log -1 --format=%cI 2>/dev/null || echo 1970-01-01T00:00:00Z)
PKG := github.com/edgeagent/edgeagent
LDFLAGS := -s -w -X $(PKG)/internal/version.Version=$(VERSION) \
	-X $(PKG)/internal/version.Commit=$(COMMIT) \
	-X $(PKG)/internal/version.BuildTime=$(BUILD_TIME)
BINS := edgeagent edgeca
FUZZTIME ?= 5s

.PHONY: all build demo test test-deps interop fuzz bench cross package lint clean

all: build

build:
	@mkdir -p bin
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

# The README's first command: a CA, an MQTT broker and an HTTPS sink that
# require client certificates, and an agent that enrolls, streams telemetry
# to both and renews minute-long certificates live, in one process with a
# live view. DEMO_SECONDS=90 runs that long and checks the run. The demo
# binary lives in .demo/bin only: it is not built by `build` or `cross`.
demo:
	@mkdir -p .demo/bin
	$(GO) build -o .demo/bin/edgedemo ./tools/demo/cmd/edgedemo
	@.demo/bin/edgedemo --dir .demo

test-deps:
	@bash scripts/test-deps.sh

# The whole suite: unit, table and end-to-end tests against real peers, the
# in-process tests again under the race detector, then a short fuzzing pass
# over every decoder. The race detector needs cgo (gcc, installed by
# test-deps); the shipped binaries stay CGO_ENABLED=0. The end-to-end, demo,
# packaging and cmd tests drive separately built processes, which -race
# would not instrument, so they run once.
RACE_PKGS = $(shell $(GO) list ./... | grep -v -E '/(testkit/e2e|tools/demo)(/|$$)|/packaging$$|/cmd/')
test: test-deps lint
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) interop
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m $(RACE_PKGS)
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

# edgeagent and edgeca against an EST implementation this project did not
# write (GlobalSign's): enroll/interop runs edgeagent against its server,
# ca/interop its client against edgeca. Each is a module of its own (its
# go-tpm v0.3 cannot share a build with ours), outside ./... .
INTEROP_MODULES = enroll/interop ca/interop
interop:
	@for m in $(INTEROP_MODULES) $(BENCH_PEER); do (cd $$m && $(GO) test -count=1 -timeout 10m ./...) || exit 1; done

fuzz:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	@for m in $(INTEROP_MODULES) $(BENCH_PEER); do (cd $$m && $(GO) vet ./...) || exit 1; done
	GOARCH=arm GOARM=7 $(GO) vet ./...   # 32-bit: catches constants that overflow int on armv6/v7

# Every figure next to a baseline measured in the same run: enrollment vs
# raw ECDSA signing, the spool vs a plain file, the agent's MQTT path vs
# mosquitto_pub on the same listener (plus the agent's RSS), and edgeca
# beside GlobalSign's EST server and smallstep's step-ca driven by the same
# clients (a module of its own, as the interop ones, running a built edgeca
# and a step-ca it builds from tools/bench/stepca: minutes the first time).
# tools/bench/stepca only pins step-ca (a build-tagged tools.go, nothing to
# vet or test), so it is in no loop: only bench builds it.
BENCH_PEER = tools/bench/peer
bench: test-deps
	$(GO) run ./tools/bench
	$(GO) test -run '^$$' -bench . -benchtime 1x ./uplink/spool ./testkit/e2e
	cd $(BENCH_PEER) && GO=$(GO) $(GO) run .

cross:
	@mkdir -p dist
	@for t in amd64: arm64: arm:7 arm:6; do \
		arch=$${t%%:*}; arm=$${t##*:}; suffix=$$arch$${arm:+v$$arm}; \
		for b in $(BINS); do \
			GOOS=linux GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath -ldflags '$(LDFLAGS)' \
				-o dist/$$b-linux-$$suffix ./cmd/$$b || exit 1; \
			printf '%-28s %8d bytes\n' dist/$$b-linux-$$suffix $$(stat -c %s dist/$$b-linux-$$suffix); \
		done; \
	done

# .deb, .rpm and .apk of edgeagent and edgeca for every architecture, in
# dist/packages (nfpm, pinned in the script).
package: cross
	PKG_VERSION=$(VERSION) bash scripts/package.sh

clean:
	rm -rf bin dist .demo
