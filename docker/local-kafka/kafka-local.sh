#!/usr/bin/env bash
# The local Kafka broker script ships inside the package, so an installed wheel has it too:
# headrace/testing/local-kafka/kafka-local.sh (with its pom.xml, log4j2.xml and
# server.properties.template). This wrapper keeps `bash docker/local-kafka/kafka-local.sh
# fetch|start|stop|status` working from the repository; see that script for the options.
set -euo pipefail
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/headrace/testing/local-kafka/kafka-local.sh" "$@"
