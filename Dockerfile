# syntax=docker/dockerfile:1
# umbra serve in a small image: a static binary on distroless, as a non-root
# user, with the data dir on a volume. Build: make docker (docker build
# --build-arg VERSION=$(git describe) -t umbra .). Run: docker compose up
# (docker-compose.yml adds a simulated fleet). cmd/umbra's TestDockerfile
# runs this file's go build line and checks what it can without an engine.

# GO_VERSION is go.mod's go line.
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
COPY third_party/ third_party/
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/umbra ./cmd/umbra
# The volume's mount point, owned by the runtime user: a new named volume
# takes its owner from it.
RUN mkdir -p /out/data

# distroless/static: CA certificates, tzdata, /etc/passwd with nonroot
# (65532), no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/umbra /usr/local/bin/umbra
COPY packaging/docker.yaml /etc/umbra/umbra.yaml
COPY --from=build --chown=65532:65532 /out/data /var/lib/umbra
COPY LICENSE /usr/share/doc/umbra/LICENSE
ENV UMBRA_CONFIG=/etc/umbra/umbra.yaml \
    UMBRA_DATA_DIR=/var/lib/umbra
USER 65532:65532
VOLUME ["/var/lib/umbra"]
# MQTT, MQTT over WebSocket, HTTP (API, /healthz, /metrics, firmware).
EXPOSE 1883 8083 8080
HEALTHCHECK --interval=15s --timeout=6s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/umbra", "serve", "--healthcheck"]
ENTRYPOINT ["/usr/local/bin/umbra"]
CMD ["serve"]
