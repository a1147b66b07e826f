#!/usr/bin/env bash
# CI kernel check: install nvcc 13.0 from PyPI (scripts/install_nvcc.sh), compile every kernels/*.cu to
# PTX with the same flags as build.rs, assemble the PTX with `ptxas -v` for each SASS arch, print a
# per-kernel table (registers, static shared memory, stack, spill stores/loads) and FAIL on any
# compile error or any spill. Needs only python3 (+ venv/pip) and a host C++ compiler (g++), which
# nvcc uses to preprocess.
#   GSHN_CUDA_ARCH   PTX virtual arch (default compute_80, as build.rs)
#   CHECK_SM         SASS archs for ptxas (default "sm_80 sm_90")
#   --cargo          also run `GSHN_REQUIRE_NVCC=1 cargo build --release --lib`
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NVCC="$("$ROOT/scripts/install_nvcc.sh" | tail -n1)"
PTXAS="$(dirname "$NVCC")/ptxas"
ARCH="${GSHN_CUDA_ARCH:-compute_80}"
SMS="${CHECK_SM:-sm_80 sm_90}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

fail=0
for cu in kernels/*.cu; do
  name="$(basename "$cu" .cu)"
  if ! "$NVCC" -ptx "-arch=$ARCH" -O3 -std=c++17 -I kernels "$cu" -o "$OUT/$name.ptx" 2>"$OUT/$name.err"; then
    echo "FAIL: nvcc $cu"; cat "$OUT/$name.err"; fail=1; continue
  fi
  for sm in $SMS; do
    if ! "$PTXAS" -v "-arch=$sm" "$OUT/$name.ptx" -o /dev/null 2>"$OUT/$name.$sm.log"; then
      echo "FAIL: ptxas $sm $name"; cat "$OUT/$name.$sm.log"; fail=1
    fi
  done
done

printf '%-34s %-6s %5s %7s %6s %8s %8s\n' kernel sm regs smem_B stack_B spill_st spill_ld
spills=0
for log in "$OUT"/*.sm_*.log; do
  [[ -e "$log" ]] || continue
  sm="${log%.log}"; sm="${sm##*.}"
  # ptxas -v prints, per entry: "Compiling entry function 'k' for 'sm_90'", then
  # "N bytes stack frame, S bytes spill stores, L bytes spill loads", then "Used R registers, ..., M bytes smem".
  while IFS='|' read -r k regs smem stack st ld; do
    printf '%-34s %-6s %5s %7s %6s %8s %8s\n' "$k" "$sm" "$regs" "$smem" "$stack" "$st" "$ld"
    if [[ "$st" != 0 || "$ld" != 0 ]]; then spills=1; fi
    if [[ "$stack" != 0 ]]; then echo "WARN: $k ($sm) uses a ${stack}-byte stack frame (local memory)"; fi
  done < <(awk '
    /Compiling entry function/ { match($0, /function .[^'"'"']*/); k = substr($0, RSTART + 10, RLENGTH - 10); stack=st=ld=0 }
    /bytes stack frame/ { stack=$1; st=$5; ld=$9 }
    /Used [0-9]+ registers/ {
      regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
      smem = 0; if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem) }
      print k "|" regs "|" smem "|" stack "|" st "|" ld
    }' "$log" | sort)
done

if [[ "${1:-}" == "--cargo" ]]; then
  GSHN_REQUIRE_NVCC=1 NVCC="$NVCC" cargo build --release --lib || fail=1
fi
if (( spills )); then echo "FAIL: register spills (see table)"; fail=1; fi
if (( fail )); then exit 1; fi
echo "kernel_check: OK ($(ls kernels/*.cu | wc -l) files, arch $ARCH, ptxas $SMS, no spills)"
