#!/usr/bin/env bash
# envkit's GPU check: everything envkit promises on a GPU host, in one unattended run of a few minutes, offline.
#
#   bash benchmarks/gpu/check.sh [--out DIR] [--image REF] [--cpu]
#
# Steps (each ends ok, failed or skipped-with-the-reason; the script goes on after a failure):
#   fingerprint  the host's NVML fingerprint -> DIR/gpu-fingerprint.json (add it to tests/unit/gpu_hosts/)
#   determinism  strict mode: index_add_ and scatter_add_ on CUDA identical in 3 processes; put_ and histc refused
#   cost         the cost of determinism: a small CNN's training step, strict against off, as a ratio
#   engine       `envkit doctor`: a container with --gpus all runs nvidia-smi -L; the driver against the CUDA lock
#   image        the CUDA image: --image / ENVKIT_GPU_IMAGE, else locked and built here (see "Needs" below)
#   tests        pytest -m gpu (the bootstrap's CUDA tests, NVML against nvidia-smi, the container GPU tests)
#   run-gpu      `envkit run --gpus 1` on a job that asserts CUDA and writes a CUDA tensor's digest, then its
#                replay: IDENTICAL
#   run-none     `envkit run --gpus none` on the same host (the job asserts it sees no GPU), then its replay
#   compile      torch.compile on the GPU inside the image (triton needs the base's C compiler)
# Output: DIR/summary.txt and DIR/summary.json (the GPU's name with every figure), DIR/logs/*.log.
# Exit: 0 when no step failed.
#
# Needs (GPU mode), and nothing from the network:
#   - this repository (the script puts it on PYTHONPATH) and a python3 >= 3.11 with envkit's dependencies (typer, rich,
#     pyyaml, packaging, pathspec, nvidia-ml-py; docker and uv for the container steps) and pytest;
#   - an NVIDIA driver (nvidia-smi) and, for the host steps, torch with CUDA in that python3;
#   - for the container steps: a Docker engine with the NVIDIA container toolkit, and the CUDA image:
#       * --image REF or ENVKIT_GPU_IMAGE=REF: an image already on the engine (e.g. `docker load -i cuda-image.tar`), or
#       * built here from a lock of torch==$ENVKIT_GPU_TORCH (default 2.13.0) with its CUDA wheels, which pip must
#         find through this host's configuration (a local index or find-links folder: `pip config list`), on the
#         base envkit/base:bookworm-py3.11-dev (or ENVKIT_BASE_TAR=base.tar to `docker load`; the -dev base has the
#         compiler torch.compile needs). About 3 GB of wheels: a few minutes on 16 cores, then a cache hit.
#     Without them those steps are skipped with the reason; the host steps still run.
# --cpu: every step that has a CPU form runs on the CPU, the GPU-only steps are skipped: how CI keeps this script
#     working on machines without a GPU (tests/integration/test_gpu_check_script.py, with --image of the CPU image).
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${TMPDIR:-/tmp}/envkit-gpu-check"
IMAGE="${ENVKIT_GPU_IMAGE:-}"
MODE=gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --image) IMAGE="$2"; shift 2 ;;
    --cpu) MODE=cpu; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
mkdir -p "$OUT/logs" "$OUT/work"
rm -rf "$OUT/steps"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ENVKIT_HOME="$OUT/work/store"  # the check's runs stay out of the repository's store
DEVICE=cuda; [ "$MODE" = cpu ] && DEVICE=cpu

