# syntax=docker/dockerfile:1
#
# credinject container image.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#                --build-arg COMMIT=$(git rev-parse HEAD) \
#                -t ghcr.io/credinject/credinject:dev .
#
# The binary is static (CGO_ENABLED=0) and runs as the distroless "nonroot"
# user 65532. The configuration is not baked in: mount it at
# /etc/credinject/config.yaml (deploy/kubernetes does this from a ConfigMap).
# Inside a container the listen addresses must be 0.0.0.0:9191 / 0.0.0.0:8181
# (config keys listen.grpc / listen.http, or the --grpc-addr / --http-addr
# flags); the built-in defaults bind 127.0.0.1 only.

ARG GO_VERSION=1.26

# ---- build ------------------------------------------------------------------
# The builder runs on the build host's platform and cross-compiles for the
# target platform, so multi-arch builds (buildx --platform linux/amd64,linux/arm64)
# need no emulation.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build

ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
ARG COMMIT=unknown

WORKDIR /src

# Dependencies first, so they are cached across source changes.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -buildvcs=false \
      -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/credinject ./cmd/credinject

# ---- runtime ----------------------------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot

ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="credinject" \
      org.opencontainers.image.description="Envoy ext_authz authorizer that injects per-workload credentials from Vault at an egress gateway" \
      org.opencontainers.image.source="https://github.com/credinject/credinject" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"

COPY --from=build /out/credinject /credinject

USER 65532:65532

# 9191: gRPC (envoy.service.auth.v3.Authorization, grpc.health.v1.Health)
# 8181: HTTP (/check, /healthz, /readyz, /metrics)
EXPOSE 9191 8181

ENTRYPOINT ["/credinject"]
CMD ["serve", "--config", "/etc/credinject/config.yaml"]
