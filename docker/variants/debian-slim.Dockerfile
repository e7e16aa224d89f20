# bench/image_latency.sh: the same binary and config as docker/Dockerfile's final stage, on
# debian:bookworm-slim (a shell and coreutils for debugging, at ~75 MB). BUILDER is an image
# of docker/Dockerfile's builder stage (`docker build --target builder`).
ARG BUILDER=regionprobe-bench:builder
FROM ${BUILDER} AS builder

FROM debian:bookworm-slim
COPY --from=builder /out/ /
USER 65534:65534
EXPOSE 9537
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/regionprobe", "healthcheck", "--config", "/etc/regionprobe/exporter.toml"]
ENTRYPOINT ["/regionprobe"]
CMD ["--config", "/etc/regionprobe/exporter.toml"]
