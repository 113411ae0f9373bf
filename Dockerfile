# One image with both binaries; compose picks the command.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin api --bin worker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 txdx
COPY --from=build /src/target/release/api /src/target/release/worker /usr/local/bin/
COPY basic_frontend /srv/basic_frontend
ENV FRONTEND_DIR=/srv/basic_frontend
# The worker's large buffers go back to the system when freed (glibc; the
# api has jemalloc: ARCHITECTURE.md, "Memory").
ENV MALLOC_MMAP_THRESHOLD_=131072
USER txdx
EXPOSE 8080
CMD ["api", "serve"]