envkit() { "$PY" -m envkit "$@"; }
step() {  # NAME STATUS SECONDS DETAIL [FIGURES_JSON]
  "$PY" "$HERE/report.py" step "$OUT" "$@"
  printf '[%s] %-12s %s: %s\n' "$GPU" "$1" "$2" "$4" >&2
}
now() { date +%s.%N; }
engine_py() { "$PY" -c "import sys; from envkit.engine import connect; $1" "${@:2}"; }  # CODE [ARGS]: with the engine
since() { "$PY" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$(now)"; }
last_line() { tail -n 1 "$1" 2>/dev/null | cut -c1-300; }
json_get() {  # FILE EXPR: a value from the file's JSON (the whole file, else its last line; python over `d`)
  "$PY" -c "
import json, sys
text = open(sys.argv[1]).read().strip()
try:
    d = json.loads(text)
except ValueError:
    d = json.loads(text.splitlines()[-1])
print($2)" "$1" 2>/dev/null
}

if [ "$MODE" = gpu ] && command -v nvidia-smi >/dev/null 2>&1; then
  GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
  GPU="${GPU:-unknown GPU}"
else
  GPU="cpu"
fi
echo "envkit GPU check on $GPU ($MODE mode), output in $OUT" >&2

# --- fingerprint ---------------------------------------------------------------------------------------------------
t=$(now)
if "$PY" -c "import json; from envkit.fingerprint import host_fingerprint as f; print(json.dumps(f(), indent=1))" \
    > "$OUT/gpu-fingerprint.json" 2> "$OUT/logs/fingerprint.log"; then
  figs=$("$PY" - "$OUT/gpu-fingerprint.json" <<'EOF'
import json, sys
g = json.load(open(sys.argv[1]))["gpus"]
print(json.dumps({"gpus": g.get("count", 0), "driver": g.get("driver_version"),
                  "cuda_driver": g.get("cuda_driver_version"), "source": g.get("source"), "reason": g.get("reason")}))
EOF
)
  available=$(json_get "$OUT/gpu-fingerprint.json" "d['gpus'].get('available', False)")
  if [ "$MODE" = cpu ] || [ "$available" = True ]; then
    step fingerprint ok "$(since "$t")" "written to gpu-fingerprint.json" "$figs"
  else
    step fingerprint failed "$(since "$t")" "NVML sees no GPU" "$figs"
  fi
else
  step fingerprint failed "$(since "$t")" "$(last_line "$OUT/logs/fingerprint.log")"
fi

# --- determinism ---------------------------------------------------------------------------------------------------
t=$(now)
if timeout 900 "$PY" "$HERE/determinism.py" --device "$DEVICE" > "$OUT/logs/determinism.log" 2>&1; then
  off_same=$(json_get "$OUT/logs/determinism.log" \
    "json.dumps({'off_identical': all(v.get('identical') for v in d.get('off', {}).values() if isinstance(v, dict))})")
  step determinism ok "$(since "$t")" \
    "strict: index_add_ and scatter_add_ identical in 3 processes; nondeterministic ops refused" "$off_same"
else
  step determinism failed "$(since "$t")" "$(last_line "$OUT/logs/determinism.log")"
fi

# --- cost ----------------------------------------------------------------------------------------------------------
t=$(now)
if [ "$MODE" = gpu ]; then rounds=5; steps=40; else rounds=2; steps=5; fi
if timeout 900 "$PY" "$HERE/cnn_cost.py" --device "$DEVICE" --rounds "$rounds" --steps "$steps" \
    > "$OUT/logs/cost.log" 2>&1; then
  ratio=$(json_get "$OUT/logs/cost.log" "d['ratio_strict_over_off']")
  step cost ok "$(since "$t")" "small CNN training step, strict / off = ${ratio}x" "$(tail -n 1 "$OUT/logs/cost.log")"
else
  step cost failed "$(since "$t")" "$(last_line "$OUT/logs/cost.log")"
fi

# --- engine --------------------------------------------------------------------------------------------------------
t=$(now)
ENGINE=no
if engine_py "connect(timeout=20)" > "$OUT/logs/engine.log" 2>&1; then
  ENGINE=yes
  envkit doctor --json --lock "$ROOT/lockfiles/cuda.lock.yaml" > "$OUT/logs/doctor.json" 2>> "$OUT/logs/engine.log"
  gpu_ok=$("$PY" - "$OUT/logs/doctor.json" <<'EOF'
import json, sys
checks = {c["name"]: c for c in json.load(open(sys.argv[1]))}
c = checks.get("GPU containers")
print("none" if c is None else ("ok" if c["ok"] else "failed: " + c["detail"]))
EOF
)
  if [ "$MODE" = cpu ]; then
    step engine ok "$(since "$t")" "Docker engine reachable (GPU containers not checked in --cpu mode)"
  elif [ "$gpu_ok" = ok ]; then
    step engine ok "$(since "$t")" "a container with --gpus all runs nvidia-smi -L"
  else
    step engine failed "$(since "$t")" "GPU containers: $gpu_ok"
    ENGINE=no-gpu
  fi
else
  step engine skipped "$(since "$t")" \
    "no Docker engine here ($(last_line "$OUT/logs/engine.log")): the container steps are skipped"
fi

# --- image ---------------------------------------------------------------------------------------------------------
t=$(now)
if [ "$ENGINE" = no ]; then
  step image skipped 0 "no Docker engine"
elif [ -n "$IMAGE" ]; then
  if docker_id=$(engine_py "print(connect().image(sys.argv[1]).id)" "$IMAGE" 2> "$OUT/logs/image.log"); then
    IMAGE="$docker_id"
    step image ok "$(since "$t")" "given: $IMAGE"
  else
    step image failed "$(since "$t")" "$(last_line "$OUT/logs/image.log")"; IMAGE=""
  fi
elif [ "$MODE" = cpu ]; then
  step image skipped 0 "--cpu without --image: nothing to build a CUDA image for"
elif [ "$ENGINE" != yes ]; then
  step image skipped 0 "no GPU containers on this engine: a CUDA image would not run (see the engine step)"
else
  if [ -n "${ENVKIT_BASE_TAR:-}" ]; then docker load -i "$ENVKIT_BASE_TAR" >> "$OUT/logs/image.log" 2>&1; fi
  base=""
  for tag in envkit/base:bookworm-py3.11-dev envkit/base:bookworm-py3.11; do
    if engine_py "sys.exit(connect().find_image(sys.argv[1]) is None)" "$tag"; then base=$tag; break; fi
  done
  if [ -z "$base" ]; then
    step image skipped "$(since "$t")" \
      "no base image (make one with envkit base ... --compiler, or ENVKIT_BASE_TAR=base.tar)"
  else
    cat > "$OUT/work/gpu-check.envkit.yaml" <<EOF
name: gpu-check
python: "3.11"
base: $base
packages:
  - torch==${ENVKIT_GPU_TORCH:-2.13.0}
pip_config: true
EOF
    lock="$OUT/work/gpu-check.lock.yaml"
    if timeout 900 "$PY" -m envkit lock "$OUT/work/gpu-check.envkit.yaml" -o "$lock" >> "$OUT/logs/image.log" 2>&1 \
      && timeout 1800 "$PY" -m envkit build "$lock" --json > "$OUT/logs/build.json" 2>> "$OUT/logs/image.log"; then
      IMAGE=$(json_get "$OUT/logs/build.json" "d['image_id']")
      figs=$(json_get "$OUT/logs/build.json" "json.dumps({'build_s': round(d['seconds']), 'cache_hit': d['cache_hit']})")
      step image ok "$(since "$t")" "built from torch==${ENVKIT_GPU_TORCH:-2.13.0} on $base" "$figs"
    else
      step image skipped "$(since "$t")" \
        "could not lock or build the CUDA image offline: $(last_line "$OUT/logs/image.log") (give --image)"
    fi
  fi
fi

# --- tests ---------------------------------------------------------------------------------------------------------
t=$(now)
if [ "$MODE" = cpu ]; then
  step tests skipped 0 "--cpu: the tests marked gpu need a GPU"
else
  files=$(cd "$ROOT" && grep -rlE "mark\.gpu|pytestmark = .*gpu" tests --include='test_*.py' | sort)
  ( cd "$ROOT" && ENVKIT_GPU_IMAGE="$IMAGE" timeout 1200 "$PY" -m pytest -q -m gpu -p no:cacheprovider $files ) \
    > "$OUT/logs/tests.log" 2>&1
  rc=$?
  counts=$(grep -E "^[0-9]+ (passed|failed|skipped)|passed|failed" "$OUT/logs/tests.log" | tail -n 1)
  if [ $rc -eq 0 ]; then step tests ok "$(since "$t")" "$counts"; else step tests failed "$(since "$t")" "$counts"; fi
fi

# --- runs and replays ----------------------------------------------------------------------------------------------
project="$OUT/work/project"
rm -rf "$project" && mkdir -p "$project" && cp "$HERE/jobs/digest.py" "$HERE/jobs/compile.py" "$project/"
run_and_replay() {  # NAME GPUS EXPECT
  local name=$1 gpus=$2 expect=$3 t rid verdict why
  t=$(now)
  if ! (cd "$project" && timeout 900 "$PY" -m envkit run --seed 5 --gpus "$gpus" --image "$IMAGE" --json digest.py \
        --expect "$expect") > "$OUT/logs/$name.json" 2> "$OUT/logs/$name.log"; then
    why=$(grep -m1 '^error' "$OUT/logs/$name.log" || last_line "$OUT/logs/$name.log")
    step "$name" failed "$(since "$t")" "envkit run --gpus $gpus: $why"
    return
  fi
  rid=$(json_get "$OUT/logs/$name.json" "d['run_id']")
  (cd "$project" && timeout 900 "$PY" -m envkit replay "$rid" --json) \
    > "$OUT/logs/$name-replay.json" 2>> "$OUT/logs/$name.log"
  verdict=$(json_get "$OUT/logs/$name-replay.json" "d['verdict']['kind']")
  if [ "$verdict" = IDENTICAL ]; then
    step "$name" ok "$(since "$t")" "run $rid (--gpus $gpus) replayed IDENTICAL" \
      "{\"run_id\": \"$rid\", \"verdict\": \"$verdict\"}"
  else
    step "$name" failed "$(since "$t")" "replay of $rid: ${verdict:-no verdict} ($(last_line "$OUT/logs/$name.log"))"
  fi
}
if [ "$ENGINE" = no ] || [ -z "$IMAGE" ]; then
  step run-gpu skipped 0 "no engine or no image"
  step run-none skipped 0 "no engine or no image"
  step compile skipped 0 "no engine or no image"
else
  if [ "$MODE" = gpu ] && [ "$ENGINE" = yes ]; then
    run_and_replay run-gpu 1 cuda
  else
    step run-gpu skipped 0 "no GPU containers here"
  fi
  run_and_replay run-none none cpu
  if [ "$MODE" = gpu ] && [ "$ENGINE" = yes ]; then
    t=$(now)
    if (cd "$project" && timeout 900 "$PY" -m envkit run --seed 1 --gpus 1 --image "$IMAGE" compile.py) \
        > "$OUT/logs/compile.log" 2>&1; then
      step compile ok "$(since "$t")" "torch.compile ran on the GPU in the image"
    else
      step compile failed "$(since "$t")" "$(grep -m1 -E 'Error|error' "$OUT/logs/compile.log" | cut -c1-300)"
    fi
  else
    step compile skipped 0 "no GPU containers here"
  fi
fi

"$PY" "$HERE/report.py" summary "$OUT" "$GPU" "$MODE"
