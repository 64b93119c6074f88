#!/usr/bin/env bash
# Fetch and build the engines the engine tests use, into a cache outside the repository
# ($EMBEDDING_EXPORT_CACHE, default ~/.cache/embedding-export); a second run reuses the cache.
#   prism-v<beam>/prism    Beam's Prism runner, built from Beam's Go module at our Beam version
#   hadoop-<ver>/          Hadoop's MiniDFSCluster classpath (Maven Central) and MiniHdfs.class
# Prints what it fetched and how long each step took. Exit 1 when a step fails; a missing Go or
# Java is a failure only with CI set (elsewhere the step is skipped, and so are its tests).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${EMBEDDING_EXPORT_CACHE:-$HOME/.cache/embedding-export}"
python="${PYTHON:-$here/../../.venv/bin/python}"
beam="$("$python" -c 'import importlib.metadata as m; print(m.version("apache-beam"))')"
hadoop="$(sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' "$here/hdfs-pom.xml")"
mkdir -p "$cache"
status=0

missing() {  # a tool is not installed: fatal in CI, a skip elsewhere
  if [ -n "${CI:-}" ]; then echo "engines: $1 is not installed (CI needs it)" >&2; status=1
  else echo "engines: $1 is not installed: skipping $2"; fi
}

prism="$cache/prism-v$beam/prism"
if [ -x "$prism" ]; then
  echo "engines: prism v$beam cached at $prism"
elif ! command -v go >/dev/null; then
  missing go "the Prism build"
else
  start=$SECONDS
  GOBIN="$cache/prism-v$beam" GOFLAGS=-mod=mod go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$beam"
  echo "engines: built prism v$beam in $((SECONDS - start)) s -> $prism"
fi

hdir="$cache/hadoop-$hadoop"
if [ -f "$hdir/classes/MiniHdfs.class" ] && [ -f "$hdir/classpath.txt" ] \
    && [ "$hdir/classes/MiniHdfs.class" -nt "$here/MiniHdfs.java" ]; then
  echo "engines: hadoop $hadoop MiniDFSCluster cached in $hdir"
elif ! command -v mvn >/dev/null || ! command -v javac >/dev/null; then
  missing "java/maven" "the HDFS (MiniDFSCluster) fetch"
else
  start=$SECONDS
  mkdir -p "$hdir/classes"
  mvn -B -q -f "$here/hdfs-pom.xml" dependency:build-classpath -Dmdep.outputFile="$hdir/classpath.txt"
  javac -d "$hdir/classes" -cp "$(cat "$hdir/classpath.txt")" "$here/MiniHdfs.java"
  echo "engines: fetched hadoop-minicluster $hadoop ($(tr ':' '\n' < "$hdir/classpath.txt" | wc -l) jars) and compiled MiniHdfs in $((SECONDS - start)) s -> $hdir"
fi
exit $status
