#!/usr/bin/env bash
# Resolves Apache Kafka's broker (services/kafka/pom.xml) from Maven Central once into a
# cached classpath and prints the path of the file that holds it. The cache is keyed by the
# pom's content, so pinning another version resolves again; Maven's own downloads stay in
# ~/.m2. Cache folder: IDEM_CACHE_DIR, else $XDG_CACHE_HOME/idem, else ~/.cache/idem.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
pom="${IDEM_KAFKA_POM:-$here/services/kafka/pom.xml}"
cache="${IDEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/idem}"
key=$(sha256sum "$pom" | cut -c1-16)
out="$cache/kafka-$key/classpath"
if [ ! -s "$out" ]; then
  command -v mvn >/dev/null || { echo "kafka-classpath: Maven (mvn) is needed to fetch Apache Kafka from Maven Central" >&2; exit 1; }
  mkdir -p "$(dirname "$out")"
  echo "kafka-classpath: resolving Apache Kafka from $pom (once)" >&2
  mvn -B -q -f "$pom" dependency:build-classpath -Dmdep.includeScope=runtime \
    -Dmdep.outputFile="$out.tmp" >&2
  mv "$out.tmp" "$out"
fi
echo "$out"
