# tokengate: build in the Rust image, run from a slim Debian with only the
# binary, the migrations (embedded) and the shipped configs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
RUN cargo build --release --locked --bin tokengate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tokengate /usr/local/bin/tokengate
COPY config /etc/tokengate
WORKDIR /var/lib/tokengate
RUN chown 65534:65534 /var/lib/tokengate
USER 65534:65534
ENV TOKENGATE_CONFIG=/etc/tokengate/tokengate.toml
EXPOSE 8080 8081
ENTRYPOINT ["tokengate"]
CMD ["serve"]
