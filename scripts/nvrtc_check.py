#!/usr/bin/env python3
"""Compile each NVRTC source exported by build.rs ($OUT_DIR/<name>.nvrtc.cu, or kernels/*.cu with
common.cuh inlined the same way) with NVRTC and no include path, as the run-time fallback does.
Usage: scripts/nvrtc_check.py [libnvrtc.so path]  (default: the .venv-cuda copy; pip-install
nvidia-cuda-nvrtc==13.0.* there first)."""
import ctypes, glob, os, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
lib = sys.argv[1] if len(sys.argv) > 1 else (glob.glob(f"{root}/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13") or [None])[0]
if not lib:
    sys.exit("libnvrtc not found: pip install 'nvidia-cuda-nvrtc==13.0.*' into .venv-cuda")
# libnvrtc dlopen()s libnvrtc-builtins.so.13.0 by soname: needs LD_LIBRARY_PATH=<lib dir>, or preload it.
for b in glob.glob(os.path.join(os.path.dirname(lib), "libnvrtc-builtins.so.*")):
    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
nv = ctypes.CDLL(lib)
header = open(f"{root}/kernels/common.cuh").read()
arch = os.environ.get("GSHN_CUDA_ARCH", "compute_80")
bad = 0
for path in sorted(glob.glob(f"{root}/kernels/*.cu")):
    src = open(path).read().replace('#include "common.cuh"', header)
    prog = ctypes.c_void_p()
    assert nv.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), os.path.basename(path).encode(), 0, None, None) == 0
    opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = nv.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    nv.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    nv.nvrtcGetProgramLog(prog, log)
    psz = ctypes.c_size_t()
    nv.nvrtcGetPTXSize(prog, ctypes.byref(psz))
    print(f"{os.path.basename(path):16s} rc={rc} ptx={psz.value} bytes")
    if rc != 0:
        bad = 1
        print(log.value.decode(errors="replace"))
    nv.nvrtcDestroyProgram(ctypes.byref(prog))
sys.exit(bad)
