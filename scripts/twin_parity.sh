#!/usr/bin/env bash
# The whole GSHN training step against its PyTorch twin (python/gshn_twin.py, written from
# DESIGN §4 and the README, not from the Rust). For every config in python/twin_configs/ (the
# default, each ablation of the README's tables, the relation recipe, hard negatives, text
# features, and option sets covering every LIF and fusion switch), `gshn dump-batch` writes
# one training step in f64 and in f32 from fresh parameters, and for three of them (default,
# options2, options3) also from a checkpoint trained 25 epochs (trained weights, non-zero AdamW
# moments, clipping on).
# python/twin_parity.py replays each dump in PyTorch and names the first parameter that
# disagrees (docs/VALIDATION.md §5).
#
#   scripts/twin_parity.sh [OUT_DIR] [PYTHON]     (defaults: runs/twin, .venv-py/bin/python)
#   GSHN=path/to/gshn   another binary (default target/release/gshn, built if missing)
#   DEVICE=cuda         dump the steps from the CUDA backend (default cpu), in f32 only: the
#                       CUDA InfoNCE has no f64 kernels
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/twin}
py=${2:-.venv-py/bin/python}
gshn=${GSHN:-target/release/gshn}
device=${DEVICE:-cpu}
[[ -x $gshn ]] || cargo build --release --quiet
mkdir -p "$out"
data=$out/data
[[ -d $data/train ]] || "$gshn" synth --out "$data" --train 64 --val 16 --seed 0 >/dev/null
# Order-aware caption features (the README's second table) on a copy of the same scenes.
if [[ ! -f $data-features/train/text_features.safetensors ]]; then
  rm -rf "$data-features" && cp -r "$data" "$data-features"
  python3 scripts/synth_text_features.py "$data-features" >/dev/null
fi

dump() { # name data dtype [dump-batch args...]
  local name=$1 d=$2 dtype=$3
  shift 3
  "$gshn" dump-batch --data "$d" --dtype "$dtype" --device "$device" \
    --out "$out/${name}_$dtype.safetensors" "$@" >/dev/null
  dumps+=("$out/${name}_$dtype.safetensors")
}
dumps=()
dtypes="f64 f32"
[[ $device == cpu ]] || dtypes=f32
for cfg in python/twin_configs/*.toml; do
  name=$(basename "$cfg" .toml)
  d=$data
  [[ $name == text_features ]] && d=$data-features
  # Step 5 is in epoch 1 (4 steps per epoch): past the STL/node-CL pre-training, so every
  # loss term of the config is on.
  for dtype in $dtypes; do dump "$name" "$d" $dtype --config "$cfg" --step 5; done
done
for name in default options2 options3; do
  run=$out/trained_$name
  "$gshn" train --data "$data" --out "$run" --config "python/twin_configs/$name.toml" \
    --epochs 25 --overwrite --device "$device" >"$run.log" 2>&1 || { tail -n 20 "$run.log" >&2; exit 1; }
  for dtype in $dtypes; do dump "trained_$name" "$data" $dtype --checkpoint "$run"; done
done
[[ ${DUMP_ONLY:-0} == 1 ]] && exit 0
"$py" python/twin_parity.py --json "$out/parity.json" "${dumps[@]}"
