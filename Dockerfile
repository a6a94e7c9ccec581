# komptroller image: build the one binary, run it as a non-root user on a
# distroless base (glibc + libgcc, no shell, no package manager).
#
#   docker build -t ghcr.io/komptroller/komptroller:0.1.0 .
#
# Stage 1: build. Only the workspace sources are copied (never target*/).
FROM docker.io/library/rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY engine ./engine
COPY operator ./operator
COPY e2e ./e2e
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p komptroller --bin komptroller \
 && install -D -m 0755 target/release/komptroller /out/komptroller

# Stage 2: run. distroless "nonroot" runs as uid/gid 65532, matching the
# chart's podSecurityContext; the root filesystem can be read-only.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/komptroller /usr/local/bin/komptroller
USER 65532:65532
EXPOSE 8080 9443
ENTRYPOINT ["/usr/local/bin/komptroller"]
CMD ["run"]
