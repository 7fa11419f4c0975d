#!/usr/bin/env bash
# Run every benchmark once, with the issue-sized defaults (about 3-5 minutes on a quiet 2-core CPU; the first run
# also fills the decoder-training feature cache in /tmp/captioner-bench/features, about half a minute more).
#
#   benchmarks/run_all.sh                                   # bundled model (captioner/pretrained/model.safetensors)
#   CHECKPOINT=runs/<run>/best benchmarks/run_all.sh        # another checkpoint
#   OUT=bench-out THREADS=2 benchmarks/run_all.sh           # keep logs + summary.jsonl in bench-out/; torch threads
#   QUICK=1 benchmarks/run_all.sh                           # tiny counts: checks the scripts work (figures meaningless)
#
# Environment: CHECKPOINT (default: bundled model), FOLDER (default ../shared/coco-subset/images/val2017 when present,
# else generated JPEGs), OUT (default /tmp/captioner-bench/results-<time>), THREADS (default: torch's choice), QUICK.
# Each script prints human-readable lines and ends with one JSON line; those lines are collected in $OUT/summary.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
OUT=${OUT:-/tmp/captioner-bench/results-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
: > "$OUT/summary.jsonl"

model=()
if [[ -n "${CHECKPOINT:-}" ]]; then
  model=(--checkpoint "$CHECKPOINT")
elif [[ ! -f captioner/pretrained/model.safetensors ]]; then
  echo "no bundled model at captioner/pretrained/model.safetensors; set CHECKPOINT=... (a stand-in for trying the" >&2
  echo "scripts: python benchmarks/make_dev_checkpoint.py, then CHECKPOINT=/tmp/captioner-bench/dev.safetensors)" >&2
  exit 2
fi
folder=()
FOLDER=${FOLDER:-../shared/coco-subset/images/val2017}
[[ -d "$FOLDER" ]] && folder=(--folder "$FOLDER")
threads=()
[[ -n "${THREADS:-}" ]] && threads=(--threads "$THREADS")

if [[ -n "${QUICK:-}" ]]; then
  latency=(--runs 20 --warmup 3); n=(--n 64); train=(--n-images 64 --cnn-batches 3); mem=(--requests 2)
else
  latency=(); n=(); train=(); mem=()
fi

status=0
run() {  # name, command...
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  if "$@" 2>&1 | tee "$OUT/$name.log"; then
    tail -n 1 "$OUT/$name.log" >> "$OUT/summary.jsonl"
  else
    echo "{\"benchmark\": \"$name\", \"error\": \"exit status ${PIPESTATUS[0]}, see $OUT/$name.log\", \"targets\": []}" >> "$OUT/summary.jsonl"
    status=1
  fi
  echo "=== $name took $((SECONDS - start)) s"
  echo
}

run caption_latency    "$PY" benchmarks/caption_latency.py "${model[@]}" "${latency[@]}" "${threads[@]}"
run folder_throughput  "$PY" benchmarks/folder_throughput.py "${model[@]}" "${folder[@]}" "${n[@]}" "${threads[@]}"
run feature_extraction "$PY" benchmarks/feature_extraction.py "${folder[@]}" "${n[@]}" "${threads[@]}"
run decoder_training   "$PY" benchmarks/decoder_training.py "${train[@]}" "${threads[@]}"
run memory             "$PY" benchmarks/memory.py "${model[@]}" "${mem[@]}"

echo "targets (full logs and summary.jsonl in $OUT):"
"$PY" - "$OUT/summary.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        s = json.loads(line)
    except ValueError:
        print(f"  (not a JSON summary: {line.strip()[:80]})")
        continue
    if "error" in s:
        print(f"  FAIL  {s['benchmark']:<18}  {s['error']}")
    for t in s["targets"]:
        print(f"  {t['status']:<4}  {s['benchmark']:<18}  {t['name']}: {t['measured']:g} {t['unit']} (target {t['op']} {t['target']:g})")
EOF
exit $status
