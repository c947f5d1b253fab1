# Umbra — the README's commands are these targets.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/umbra
SDK_DIR  := testdata/aws-sdk
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PREFIX   ?= /usr/local
# ARGS are passed to `umbra serve` by make run, e.g. make run ARGS='--config umbra.yaml'.
ARGS     ?=

.PHONY: all run build install dist docker test deps screenshots apt-deps go-deps sdk-deps nats-deps fmt vet cross fuzz fuzz-list durability bench bench-short demo cluster-demo clean

all: build

## run: build bin/umbra, then serve on the embedded defaults (MQTT 127.0.0.1:1883, WS :8083, HTTP :8080, data in ./umbra-data); ARGS='…' adds serve flags
run: build
	./$(BIN) serve $(ARGS)

## build: the umbra binary in bin/, stamped with VERSION (git describe); the first build compiles every dependency and says so
build:
	@if [ -x $(BIN) ]; then echo "building $(BIN) $(VERSION)"; \
	else echo "building $(BIN) $(VERSION): the first build downloads and compiles every dependency, which takes a few minutes on 2 cores; later builds take seconds"; fi
	@$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/umbra

## install: build, then install the binary as $(DESTDIR)$(PREFIX)/bin/umbra (default /usr/local/bin/umbra)
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/umbra

# Release builds: static (CGO off), -trimpath, stripped, stamped with VERSION;
# archives are reproducible (sorted, owner 0, mtime of the last commit).
DIST_DIR    ?= dist
DIST_ARCHES ?= amd64 arm64
DIST_FILES  := LICENSE README.md packaging/umbra.service packaging/umbra.yaml
DIST_EPOCH  := $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
RELEASE_LDFLAGS := -s -w $(LDFLAGS)

## dist: release archives dist/umbra-VERSION-linux-{amd64,arm64}.tar.gz (binary, LICENSE, third-party licences, README, systemd unit, sample config) and dist/umbra-VERSION-SHA256SUMS
dist:
	@set -e; mkdir -p $(DIST_DIR); \
	for arch in $(DIST_ARCHES); do \
		name=umbra-$(VERSION)-linux-$$arch; dir=$(DIST_DIR)/$$name; \
		echo "building $$name"; \
		rm -rf $$dir $$dir.tar.gz; mkdir -p $$dir; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(RELEASE_LDFLAGS)" -o $$dir/umbra ./cmd/umbra; \
		cp $(DIST_FILES) $$dir/; \
		GO="$(GO)" sh scripts/third-party-licenses.sh $$dir/umbra > $$dir/THIRD_PARTY_LICENSES; \
		chmod 0755 $$dir $$dir/umbra; chmod 0644 $$dir/THIRD_PARTY_LICENSES $(foreach f,$(DIST_FILES),$$dir/$(notdir $(f))); \
		tar --sort=name --mtime=@$(DIST_EPOCH) --owner=0 --group=0 --numeric-owner -C $(DIST_DIR) -cf - $$name | gzip -9n > $$dir.tar.gz; \
		rm -rf $$dir; \
	done; \
	cd $(DIST_DIR) && sha256sum $(foreach a,$(DIST_ARCHES),umbra-$(VERSION)-linux-$(a).tar.gz) > umbra-$(VERSION)-SHA256SUMS; \
	echo "$(DIST_DIR)/umbra-$(VERSION)-SHA256SUMS:"; cat umbra-$(VERSION)-SHA256SUMS

## docker: build the container image umbra:VERSION (needs a running Docker engine; docker-compose.yml runs it with a simulated fleet)
docker:
	@command -v docker >/dev/null 2>&1 || { echo "make docker needs the docker CLI and a running engine (https://docs.docker.com/engine/install/)"; exit 1; }
	docker build --build-arg VERSION=$(VERSION) -t umbra:$(VERSION) -t umbra:latest .

## deps: everything the README, docs/ and the tests need, installed once (idempotent, quiet when all is there): Debian packages, Go modules, the pinned AWS IoT SDKs, the pinned nats-server
deps: apt-deps go-deps sdk-deps nats-deps

# DEPS_CMDS: command:Debian package, for each tool the README, docs/ or a test runs.
#   mosquitto_pub/sub (README, interop tests), mosquitto (interop and conformance
#   tests), node and npm (AWS IoT SDK tests), curl and jq (README and docs/ examples), openssl
#   (docs/migrate-from-aws.md), systemd-analyze (TestSystemdUnit), tar, gzip and
#   sha256sum (make dist), chromium (the console's browser tests, make screenshots).
DEPS_CMDS := mosquitto_pub:mosquitto-clients mosquitto:mosquitto node:nodejs npm:npm \
	curl:curl jq:jq openssl:openssl systemd-analyze:systemd tar:tar gzip:gzip sha256sum:coreutils \
	chromium:chromium

