# Umbra — the README's commands are these targets.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/umbra
APT_PKGS := mosquitto-clients mosquitto nodejs npm
SDK_DIR  := testdata/aws-sdk
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all run build test deps sdk-deps fmt vet fuzz fuzz-list durability bench bench-short demo clean

all: build

## run: serve on the embedded defaults (MQTT 127.0.0.1:1883, WS :8083, HTTP :8080, data in ./umbra-data)
run:
	$(GO) run ./cmd/umbra serve

## build: the umbra binary in bin/
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/umbra

## deps: Debian packages the tests use (mosquitto clients and broker for interop tests; Node.js and npm for the AWS IoT SDK tests)
deps:
	@missing=""; \
	command -v mosquitto_pub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## sdk-deps: the AWS IoT Device SDKs pinned in testdata/aws-sdk/package-lock.json (npm ci; skipped while node_modules matches the lock file)
sdk-deps: deps
	@if [ ! -f $(SDK_DIR)/node_modules/.package-lock.json ] || [ $(SDK_DIR)/package-lock.json -nt $(SDK_DIR)/node_modules/.package-lock.json ]; then \
		echo "installing the AWS IoT Device SDKs in $(SDK_DIR) (npm ci)"; \
		cd $(SDK_DIR) && npm ci --no-audit --no-fund --loglevel=error; \
	fi

## test: format check, vet, race-enabled tests, short benchmarks, every fuzz target for TEST_FUZZTIME
test: deps sdk-deps
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 12m ./...
	$(GO) test -run '^$$' -bench . -benchtime 1x -short -count=1 -timeout 5m ./...
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

## fuzz: run every fuzz target for FUZZTIME each (default 30s; make test runs each for TEST_FUZZTIME)
FUZZTIME      ?= 30s
TEST_FUZZTIME ?= 2s
# Every fuzz target (23), as <package>:<target>: go test fuzzes one target per
# invocation. fuzz-list fails when a target is missing here.
FUZZ_TARGETS := \
	./broker:FuzzBrokerConn \
	./broker:FuzzConnection \
	./broker/boltstore:FuzzLoadRecord \
	./cmd/umbra:FuzzImportFile \
	./cmd/umbra:FuzzRolloutNumberParsers \
	./cmd/umbra:FuzzRolloutTargetParsers \
	./firmware:FuzzDownloadURL \
	./firmware:FuzzRangeHeader \
	./internal/device:FuzzParseID \
	./internal/httpapi:FuzzFirmwareRequests \
	./internal/httpapi:FuzzShadowRequest \
	./internal/identity:FuzzAllow \
	./internal/identity:FuzzAllowFilter \
	./internal/identity:FuzzParseCertPEM \
	./internal/identity:FuzzParseLabels \
	./internal/policy:FuzzAllowMatchesReference \
	./internal/policy:FuzzParseRules \
	./internal/shadowclient:FuzzDispatch \
	./internal/sim:FuzzMachineDelta \
	./rollout:FuzzSpec \
	./rollout/jobs:FuzzHandleRequest \
	./shadow:FuzzHandleRequest \
	./shadow:FuzzParseRequestTopic \
	./shadow:FuzzUpdate \
	./wire:FuzzCreateRollout \
	./wire:FuzzParseRolloutID

fuzz: fuzz-list
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# fuzz-list checks that FUZZ_TARGETS names every Fuzz function of the tree.
fuzz-list:
	@found="$$(grep -rE --include='*_test.go' -o '^func Fuzz[A-Za-z0-9_]*' . | sed -E 's#^(.*)/[^/]*_test\.go:func #\1:#' | sort -u)"; \
	listed="$$(printf '%s\n' $(FUZZ_TARGETS) | sort -u)"; \
	if [ "$$found" != "$$listed" ]; then \
		echo "FUZZ_TARGETS in the Makefile does not match the fuzz targets of the tree"; \
		echo "$$found" | grep -vxF "$$listed" | sed 's/^/  not listed: /'; \
		echo "$$listed" | grep -vxF "$$found" | sed 's/^/  no such target: /'; \
		exit 1; \
	fi

fmt:
	gofmt -l -w .

vet:
	$(GO) vet ./...

## durability: kill -9 a real `umbra serve` under load and check nothing acknowledged is lost (docs/testing.md)
DURABILITY_ROUNDS  ?= 5
DURABILITY_DEVICES ?= 200
durability:
	UMBRA_DURABILITY_ROUNDS=$(DURABILITY_ROUNDS) UMBRA_DURABILITY_DEVICES=$(DURABILITY_DEVICES) \
	UMBRA_DURABILITY_MIN_LOAD=2s UMBRA_DURABILITY_MAX_LOAD=8s \
		$(GO) test -count=1 -timeout 20m -run '^TestDurabilityKill9$$' -v ./cmd/umbra

## bench: full benchmarks (see docs/benchmarks.md)
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 60m ./...

## demo: build, serve, connect 1,000 simulated devices, roll out a firmware image with live progress (scripts/demo.sh; DEMO_* settings in its header)
demo:
	GO="$(GO)" bash scripts/demo.sh

clean:
	rm -rf bin umbra-data
