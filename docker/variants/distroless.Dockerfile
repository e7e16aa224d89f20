# bench/image_latency.sh: the same binary and config as docker/Dockerfile's final stage, on
# distroless "static" (passwd, CA roots, tzdata) instead of scratch. BUILDER is an image of
# docker/Dockerfile's builder stage (`docker build --target builder`).
ARG BUILDER=regionprobe-bench:builder
FROM ${BUILDER} AS builder

FROM gcr.io/distroless/static-debian12
COPY --from=builder /out/ /
USER 65532:65532
EXPOSE 9537
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/regionprobe", "healthcheck", "--config", "/etc/regionprobe/exporter.toml"]
ENTRYPOINT ["/regionprobe"]
CMD ["--config", "/etc/regionprobe/exporter.toml"]