## apt-deps: the Debian packages of DEPS_CMDS whose command is missing, and python3-paho-mqtt (TestConformance) if Debian's python3 cannot import it (apt-get, with sudo unless root)
apt-deps:
	@missing=""; \
	for pair in $(DEPS_CMDS); do \
		cmd=$${pair%%:*}; pkg=$${pair##*:}; \
		command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	/usr/bin/python3 -c 'import paho.mqtt.client' >/dev/null 2>&1 || missing="$$missing python3-paho-mqtt"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## go-deps: the Go modules of go.sum, into the module cache (so the first build only compiles)
go-deps:
	@$(GO) mod download

## nats-deps: nats-server NATS_SERVER_VERSION (cluster mode's tests, docs/cluster.md), built from its Go module into .tools/bin (go install; not in go.mod); skipped while the installed one has that version
NATS_SERVER_VERSION ?= v2.15.3
TOOLS_BIN := $(CURDIR)/.tools/bin
nats-deps:
	@if [ "$$($(TOOLS_BIN)/nats-server --version 2>/dev/null)" != "nats-server: $(NATS_SERVER_VERSION)" ]; then \
		echo "building nats-server $(NATS_SERVER_VERSION) into $(TOOLS_BIN)"; \
		GOBIN=$(TOOLS_BIN) $(GO) install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION); \
	fi

## sdk-deps: the AWS IoT Device SDKs pinned in testdata/aws-sdk/package-lock.json (npm ci; skipped while node_modules matches the lock file)
sdk-deps: apt-deps
	@if [ ! -f $(SDK_DIR)/node_modules/.package-lock.json ] || [ $(SDK_DIR)/package-lock.json -nt $(SDK_DIR)/node_modules/.package-lock.json ]; then \
		echo "installing the AWS IoT Device SDKs in $(SDK_DIR) (npm ci)"; \
		cd $(SDK_DIR) && npm ci --no-audit --no-fund --loglevel=error; \
	fi

# TEST_BIN is the umbra binary the tests run (built once; internal/testbin
# reads UMBRA_TEST_BIN and builds its own only when it is unset).
TEST_BIN := bin/umbra-test

## test: format check, vet, race-enabled tests (on one umbra binary, TEST_BIN), short benchmarks, every fuzz target for TEST_FUZZTIME inputs
test: deps
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@$(MAKE) --no-print-directory cross
	$(GO) build -o $(TEST_BIN) ./cmd/umbra
	UMBRA_TEST_BIN="$(abspath $(TEST_BIN))" $(GO) test -race -count=1 -timeout 12m ./...
	$(GO) test -run '^$$' -bench . -benchtime 1x -short -count=1 -timeout 5m ./...
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

## cross: the packages with per-platform files build on other systems (CI runs Linux only)
# Tests are Linux's (they use its system calls), so darwin is vetted with its
# tests and windows built without: about a minute with a cold build cache.
CROSS_PKGS := ./broker/ ./cmd/umbra/ ./internal/brokertest/ ./internal/natstest/
cross:
	GOOS=darwin $(GO) vet $(CROSS_PKGS)
	GOOS=windows $(GO) build $(CROSS_PKGS)

## fuzz: run every fuzz target for FUZZTIME each (default 30s; make test runs each for TEST_FUZZTIME)
FUZZTIME      ?= 30s
# make test fuzzes each target for a count of inputs, not a duration: Go 1.26's
# fuzz coordinator can fail a target with a bare "context deadline exceeded" when
# a duration ends while a worker is mid-input (golang/go#75804, fixed in Go 1.27).
TEST_FUZZTIME ?= 3000x
# Every fuzz target (23), as <package>:<target>: go test fuzzes one target per
# invocation. fuzz-list fails when a target is missing here.
FUZZ_TARGETS := \
	./broker:FuzzBrokerConn \
	./broker:FuzzConnection \
	./broker/boltstore:FuzzLoadRecord \
	./broker/natsbridge:FuzzSubject \
	./cmd/umbra:FuzzImportFile \
	./cmd/umbra:FuzzRolloutNumberParsers \
	./cmd/umbra:FuzzRolloutTargetParsers \
	./firmware:FuzzDownloadURL \
	./firmware:FuzzRangeHeader \
	./device:FuzzParseID \
	./internal/httpapi:FuzzFirmwareRequests \
	./internal/httpapi:FuzzShadowRequest \
	./identity:FuzzAllow \
	./identity:FuzzAllowFilter \
	./identity:FuzzParseCertPEM \
	./identity:FuzzParseLabels \
	./policy:FuzzAllowMatchesReference \
	./policy:FuzzParseRules \
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

## screenshots: run the console's browser test and save its pages as docs/img/console-*.png (needs chromium: make deps)
screenshots: apt-deps
	@mkdir -p docs/img
	UMBRA_SCREENSHOTS=$(CURDIR)/docs/img $(GO) test -count=1 -run '^TestConsoleInBrowser$$' ./console/

## demo: build, serve, connect 1,000 simulated devices, roll out a firmware image with live progress (scripts/demo.sh; DEMO_* settings in its header)
demo:
	GO="$(GO)" bash scripts/demo.sh

## cluster-demo: 3 nats-servers (R3) and 3 umbra serve --nats nodes on loopback, a simulated fleet spread over them, the cluster status (scripts/cluster-demo.sh)
cluster-demo: nats-deps
	GO="$(GO)" bash scripts/cluster-demo.sh

clean:
	rm -rf bin dist umbra-data .tools
