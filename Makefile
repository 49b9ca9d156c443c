# azyq: food-voucher redemption gateway.
GO ?= go
PKGS := ./...
RACE_PKGS := ./ledger/... ./gateway/...

.PHONY: build test test-short bench run lint fmt soak fuzz fuzz-short loadtest compare

build:
	$(GO) build -o bin/ ./cmd/...

# The README's test command: vet, the whole suite, and the race detector on
# the packages that hold locks and money, built with the invariants tag so
# that the ledger also checks every committed record against memory.
test:
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 20m $(PKGS)
	$(GO) test -count=1 -race -tags invariants -timeout 20m $(RACE_PKGS)

test-short:
	$(GO) test -count=1 -short $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./ledger/... ./gateway/... ./bench/...

run:
	$(GO) run ./cmd/gatewayd --demo

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

# Load test a running gateway through its API (tokens as gatewayd printed
# them): make loadtest ADDR=127.0.0.1:8080 GATEWAY_ADMIN_TOKEN=… GATEWAY_WALLET_TOKEN=…
ADDR ?= 127.0.0.1:8080
LOADTEST_FLAGS ?= --duration 30s
loadtest:
	$(GO) run ./cmd/loadtest --addr $(ADDR) --json loadtest-report.json --html loadtest-report.html $(LOADTEST_FLAGS)

# The gateway side by side with PostgreSQL, Redis and no-work designs of the
# same redemption path; starts and stops everything itself.
compare:
	bench/compare/compare.sh

# A long run of the ledger's randomized model test; SEED=N replays one.
SOAK_OPS ?= 1000000
soak:
	AZYQ_SOAK_OPS=$(SOAK_OPS) $(GO) test -count=1 -timeout 60m -run '^TestModel$$' -v ./ledger/ $(if $(SEED),-seed $(SEED))

# Explore every fuzz target (stored records, request bodies, QR tokens, the
# registry CSV import) for FUZZTIME each. A failing input is written to the
# package's testdata/fuzz/<Target>/ and then fails `make test` until fixed.
# `go test` alone runs only the seed corpora.
FUZZTIME ?= 30s
FUZZ_PKGS := ./ledger ./gateway ./cmd/gatewayctl
fuzz:
	@set -e; for pkg in $(FUZZ_PKGS); do \
		list=$$($(GO) test -list '^Fuzz' $$pkg) || { echo "$$list"; exit 1; }; \
		for target in $$(echo "$$list" | grep '^Fuzz'); do \
			echo "== $$pkg $$target for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# Every fuzz target briefly, for CI.
fuzz-short:
	$(MAKE) fuzz FUZZTIME=5s
