# The ordermanagement worker as a static binary in an empty (scratch) image.
#
#   docker build -t ordermanagement .                               # the worker (default)
#   docker build --target stand-in -t ordermanagement-stand-in .    # optional local services
#
# The binary is built for x86_64-unknown-linux-gnu, so the image is linux/amd64 only: on
# another host, add `--platform linux/amd64`.

# ---------------------------------------------------------------------------- builder
# Toolchain pinned to a numeric version (at or above Cargo.toml's rust-version), so a
# rebuild gets the same compiler. Debian bookworm: binutils 2.40 and glibc 2.36, as
# build.rs's packed relocations need.
FROM rust:1.95-slim-bookworm AS builder

WORKDIR /src

# Dependencies first, in their own layer: only the manifests, the lock file and
# build.rs, with empty stand-ins for every target the manifests name (the package's
# bin and lib, the `drain` bench, the workspace member's lib). Editing src/ then rebuilds
# only the worker's own crate. The flags and target are the same as the real build's,
# or the compiled dependencies would not be reused.
COPY Cargo.toml Cargo.lock build.rs ./
COPY tests/standin/Cargo.toml tests/standin/
RUN mkdir -p src benches tests/standin/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/standin/src/lib.rs \
 && echo 'fn main() {}' > benches/drain.rs \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ordermanagement

# The real sources. COPY keeps the files' own modification times, which may be older
# than the placeholder build: touch them so that cargo rebuilds the crate.
COPY src src
RUN touch src/main.rs src/lib.rs \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ordermanagement

# The directories the empty image needs, prepared here because scratch has no shell:
# /tmp for the heartbeat file (world-writable, sticky, as usual), and the state
# directory owned by the user the worker runs as. Each sits inside a parent that is
# copied whole, so that the directory's own mode and owner travel with it.
RUN mkdir -p /rootfs/tmp /state/ordermanagement \
 && chmod 1777 /rootfs/tmp \
 && chown 65532:65532 /state/ordermanagement \
 && chmod 0750 /state/ordermanagement

# ---------------------------------------------------------------------------- stand-in (optional)
# The in-memory Order and Stock services of examples/local_stack.rs, for trying the
# image without the demo (compose.yaml, profile `local`). BuildKit (Docker's default
# builder) builds it only when asked for (`--target stand-in`): it needs the
# dev-dependencies, which the worker does not.
FROM builder AS stand-in-build
COPY tests/standin/src tests/standin/src
COPY examples examples
RUN touch tests/standin/src/lib.rs examples/*.rs \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu --example local_stack

FROM scratch AS stand-in
COPY --from=stand-in-build /src/target/x86_64-unknown-linux-gnu/release/examples/local_stack /local_stack
USER 65532:65532
STOPSIGNAL SIGTERM
# It listens on 127.0.0.1:5000 (orders) and 127.0.0.1:5001 (stock) only, and has no
# flag to listen elsewhere: a client must share its network namespace (compose:
# `network_mode: "service:stand-in"`).
ENTRYPOINT ["/local_stack"]
CMD ["--orders", "500"]

# ---------------------------------------------------------------------------- worker (default)
FROM scratch

# The repository's address, for org.opencontainers.image.source:
# docker build --build-arg SOURCE_URL=https://... -t ordermanagement .
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="ordermanagement" \
      org.opencontainers.image.description="Order-management worker of the wood-shop demo: takes stock for registered orders and sets their status" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="0.1.0"

COPY --from=builder /src/target/x86_64-unknown-linux-gnu/release/ordermanagement /ordermanagement
COPY --from=builder /rootfs/ /
COPY --from=builder --chown=65532:65532 /state/ /var/lib/

# No user database in scratch: a numeric user and group (the usual "nonroot" ids).
USER 65532:65532

# The heartbeat that `healthcheck` reads, and the journal of the orders in flight on
# the volume below, so that a restarted container never takes stock twice.
ENV HEARTBEAT_FILE=/tmp/ordermanagement.heartbeat \
    STATE_FILE=/var/lib/ordermanagement/state.jsonl
VOLUME ["/var/lib/ordermanagement"]

# The worker handles SIGTERM itself (it is PID 1 here): it finishes the current order
# and exits 0. Give it more than the 35 s decrease timeout to do so (compose
# stop_grace_period, Kubernetes terminationGracePeriodSeconds: 60 s in this repository).
STOPSIGNAL SIGTERM

# Exec form: there is no shell in the image. Healthy while the worker makes progress
# (its heartbeat is fresh by its own measure); a service being down does not make it
# unhealthy unless HEALTHCHECK_MAX_CUT_OFF_SECONDS is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/ordermanagement", "healthcheck"]

ENTRYPOINT ["/ordermanagement"]
CMD ["run"]
