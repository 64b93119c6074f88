#!/usr/bin/env bash
# An HDFS on loopback (Hadoop's MiniDFSCluster, WebHDFS on), for the engine tests.
#   hdfs.sh start DIR   start one with its data, log and pid under DIR; prints "HOST RPC_PORT HTTP_PORT"
#   hdfs.sh stop DIR    stop the one started there
# Needs .ci/engines/fetch.sh to have run (the classpath and MiniHdfs.class in the cache).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${EMBEDDING_EXPORT_CACHE:-$HOME/.cache/embedding-export}"
hadoop="$(sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' "$here/hdfs-pom.xml")"
hdir="$cache/hadoop-$hadoop"
cmd="${1:?start|stop}"; dir="${2:?DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
case "$cmd" in
  start)
    [ -f "$hdir/classes/MiniHdfs.class" ] || { echo "hdfs.sh: run .ci/engines/fetch.sh first" >&2; exit 1; }
    ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
    set -- $ports
    rm -f "$dir/ready"
    # --add-opens: Jersey's JAXB (WebHDFS's JSON) reflects into java.lang on Java 17.
    java -Xmx768m --add-opens java.base/java.lang=ALL-UNNAMED \
      -cp "$hdir/classes:$(cat "$hdir/classpath.txt")" MiniHdfs "$dir/data" "$1" "$2" "$dir/ready" \
      > "$dir/minihdfs.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 600); do
      [ -f "$dir/ready" ] && { echo "127.0.0.1 $1 $2"; exit 0; }
      kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
      sleep 0.5
    done
    echo "hdfs.sh: MiniDFSCluster did not start; see $dir/minihdfs.log" >&2
    tail -n 20 "$dir/minihdfs.log" >&2 || true
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    exit 1 ;;
  stop)
    if [ -f "$dir/pid" ]; then
      pid=$(cat "$dir/pid"); kill "$pid" 2>/dev/null || true
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/pid"
    fi ;;
  *) echo "usage: hdfs.sh start|stop DIR" >&2; exit 2 ;;
esac
