# chatgate container image.
#
# Full build, compiling inside the Rust image (needs the public image registries):
#   docker build -t chatgate .
# Runtime image around a binary built outside (CI: seconds, no compiler in the image):
#   cargo build --release --locked -p chatgate --bin chatgate --config 'profile.release.strip="debuginfo"'
#   docker build --target runtime-prebuilt --build-arg BINARY=target/release/chatgate -t chatgate .
# Run:
#   docker run -p 8080:8080 chatgate                                           (embedded, single node)
#   docker run -p 8080:8080 -e RABBIT_MQ_URL=... -e REDIS_ADDR=... chatgate     (cluster node)
#
# Stage order matters: `--target runtime-prebuilt` stops before the Rust stage, so a builder
# that cannot pull the Rust image (podman/buildah here, see scripts/container-test.sh) never
# needs it. The last stage is the default target.

ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm

FROM ${DEBIAN_IMAGE} AS runtime-base
# ca-certificates: amqps:// and rediss:// verify against the system roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 chatgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin chatgate
# Docker's `stop` waits 10 s before SIGKILL: finish the drain well within it.
ENV CHAT_LISTEN=0.0.0.0:8080 CHAT_LOG_FORMAT=json CHAT_SHUTDOWN_GRACE_MS=8000
EXPOSE 8080
STOPSIGNAL SIGTERM
# Liveness, not readiness: /healthz answers while the process runs, so a Redis or RabbitMQ
# outage (which turns /readyz 503) does not get the container restarted. Load balancers
# should check /readyz. The port and address follow CHAT_LISTEN; the image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/bin/bash", "-c", "l=${CHAT_LISTEN:-0.0.0.0:8080}; p=${l##*:}; h=${l%:*}; h=${h#[}; h=${h%]}; case $h in ''|0.0.0.0) h=127.0.0.1;; ::) h=::1;; esac; exec 3<>/dev/tcp/$h/$p && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r -t 2 _ code _ <&3 && [ \"$code\" = 200 ]"]
# Numeric, so that an orchestrator's runAsNonRoot check can verify it.
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/chatgate"]

# The runtime image around a prebuilt binary (a path inside the build context). Build it on
# Debian bookworm (or older glibc) so it runs here; strip its debug info first.
FROM runtime-base AS runtime-prebuilt
ARG BINARY=target/release/chatgate
COPY ${BINARY} /usr/local/bin/chatgate

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The whole workspace (.dockerignore keeps target/ and .git out): every member's manifest
# is needed to resolve the lock file, even though only the server is built.
COPY . .
# Cache mounts keep the crates.io downloads and the compiled dependencies between builds,
# so a source change recompiles the chatgate crate only. The binary is copied out of the
# cache mount, which is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p chatgate --bin chatgate \
      --config 'profile.release.strip="debuginfo"' \
 && cp target/release/chatgate /usr/local/bin/chatgate

FROM runtime-base AS runtime
COPY --from=build /usr/local/bin/chatgate /usr/local/bin/chatgate
