"""L05 appendix profile: one forward each of the Hopper fast path, L05's kernel and cuDNN, for Nsight Compute.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight --section ComputeWorkloadAnalysis \\
        --section WarpStateStats --section Occupancy --section LaunchStats \\
        python benchmarks/flash_attention_hopper_profile_gpu.py --impl solutions > /tmp/attn_ncu.txt

B = 4, H = 16, L = 8k, D = 128, bfloat16, not causal (the largest miss of the appendix's targets). The three
calls run once to compile, then once inside cudaProfilerStart/Stop, which is all ncu profiles. What to read
(appendix README): SM Busy (the busiest pipe; for these kernels the tensor pipe and the shared-memory traffic
that feeds it), Issue Slots Busy, registers per thread and the block size (cuDNN's 384 threads are a producer
warp group and two consumer warp groups that take turns on the tensor cores).
"""
import argparse

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default=None, help="package with flash_attention_triton (default: model)")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--head-dim", type=int, default=128, choices=[64, 128])
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from coursekit.bench import profile_once
    from coursekit.impl import Implementation
    from tutorial.L05_flash_attention.hopper import flash_attention_hopper as fah
    l05 = Implementation(args.impl).flash_attention_triton
    B, H, L, D = 4, 2048 // args.head_dim, args.seq_len, args.head_dim
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    calls = [lambda: fah.hopper_flash_attention_forward(q, k, v, causal=args.causal),
             lambda: l05.triton_flash_attention_forward(q, k, v, causal=args.causal),
             lambda: F.scaled_dot_product_attention(q, k, v, is_causal=args.causal)]
    with torch.no_grad(), sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        profile_once(calls)                   # compiled outside the profiled range
    print("profiled: hopper_flash_attention_forward, L05 triton_flash_attention_forward, cuDNN SDPA")


if __name__ == "__main__":
    main()
