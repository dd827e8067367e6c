#!/usr/bin/env bash
# The README's main job (examples/demo.sh) as on a fresh machine whose Debian packages are installed: an empty Docker
# engine (a second dockerd with its own data root, exec root, socket and bridge), an empty envkit cache (no .debs,
# base, wheels or build map) and an empty run store. Prints each step's time and share of the whole. Run as root:
#
#   bash benchmarks/bench_demo.sh [KEEP_DIR]      # KEEP_DIR: where to keep the demo's stdout and stderr
#
# The second engine and everything made for it are removed at the end; the machine's own engine is not touched.
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/envkit-bench-demo.XXXXXX)"
bridge="envkitd$$"
cleanup() {
  set +e
  if [[ -n "${dockerd_pid:-}" ]]; then
    kill "$dockerd_pid"
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  fi
  ip link del "$bridge" 2>/dev/null
  umount -R "$work/data" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
keep="${1:-}"

ip link add name "$bridge" type bridge && ip link set "$bridge" up
dockerd --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
  -H "unix://$work/docker.sock" -b "$bridge" --iptables=false --ip-masq=false >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
export DOCKER_HOST="unix://$work/docker.sock"
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
echo "engine: $(docker info --format '{{.Images}} images') on $DOCKER_HOST; cache and store empty" >&2

export ENVKIT_CACHE="$work/cache" ENVKIT_HOME="$work/store"
# The demo replays in examples/; its store is ENVKIT_HOME here so the repository's examples/.envkit stays as it is.
bash "$repo_root/examples/demo.sh" >"$work/demo.out" 2>"$work/demo.err" || { tail -n 30 "$work/demo.err" >&2; exit 1; }
[[ -n "$keep" ]] && mkdir -p "$keep" && cp "$work/demo.out" "$work/demo.err" "$keep/"
grep -E "matches the lock|IDENTICAL" "$work/demo.out" "$work/demo.err" | sed 's/^[^:]*://' >&2 || true
total=$(sed -n 's/^demo: done in \([0-9]*\) s$/\1/p' "$work/demo.err")
echo "examples/demo.sh on an empty engine, empty cache and store: ${total} s (goal under 300 s)"
sed -n 's/^demo: \(.*\) took \([0-9]*\) s$/\2\t\1/p' "$work/demo.err" | while IFS=$'\t' read -r secs what; do
  printf '  %4d s  %5.1f %%  %s\n' "$secs" "$(awk -v s="$secs" -v t="$total" 'BEGIN { print (t ? 100 * s / t : 0) }')" "$what"
done
