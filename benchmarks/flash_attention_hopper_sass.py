"""What the compiler makes of the L05 appendix's Hopper kernels, without a GPU.

    python benchmarks/flash_attention_hopper_sass.py                 # the fast path, D = 64 and 128
    python benchmarks/flash_attention_hopper_sass.py --ablation      # every rung of the ablation

Triton compiles a kernel ahead of time for any target (here sm_90, the H100/H200) with the ptxas it
ships, so a CPU machine can read what the H200 would run: registers per thread, spills (stack frame,
LDL = loads from local memory), shared memory, and counts of the instructions that matter on Hopper
(HGMMA: warp-group matmuls; HMMA: the older per-warp ones; UTMALDG: TMA loads; REDG/UBLKRED: atomic
reductions). Register counts are what tile choices trade against: past 255 per thread a kernel spills.
The figures depend on the Triton version (this machine's, not necessarily the GPU machine's).
"""
import argparse
import glob
import itertools
import os
import subprocess
import tempfile

import _path  # noqa: F401  (before the course's modules: the course folder on sys.path)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tutorial.L05_flash_attention.hopper import flash_attention_hopper as fah

# (kernel, tile-argument roles, scalar argument types): roles m / n are BLOCK_M / BLOCK_N-row tiles of
# the input dtype, d the float32 dQ of the atomic backward; the scalars follow the kernels' signatures.
KERNELS = {
    "fwd": (fah._fwd_kernel, "mnnm", ["*fp32", "i32", "i32", "i32", "i32", "fp32"]),
    "dkdv": (fah._dkdv_kernel, "mnnmnnd", ["*fp32", "*fp32", "i32", "i32", "i32", "i32", "fp32", "fp32"]),
    "dq": (fah._dq_kernel, "mnnmm", ["*fp32", "*fp32", "i32", "i32", "i32", "i32", "fp32", "fp32"]),
}


def cuobjdump():
    paths = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    return paths[0] if paths else "cuobjdump"


def instruction_order(sass):
    """The warp-group matmuls (HGMMA, runs counted), their waits (WARPGROUP.DEPBAR with its operand:
    0x0 = wait for every matmul issued) and the exponentials (MUFU.EX2), in program order."""
    import re
    seq = []
    for line in sass.splitlines():
        m = re.search(r"\*/\s+(?:@!?U?P\d\s+)?([A-Z][A-Z0-9_.]+)([^;]*);", line)
        if not m or not m.group(1).startswith(("HGMMA", "MUFU.EX2", "WARPGROUP.DEPBAR")):
            continue
        op = m.group(1).split(".")[0] if m.group(1).startswith("HGMMA") else m.group(1)
        if op.startswith("WARPGROUP.DEPBAR"):
            op = f"{op} {m.group(2).strip()}"
        if seq and seq[-1][0] == op:
            seq[-1][1] += 1
        else:
            seq.append([op, 1])
    return "  ".join(f"{op} x{n}" if n > 1 else op for op, n in seq)


def compile_one(name, head_dim, causal, steps, tile, dtype="fp16", order=False):
    kernel, roles, scalars = KERNELS[name]
    rows = {"m": tile.block_m, "n": tile.block_n, "d": tile.block_m}
    atomic = (2 if steps.tma else 1) if steps.atomic_dq else 0
    signature = {}
    for arg, role in zip(kernel.arg_names, roles):
        ty = "fp32" if role == "d" else dtype
        tma = steps.tma and (role != "d" or atomic == 2)
        signature[arg] = f"tensordesc<{ty}[{rows[role]}, {head_dim}]>" if tma else f"*{ty}"
    signature.update(zip(kernel.arg_names[len(roles):], scalars))
    constants = dict(HEAD_DIM=head_dim, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, CAUSAL=causal,
                     EXP2=steps.exp2, SPLIT_DIAG=steps.split_diagonal, TMA=steps.tma, PERSISTENT=steps.persistent,
                     WARP_SPEC=steps.warp_specialize, **({"DQ_ATOMIC": atomic} if name == "dkdv" else {}),
                     **({"OVERLAP": steps.overlap} if name == "fwd" else {}))
    signature.update({k: "constexpr" for k in constants})
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=tile.warps, num_stages=tile.stages))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([cuobjdump(), "--dump-sass", f.name], capture_output=True, text=True).stdout
    fields = dict(x.split(":", 1) for x in usage.split() if x.startswith(("REG:", "STACK:")))
    if order:
        print(f"{name} D={head_dim} causal={causal} {steps}: " + instruction_order(sass))
    return dict(regs=fields.get("REG", "?"), stack=fields.get("STACK", "?"), smem=compiled.metadata.shared,
                LDL=sass.count("LDL"), HGMMA=sass.count("HGMMA"), HMMA=sass.count("HMMA"),
                UTMALDG=sass.count("UTMALDG"), RED=sass.count("REDG") + sass.count("UBLKRED"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablation", action="store_true", help="every rung of the benchmark's ladder")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--order", action="store_true", help="print each forward's matmul/wait/exp2 order")
    args = parser.parse_args()
    import flash_attention_hopper_gpu as bench
    ladder = bench.ABLATION if args.ablation else [("fast", fah.FAST, None)]
    print(f"triton {triton.__version__}, target sm_90")
    print(f"{'rung':12s} {'kernel':11s} {'D':>3s} {'causal':6s} {'tile':18s} regs stack   smem  LDL HGMMA HMMA "
          f"TMA-loads reductions")
    for (rung, steps, l05_tiles), head_dim, causal in itertools.product(ladder, args.head_dims, (False, True)):
        for name in ("fwd", "dkdv", "dq"):
            if name == "dq" and steps.atomic_dq:
                continue
            key = ("dkdv_atomic" if name == "dkdv" and steps.atomic_dq
                   else "fwd_overlap" if name == "fwd" and steps.overlap else name)
            tile = bench.L05_TILES[head_dim][name] if l05_tiles else fah.TILES[(key, head_dim, causal)]
            try:
                r = compile_one(name, head_dim, causal, steps, tile, order=args.order and name == "fwd")
            except Exception as e:  # a variant this Triton cannot build: say so and go on
                print(f"{rung:12s} {key:11s} {head_dim:3d} {causal!s:6s} FAILED {type(e).__name__}: "
                      f"{str(e).strip().splitlines()[-1][:200]}")
                continue
            shape = f"{tile.block_m}x{tile.block_n} w{tile.warps} s{tile.stages}"
            print(f"{rung:12s} {key:11s} {head_dim:3d} {causal!s:6s} {shape:18s} {r['regs']:>4s} {r['stack']:>5s} "
                  f"{r['smem']:6d} {r['LDL']:4d} {r['HGMMA']:5d} {r['HMMA']:4d} {r['UTMALDG']:9d} {r['RED']:10d}",
                  flush=True)


if __name__ == "__main__":
    main()
