# The podrunner image: the manager (`podrunner run`) and the source of the agent that every job
# pod's init container copies (`/podrunner install-agent`). One static binary and the CA roots
# on `scratch`: nothing else to patch, and the agent it installs runs in any job image.
#
#   docker build -t registry.example.com/podrunner:0.1.0 .
#
# Builds for the architecture of the build platform's target (amd64 or arm64).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN target="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS="$(scripts/static-rustflags)" \
    cargo build --release --locked -p podrunner --target "$target" \
 && cp "target/$target/release/podrunner" /podrunner \
 && /podrunner --version

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /podrunner /podrunner
# Non-root by default; the chart's securityContext says the same.
USER 65532:65532
ENTRYPOINT ["/podrunner"]
CMD ["run"]
