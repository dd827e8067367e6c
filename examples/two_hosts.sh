#!/usr/bin/env bash
# The mission's commands as written, on two "hosts" of one machine (run as root, after examples/demo.sh or
# .ci/setup-host and the base image):
#
#   host A: envkit build; envkit run --seed 42 train.py; envkit push RUN_ID 127.0.0.1:PORT/team/runs
#   host B: envkit replay 127.0.0.1:PORT/team/runs@sha256:...    (an empty store and an empty Docker engine)
#
# Host B is a second dockerd with its own data root, exec root, socket and bridge (as tests/integration/conftest.py's
# host_b fixture), and its own ENVKIT_HOME. The registry is Debian's docker-registry on 127.0.0.1. Everything made
# here is removed at the end (the second engine with what it pulled, the registry, the project folder, the tag
# `envkit push` put on host A's image).
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/envkit-two-hosts.XXXXXX)"
port="${PORT:-5055}"
bridge="envkitb$$"
cleanup() {
  set +e
  if [[ -n "${dockerd_pid:-}" ]]; then
    kill "$dockerd_pid"
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  fi
  ip link del "$bridge" 2>/dev/null
  umount -R "$work/b/data" 2>/dev/null
  [[ -n "${registry_pid:-}" ]] && kill "$registry_pid"
  DOCKER_HOST= docker image ls --format '{{.Repository}}:{{.Tag}}' | grep "^127.0.0.1:$port/team/runs:" \
    | DOCKER_HOST= xargs -r docker rmi >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The registry.
cat > "$work/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: "127.0.0.1:$port"}
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!

# Host B's engine.
mkdir -p "$work/b"
ip link add name "$bridge" type bridge && ip link set "$bridge" up
dockerd --data-root "$work/b/data" --exec-root "$work/b/exec" --pidfile "$work/b/dockerd.pid" \
  -H "unix://$work/b/docker.sock" -b "$bridge" --iptables=false --ip-masq=false >"$work/b/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 60); do DOCKER_HOST="unix://$work/b/docker.sock" docker info >/dev/null 2>&1 && break; sleep 1; done

show() { echo "\$ $*" >&2; "$@"; }

# Host A: a project with only envkit.yaml and train.py.
mkdir -p "$work/a/project"
cp "$repo_root/lockfiles/cpu.envkit.yaml" "$work/a/project/envkit.yaml"
cp "$repo_root/examples/train.py" "$work/a/project/train.py"
cd "$work/a/project"
echo "# host A: $(pwd)"
show ls
show envkit build
run_id=$(show envkit run --seed 42 train.py | tee >(cat >&2) | tail -n 1)
ref=$(show envkit push "$run_id" "127.0.0.1:$port/team/runs" | tail -n 1)
echo "$ref"

# Host B: never saw the run, has no image.
mkdir -p "$work/b/elsewhere"
cd "$work/b/elsewhere"
export DOCKER_HOST="unix://$work/b/docker.sock" ENVKIT_HOME="$work/b/store"
echo "# host B: DOCKER_HOST=$DOCKER_HOST ENVKIT_HOME=$ENVKIT_HOME"
show docker images
show envkit replay "$ref"

# Host B again, now on host A's store as a cluster shares it (ENVKIT_HOME on a shared filesystem): the run id alone.
export ENVKIT_HOME="$work/a/project/.envkit"
echo "# host B: DOCKER_HOST=$DOCKER_HOST ENVKIT_HOME=$ENVKIT_HOME (host A's store, shared)"
show envkit replay "$run_id"
