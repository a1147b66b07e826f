#!/usr/bin/env bash
# Trains GSHN and each ablation (configs/ablations/*.toml) over several seeds on the synthetic
# dataset and prints a markdown table of val retrieval: mean [min, max] over seeds.
#   usage: scripts/ablations.sh [DATA_DIR] [RUNS_DIR] [EPOCHS] [SEEDS...]
#   EXTRA='TOML lines' is appended to every config, e.g. EXTRA=$'[model.text]\nsource = "features"'
#   for the order-aware caption features, or EXTRA="$(cat configs/relation.toml)" for the
#   relation loss (a [train] table in EXTRA is merged with the seed's).
#   VARIANTS='full gat_only' trains and prints only these (default: every configs/ablations/*.toml).
#   JOBS=N trains N runs at once (default: one per core), each on nproc/N threads. Results do
#   not depend on the thread count; one run barely uses a second thread, so on 2 cores JOBS=2
#   trains two runs in about the time of one (318 s against 294 s, 60-epoch relation recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data/synth}
runs=${2:-runs/ablations}
epochs=${3:-30}
shift $(( $# < 3 ? $# : 3 )) || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
cargo build --release --quiet
bin=target/release/gshn
[ -f "$data/train/panoptic.json" ] || $bin synth --out "$data" --train 2000 --val 200 --seed 0
jobs=${JOBS:-$(nproc)}
threads=$(( $(nproc) / jobs )); [ "$threads" -ge 1 ] || threads=1
run_one() {  # config name, seed
  local name=$1 s=$2 out="$runs/$1-seed$2" tmp
  tmp=$(mktemp); cp "configs/ablations/$name.toml" "$tmp"; printf '\n[train]\nseed = %s\n' "$s" >> "$tmp"
  [ -z "${EXTRA:-}" ] || printf '\n%s\n' "$EXTRA" >> "$tmp"
  # a [train] table may already exist: merge by letting toml see one table
  python3 - "$tmp" <<'PY'
import sys, re
p = sys.argv[1]; t = open(p).read()
parts = re.split(r'^\[train\]\s*$', t, flags=re.M)
if len(parts) > 2:
    t = parts[0] + '[train]' + ''.join(parts[1:])
open(p, 'w').write(t)
PY
  echo "== $name seed $s" >&2
  local ok=0
  RAYON_NUM_THREADS=$threads $bin train --data "$data" --out "$out" --config "$tmp" --epochs "$epochs" --device cpu --overwrite > "$out.log" 2>&1 || ok=$?
  rm -f "$tmp"
  [ "$ok" -eq 0 ] || { echo "failed: $out (see $out.log)" >&2; return 1; }
  $bin eval --data "$data" --checkpoint "$out" --json --device cpu > "$out/eval.json"
}
mkdir -p "$runs"
# a failed run stops the others too (each job is a subshell waiting on its gshn)
trap 'for j in $(jobs -p); do pkill -P "$j"; kill "$j"; done 2>/dev/null || true' EXIT
variants=(${VARIANTS:-$(basename -s .toml configs/ablations/*.toml)})
for name in "${variants[@]}"; do
  [ -f "configs/ablations/$name.toml" ] || { echo "no configs/ablations/$name.toml" >&2; exit 1; }
  for s in "${seeds[@]}"; do
    [ -f "$runs/$name-seed$s/eval.json" ] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    run_one "$name" "$s" &
  done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n; done
python3 - "$runs" "${variants[*]}" "${seeds[@]}" <<'PY'
import json, sys, os, statistics
runs, names, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
order = ["full", "gat_only", "snn_only", "no_stl", "no_node_cl", "mean_pool_mlp"]
names = [n for n in order if n in names] + [n for n in names if n not in order]
res = {}  # (variant, seed) -> eval.json of the runs that finished
for n in names:
    for s in seeds:
        p = f"{runs}/{n}-seed{s}/eval.json"
        if os.path.exists(p):
            res[n, s] = json.load(open(p))
print("| variant | t2i R@1 | i2t R@1 | t2i R@5 | rsum | seeds |")
print("|---|---|---|---|---|---|")
for n in names:
    rs = [res[n, s] for s in seeds if (n, s) in res]
    if not rs: continue
    def cell(k):
        v = [r[k] for r in rs]
        return f"{sum(v)/len(v):.1f} [{min(v):.1f}, {max(v):.1f}]"
    print(f"| {n} | {cell('t2i_r1')} | {cell('i2t_r1')} | {cell('t2i_r5')} | {cell('rsum')} | {len(rs)} |")
# DESIGN §4.4: compare variants paired by seed. Student t, two-sided 95%, df = seeds − 1
# (df > 20 uses df = 20's value: slightly conservative).
T975 = [12.71, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086]
if "full" in names:
    print("\nt2i R@1, full minus each variant, paired by seed: mean [95% CI], full ahead on k of n seeds")
    for n in (n for n in names if n != "full"):
        d = [res["full", s]["t2i_r1"] - res[n, s]["t2i_r1"] for s in seeds if ("full", s) in res and (n, s) in res]
        if len(d) < 2: continue
        m, half = statistics.mean(d), T975[min(len(d), 21) - 2] * statistics.stdev(d) / len(d) ** 0.5
        print(f"  {n:<14} {m:+.2f} [{m - half:+.2f}, {m + half:+.2f}]  {sum(x > 0 for x in d)}/{len(d)}")
PY
