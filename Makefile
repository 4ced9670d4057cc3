# dfly — make targets. `make demo` and `make test` are the two set-up commands
# of the README; both install what they need (idempotently) first.
SHELL := /bin/bash
GO    ?= go
GOBIN := $(shell $(GO) env GOPATH)/bin
BIN   := $(CURDIR)/bin
CMDS  := dfget dforigin

.PHONY: all build deps test lint demo bench bench-store bench-dfget bench-p2p bench-image proto clean

all: build

deps:
	@.ci/install-deps

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

# The full test suite: unit tests with -race, real processes, and (as root)
# real FUSE, containerd and network-namespace tests. Ends with a line
# "tests: N passed, N failed, N skipped" and lists every skip with its reason.
test: deps
	@set -o pipefail; $(GO) test -race -timeout 30m -json ./... 2>&1 | $(GO) run ./cmd/internal/testsummary

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...

demo: deps build
	@$(BIN)/dfdemo --bin $(BIN)

bench: bench-store bench-dfget

bench-store:
	$(GO) test -run '^$$' -bench . -benchtime 64x ./blockstore

bench-dfget:
	$(GO) test -run '^$$' -bench Dfget -benchtime 3x ./cmd/dfget

# The multi-host P2P benchmark (root): network namespaces, tc rate limits,
# native vs dfly vs BitTorrent vs the physical bound; writes bench-results/
# (table, results.json, plot.png). Quick run: make bench-p2p P2P_ARGS="--n 5,10 --size 64MB"
bench-p2p: deps
	$(GO) run ./integration/netbench/cmd/netbench --out bench-results $(P2P_ARGS)

# The image benchmark (root): N hosts in network namespaces pull one 219 MB
# ordinary image at once with containerd, native vs through dfly's registry
# mirror; pull times over the bound and registry egress in copies. Appends
# its table to bench-results/image.md. Quick run: make bench-image IMAGE_N=5
IMAGE_N ?= 5,10,20
bench-image: deps
	@mkdir -p bench-results
	DFLY_BENCH_IMAGE=$(IMAGE_N) DFLY_BENCH_OUT=$(CURDIR)/bench-results/image.md $(GO) test -count=1 -timeout 60m -tags bench -run '^TestBenchImage$$' -v ./integration/mirror/

proto:
	supernode/api/gen.sh

clean:
	rm -rf $(BIN)
