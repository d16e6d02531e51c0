# syntax=docker/dockerfile:1
# Container image of the `streamjob` binary (operator, worker pods, local mode), used by the Helm
# chart (charts/streamjob-operator) as streamjob/streamjob:<version>:
#   docker build -t streamjob/streamjob:0.1.0 .
# Stage 1 builds with the locked dependencies; stage 2 is distroless (glibc, CA certificates, no
# shell) and runs as the "nonroot" user 65532, matching the chart's securityContext.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target folder between builds (BuildKit); the binary is
# copied out of the cached target folder in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin streamjob \
 && install -m 0755 target/release/streamjob /usr/local/bin/streamjob

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/streamjob /usr/local/bin/streamjob
USER 65532:65532
ENTRYPOINT ["streamjob"]
CMD ["--help"]
