# syntax=docker/dockerfile:1
# FerroLB's container image: both binaries, ferrolb-controller and ferrolb-speaker, in
# /usr/local/bin of a distroless image (glibc and CA certificates, no shell, no package manager).
#
#   docker build -t ghcr.io/ferrolb/ferrolb:0.1.0 .
#
# The image runs as the distroless `nonroot` user (65532) by default, which is what the
# controller needs. The Helm chart runs the speaker as root with every capability dropped except
# NET_RAW: it opens raw AF_PACKET sockets for ARP/NDP, and Kubernetes cannot hand a capability to a
# non-root process (no ambient capabilities), nor do these binaries carry file capabilities.

# ---- build ----------------------------------------------------------------------------------
# The workspace's rust-version is 1.89; any newer stable works.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binaries are copied out of
# the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p ferrolb-controller -p ferrolb-speaker \
        --bin ferrolb-controller --bin ferrolb-speaker \
 && mkdir -p /out \
 && cp target/release/ferrolb-controller target/release/ferrolb-speaker /out/

# ---- runtime --------------------------------------------------------------------------------
# cc-debian12 = glibc + libgcc of Debian 12, the same as the bookworm builder links against.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="FerroLB" \
      org.opencontainers.image.description="Bare-metal load balancer for Kubernetes, a drop-in replacement for MetalLB" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /out/ferrolb-controller /out/ferrolb-speaker /usr/local/bin/
USER 65532:65532
# The controller by default; the chart names the binary explicitly for both components.
ENTRYPOINT ["/usr/local/bin/ferrolb-controller"]
