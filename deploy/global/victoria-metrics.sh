#!/bin/sh
# The central store as VictoriaMetrics instead of Prometheus (Debian: victoria-metrics, which
# ships vmalert): victoria-metrics receives the agents' remote writes (their remote_write url
# is http://victoria-metrics.example:8428/api/v1/write) and answers the Prometheus query API
# for Grafana; vmalert evaluates dashboards/rules/ unchanged against it and writes the
# recording rules' results and the alerts' state back. See README.md in this directory.
set -eu

# -search.latencyOffset: VictoriaMetrics hides samples younger than this from queries
# (default 30s); a little more than the agents' batch_send_deadline is enough, and the
# rules see fresher data.
victoria-metrics \
  -storageDataPath=/var/lib/victoria-metrics \
  -httpListenAddr=:8428 \
  -retentionPeriod=30d \
  -search.latencyOffset=10s &

# Recording rules that read other recording rules (the score is four rules deep) see their
# results once they are written back: -remoteWrite.flushInterval adds up along the chain.
vmalert \
  -rule='/etc/prometheus/regionprobe/rules/*.yml' \
  -datasource.url=http://127.0.0.1:8428 \
  -remoteWrite.url=http://127.0.0.1:8428 \
  -remoteWrite.flushInterval=5s \
  -remoteRead.url=http://127.0.0.1:8428 \
  -notifier.url=http://alertmanager.example:9093 \
  -evaluationInterval=15s \
  -httpListenAddr=:8880 &

wait
