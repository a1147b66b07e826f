#!/usr/bin/env bash
# Trains the full GSHN in f32 and in each half precision (train.precision) over the same seeds
# on the default synthetic dataset, and prints val retrieval paired by seed: each precision's
# t2i R@1 minus f32's, mean with its 95% interval (Student t, df = seeds − 1).
#   usage: scripts/precision_study.sh [DATA_DIR] [RUNS_DIR] [EPOCHS] [SEEDS...]
#   PRECISIONS='bf16 f16' (default: bf16). JOBS as in ablations.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data/synth}
runs=${2:-runs/precision}
epochs=${3:-30}
shift $(( $# < 3 ? $# : 3 )) || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
precisions=(f32 ${PRECISIONS:-bf16})
for p in "${precisions[@]}"; do
  EXTRA=$(printf '[train]\nprecision = "%s"' "$p") VARIANTS=full \
    bash scripts/ablations.sh "$data" "$runs/$p" "$epochs" "${seeds[@]}" > /dev/null
done
python3 - "$runs" "${precisions[*]}" "${seeds[@]}" <<'PY'
import json, os, statistics, sys
runs, precisions, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
T975 = [12.71, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
def result(p, s):
    path = f"{runs}/{p}/full-seed{s}"
    r = json.load(open(f"{path}/eval.json"))
    # steps per second of the run, from its metrics log
    steps = [json.loads(l) for l in open(f"{path}/metrics.jsonl") if '"kind":"step"' in l.replace(" ", "")]
    r["graphs_per_s"] = steps[-1]["graphs_per_s"] if steps else float("nan")
    r["loss_scale"] = steps[-1].get("loss_scale") if steps else None
    return r
res = {(p, s): result(p, s) for p in precisions for s in seeds}
print("| precision | seed | t2i R@1 | i2t R@1 | rsum | graphs/s | final loss scale |")
print("|---|---|---|---|---|---|---|")
for p in precisions:
    for s in seeds:
        r = res[p, s]
        print(f"| {p} | {s} | {r['t2i_r1']:.1f} | {r['i2t_r1']:.1f} | {r['rsum']:.1f} | {r['graphs_per_s']:.0f} | {r['loss_scale'] or '-'} |")
print("\nt2i R@1 minus f32's, paired by seed: mean [95% CI]")
for p in precisions[1:]:
    d = [res[p, s]["t2i_r1"] - res["f32", s]["t2i_r1"] for s in seeds]
    m = statistics.mean(d)
    half = T975[len(d) - 2] * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    print(f"  {p:<5} {m:+.2f} [{m - half:+.2f}, {m + half:+.2f}]  (per seed: {', '.join(f'{x:+.1f}' for x in d)})")
PY
