#!/usr/bin/env bash
# What the image runs: a Flink JobManager or TaskManager (as the Flink Kubernetes operator and the
# compose file start them), a Spark driver or executor (as Spark on Kubernetes starts them), or any
# command (`mlfs ...`).
set -euo pipefail

flink_properties() {  # FLINK_PROPERTIES (one "key: value" per line) added to Flink's configuration
  if [ -n "${FLINK_PROPERTIES:-}" ]; then
    printf '%s\n' "$FLINK_PROPERTIES" >> "$FLINK_CONF_DIR/config.yaml"
  fi
}

case "${1:-}" in
  jobmanager)
    shift
    flink_properties
    exec "$FLINK_HOME/bin/jobmanager.sh" start-foreground "$@"
    ;;
  taskmanager)
    shift
    flink_properties
    exec "$FLINK_HOME/bin/taskmanager.sh" start-foreground "$@"
    ;;
  driver)  # Spark on Kubernetes: the driver pod of a SparkApplication
    shift
    exec spark-submit --deploy-mode client \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:-0.0.0.0}" "$@"
    ;;
  executor)  # Spark on Kubernetes: an executor pod (the arguments come from its environment)
    exec java -Xms"${SPARK_EXECUTOR_MEMORY:-1g}" -Xmx"${SPARK_EXECUTOR_MEMORY:-1g}" \
      -cp "$SPARK_HOME/jars/*" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID" \
      --cores "$SPARK_EXECUTOR_CORES" --app-id "$SPARK_APPLICATION_ID" \
      --hostname "$SPARK_EXECUTOR_POD_IP" --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
      --podName "$SPARK_EXECUTOR_POD_NAME"
    ;;
  *)
    exec "$@"
    ;;
esac
