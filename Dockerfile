# Build: docker build -t chatgate .
# Run:   docker run -p 8080:8080 chatgate                                        (embedded, single node)
#        docker run -p 8080:8080 -e RABBIT_MQ_URL=... -e REDIS_ADDR=... chatgate  (cluster node)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The workspace's other member (the load tool): cargo needs its manifest, not its code.
COPY chatgate-load/Cargo.toml ./chatgate-load/
RUN cargo build --release --locked -p chatgate --bin chatgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 chatgate
COPY --from=build /src/target/release/chatgate /usr/local/bin/chatgate
USER chatgate
ENV CHAT_LISTEN=0.0.0.0:8080 CHAT_LOG_FORMAT=json
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s \
  CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["/usr/local/bin/chatgate"]
