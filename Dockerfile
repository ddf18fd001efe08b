# syntax=docker/dockerfile:1
#
# flowgate in a container: a Rust builder, then a Debian slim runtime that holds the binary and
# the repository's rule folders, and runs as an unprivileged user.
#
#   docker build -t flowgate .
#   docker run -p 8080:8080 -v flowgate-data:/var/lib/flowgate flowgate
#
# The server runs as uid 10001: a named volume gets the right owner from the image, a
# bind-mounted data folder must be made writable by that uid.
#
# Rules: mount a folder holding schemas/, rules/ and flow-templates/ on /etc/flowgate/rules
# (edits are picked up live). Configuration: the environment below, or a file:
#   -v ./flowgate.yaml:/etc/flowgate/flowgate.yaml:ro ... flowgate serve --config /etc/flowgate/flowgate.yaml
# (FLOWGATE_LISTEN, FLOWGATE_DATA_DIR and FLOWGATE_RULES_DIR, set below, win over the file's
# listen, data_dir and rules_dir: change them with -e.) Keys: run the other verbs on the same
# volume, e.g. docker run --rm -v flowgate-data:/var/lib/flowgate flowgate keys add --name ... --sip-id ...

# The toolchain of Cargo.toml's rust-version, on the same Debian release as the runtime (the
# binary links against its glibc).
FROM rust:1.91-slim-bookworm AS build
WORKDIR /src
COPY . .
# Caches for the registry and the target folder (BuildKit), so a rebuild after an edit does not
# compile every dependency again; the binary is copied out of the cached target folder.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin flowgate \
 && install -m 0755 target/release/flowgate /usr/local/bin/flowgate

FROM debian:bookworm-slim
# CA certificates: the S3 sink trusts the system's roots for an https:// endpoint.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/flowgate --shell /usr/sbin/nologin flowgate \
 && install -d -o flowgate -g flowgate -m 0700 /var/lib/flowgate
COPY --from=build /usr/local/bin/flowgate /usr/local/bin/flowgate
# The rule folders are read-only to the server (owned by root); an analyst's edit comes in
# through the volume.
COPY schemas /etc/flowgate/rules/schemas
COPY rules /etc/flowgate/rules/rules
COPY flow-templates /etc/flowgate/rules/flow-templates
COPY flowgate.example.yaml /etc/flowgate/flowgate.example.yaml

# 0.0.0.0 inside the container: the published port reaches it; 127.0.0.1 would not.
ENV FLOWGATE_LISTEN=0.0.0.0:8080 \
    FLOWGATE_DATA_DIR=/var/lib/flowgate \
    FLOWGATE_RULES_DIR=/etc/flowgate/rules
VOLUME ["/var/lib/flowgate", "/etc/flowgate/rules"]
EXPOSE 8080
USER flowgate
WORKDIR /var/lib/flowgate

# /readyz is 200 once the store is writable. No curl or wget in the image: bash's /dev/tcp
# sends the request and reads the status line, on the port FLOWGATE_LISTEN names. Plain HTTP
# only: with tls configured, replace this check.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${FLOWGATE_LISTEN##*:} && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r _ status _ <&3 && [ \"$status\" = 200 ]"]

# SIGTERM (docker stop) lets requests in flight finish (up to 10 s) before the server stops.
ENTRYPOINT ["flowgate"]
CMD ["serve"]
