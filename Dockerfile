# floatlm: one small image for every instance of a cluster.
#   docker build -t floatlm .
#   docker run --rm -p 8990:8990 floatlm serve --demo        (single node, SQLite)
# Configuration: FLOATLM_* environment variables, or an INI file mounted and
# named by FLOATLM_CONFIG. See docs/operations.md and docker-compose.yml.

# ---- build: the release binary, against the committed Cargo.lock
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY crates/protocol/Cargo.toml crates/protocol/Cargo.toml
COPY crates/client/Cargo.toml crates/client/Cargo.toml
COPY crates/bench/Cargo.toml crates/bench/Cargo.toml
# Every workspace member's manifest, or cargo cannot load the workspace
# (tests/containers.rs checks the list against Cargo.toml).
COPY crates/client-ffi/Cargo.toml crates/client-ffi/Cargo.toml
COPY crates/mariadb-harness/Cargo.toml crates/mariadb-harness/Cargo.toml
COPY crates/testkit/Cargo.toml crates/testkit/Cargo.toml
RUN mkdir -p src crates/protocol/src crates/client/src crates/bench/src crates/protocol/examples \
    crates/client-ffi/src crates/mariadb-harness/src crates/testkit/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && touch crates/protocol/src/lib.rs crates/client/src/lib.rs \
    crates/client-ffi/src/lib.rs crates/mariadb-harness/src/lib.rs crates/testkit/src/lib.rs \
 && echo 'fn main() {}' > crates/bench/src/main.rs \
 && echo 'fn main() {}' > crates/protocol/examples/gen_vectors.rs \
 && cargo fetch --locked
COPY . .
RUN touch src/main.rs src/lib.rs crates/protocol/src/lib.rs crates/client/src/lib.rs \
 && cargo build --release --locked --bin floatlm \
 && strip target/release/floatlm

# ---- run: Debian slim, no compiler, an unprivileged user
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/floatlm floatlm \
 && mkdir -p /var/lib/floatlm /etc/floatlm \
 && chown floatlm:floatlm /var/lib/floatlm
COPY --from=build /src/target/release/floatlm /usr/local/bin/floatlm
COPY config/floatlm.ini /etc/floatlm/floatlm.ini.example
COPY deploy/init-secrets.sh /usr/local/bin/floatlm-init-secrets
USER 10001:10001
WORKDIR /var/lib/floatlm
ENV FLOATLM_LISTEN=0.0.0.0:8990 \
    FLOATLM_ADMIN_LISTEN=0.0.0.0:8991 \
    FLOATLM_DATA_DIR=/var/lib/floatlm \
    FLOATLM_LOG_FORMAT=json
EXPOSE 8990 8991
VOLUME ["/var/lib/floatlm"]
# healthz: 200 when the instance can serve (database, key canary, not draining).
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
  CMD ["floatlm", "health", "-s", "127.0.0.1:8990"]
# SIGTERM drains (healthz 503 for drain_delay) and then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["floatlm"]
CMD ["serve"]
