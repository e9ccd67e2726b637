# syntax=docker/dockerfile:1
# FerroLB's container image: both binaries, ferrolb-controller and ferrolb-speaker, statically
# linked (musl), in /usr/local/bin of distroless/static (CA certificates, /etc/passwd with the
# `nonroot` user, no libc, no shell, no package manager).
#
#   docker build -t ghcr.io/ferrolb/ferrolb:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/ferrolb/ferrolb:0.1.0 .
#
# Without pulling anything (no registry in reach): scripts/build-image builds the binaries with
# scripts/build-static and this file's runtime stage on a base it assembles FROM scratch, with
# whatever docker engine answers; that is the image the test suite runs the chart's pods from.
#
# The same binaries without Docker, on a Debian/Ubuntu host (what scripts/build-static runs):
#   apt-get install musl-tools && rustup target add x86_64-unknown-linux-musl
#   CC_x86_64_unknown_linux_musl=musl-gcc cargo build --profile dist --locked \
#       --target x86_64-unknown-linux-musl -p ferrolb-controller -p ferrolb-speaker
#
# The image runs as the distroless `nonroot` user (65532) by default, which is what the
# controller needs. The Helm chart runs the speaker as root with every capability dropped except
# NET_RAW: it opens raw AF_PACKET sockets for ARP/NDP, and Kubernetes cannot hand a capability to a
# non-root process (no ambient capabilities), nor do these binaries carry file capabilities.

# ---- build ----------------------------------------------------------------------------------
# The workspace's rust-version is 1.89; any newer stable works. The builder runs on the target
# platform (buildx emulates it for a foreign one), so the musl target is the machine's own.
FROM rust:1.89-bookworm AS build
# musl-gcc compiles ring's C and assembly for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binaries are copied out of
# the cached target dir in the same step. `dist` = release with whole-program optimisation.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && export "CC_$(echo "$target" | tr - _)=musl-gcc" \
 && cargo build --profile dist --locked --target "$target" \
        -p ferrolb-controller -p ferrolb-speaker \
        --bin ferrolb-controller --bin ferrolb-speaker \
 && mkdir -p /out \
 && cp "target/$target/dist/ferrolb-controller" "target/$target/dist/ferrolb-speaker" /out/

# ---- runtime --------------------------------------------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="FerroLB" \
      org.opencontainers.image.description="Bare-metal load balancer for Kubernetes, a drop-in replacement for MetalLB" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /out/ferrolb-controller /out/ferrolb-speaker /usr/local/bin/
USER 65532:65532
# The controller by default; the chart names the binary explicitly for both components.
ENTRYPOINT ["/usr/local/bin/ferrolb-controller"]
