# Umbra — the README's commands are these targets.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/umbra
APT_PKGS := mosquitto-clients mosquitto
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all run build test deps fmt vet bench bench-short demo clean

all: build

## run: serve on the embedded defaults (MQTT 127.0.0.1:1883, WS :8083, HTTP :8080, data in ./umbra-data)
run:
	$(GO) run ./cmd/umbra serve

## build: the umbra binary in bin/
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/umbra

## deps: Debian packages the tests use (mosquitto clients and broker for interop tests)
deps:
	@missing=""; \
	command -v mosquitto_pub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## test: format check, vet, race-enabled tests, short benchmarks
test: deps
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 12m ./...
	$(GO) test -run '^$$' -bench . -benchtime 1x -short -count=1 -timeout 5m ./...

fmt:
	gofmt -l -w .

vet:
	$(GO) vet ./...

## bench: full benchmarks (see docs/benchmarks.md)
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 60m ./...

## demo: build, serve, connect 1,000 simulated devices, roll out a firmware image with live progress (scripts/demo.sh; DEMO_* settings in its header)
demo:
	GO="$(GO)" bash scripts/demo.sh

clean:
	rm -rf bin umbra-data
