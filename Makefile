# dfly — make targets. `make demo` and `make test` are the two set-up commands
# of the README; both install what they need (idempotently) first.
SHELL := /bin/bash
GO    ?= go
GOBIN := $(shell $(GO) env GOPATH)/bin
BIN   := $(CURDIR)/bin
CMDS  := dfget dforigin

.PHONY: all build deps test fuzz lint demo bench bench-store bench-dfget bench-p2p bench-image bench-chaos bench-flow bench-sim proto clean

all: build

deps:
	@.ci/install-deps

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

# The full test suite: unit tests with -race, real processes, and (as root)
# real FUSE, containerd and network-namespace tests; then every fuzz target
# fuzzes for FUZZTIME (.ci/fuzz; each run counts as one test, a crasher
# fails the suite and is saved under the package's testdata/fuzz/). Ends
# with a line "tests: N passed, N failed, N skipped" and lists every skip
# with its reason.
FUZZTIME ?= 5s
test: deps
	@set -o pipefail; { $(GO) test -race -timeout 30m -json ./...; rc=$$?; FUZZTIME=$(FUZZTIME) GO=$(GO) .ci/fuzz || rc=1; exit $$rc; } 2>&1 | $(GO) run ./cmd/internal/testsummary

# Longer fuzzing only (default 60s a target): make fuzz FUZZTIME=5m FUZZ_RUN=FuzzTOC
fuzz:
	@set -o pipefail; FUZZTIME=$(if $(filter command line environment,$(origin FUZZTIME)),$(FUZZTIME),60s) GO=$(GO) .ci/fuzz 2>&1 | $(GO) run ./cmd/internal/testsummary

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

# The chaos suite bigger: DFLY_CHAOS_SCALE multiplies its file sizes and
# peer counts (make test runs it at scale 1). Peers killed, a daemon and the
# supernode restarted, the origin failing or vanishing, a full disk (root), a
# damaged store, liars, a laggard; writes its table of results (time, origin
# copies, refetched blocks, liar blocks rejected) to bench-results/chaos.md.
# Quick run: make bench-chaos CHAOS_SCALE=2
CHAOS_SCALE ?= 4
bench-chaos: deps
	@mkdir -p bench-results
	DFLY_CHAOS_SCALE=$(CHAOS_SCALE) DFLY_CHAOS_OUT=$(CURDIR)/bench-results/chaos.md $(GO) test -count=1 -timeout 60m -run '^TestChaos' -v ./integration/chaos/

# Flow control (root, issue 17): a host with a steady TCP flow of its own
# (16 Mbit/s over a 40 Mbit/s link, network namespaces) downloads 256 MiB
# with dfly, --flow auto then --flow fixed; the flow's goodput against its
# share alone. Writes bench-results/flow.{md,json,png} (make test runs the
# same test with 16 MiB).
bench-flow: deps
	@mkdir -p bench-results
	DFLY_FLOW_BENCH=1 DFLY_FLOW_OUT=$(CURDIR)/bench-results $(GO) test -count=1 -timeout 30m -run '^TestFlowAutoYields$$' -v ./integration/flow/

# The swarm simulator (issue 14, no root): the real scheduler in virtual
# time over a flow-level network model, the seed's experiment (200 MB,
# 100 Mbit/s hosts, 1 Gbit/s origin); completion p50/p99/max over the
# physical bound and egress per N. Writes bench-results/sim/ (table,
# results.json, results.png). Quick run: make bench-sim SIM_N=10,100
SIM_N ?= 10,100,1000,3000,7000
bench-sim:
	$(GO) run ./integration/sim/cmd/dflysim --n $(SIM_N) --size 200MB --peer-rate 100mbit --origin-rate 1gbit --out bench-results/sim $(SIM_ARGS)

proto:
	supernode/api/gen.sh

clean:
	rm -rf $(BIN)
