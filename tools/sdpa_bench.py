#!/usr/bin/env python3
"""The reference for realn_cuda_bench's attention figures (tools/gpu-check.sh runs both in one run):
PyTorch's scaled_dot_product_attention, causal, fp32, on the same shape (one sequence of TOKENS
tokens, HQ query heads, HKV kv heads, head dim D). K and V are expanded to HQ heads before timing
(PyTorch versions before 2.5 have no GQA in SDPA), so the reference's backward does not include
the group reduction of dK/dV that ours does. Best of 5 after a warm-up, synchronised.

Usage: sdpa_bench.py TOKENS HQ HKV D [OURS.jsonl]
Prints one JSON line; with OURS.jsonl (realn_cuda_bench's output), also the ratios SDPA time /
our time for the forward, the backward and both (>= 1: ours is at least as fast).
Exit: 0 measured; 2 bad usage; 77 no torch or no CUDA device (nothing measured)."""
import json
import sys
import time


def best(fn, sync, reps=5):
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    if len(sys.argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    tokens, hq, hkv, d = (int(a) for a in sys.argv[1:5])
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # not installed, or a broken install (missing CUDA libraries)
        print(f"sdpa_bench: no torch ({e})", file=sys.stderr)
        return 77
    if not torch.cuda.is_available():
        print("sdpa_bench: torch sees no CUDA device", file=sys.stderr)
        return 77
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, hq, tokens, d, device=dev, generator=gen).requires_grad_()
    k = torch.randn(1, hkv, tokens, d, device=dev, generator=gen).repeat_interleave(hq // hkv, dim=1).requires_grad_()
    v = torch.randn(1, hkv, tokens, d, device=dev, generator=gen).repeat_interleave(hq // hkv, dim=1).requires_grad_()
    dout = torch.randn(1, hq, tokens, d, device=dev, generator=gen)
    sync = torch.cuda.synchronize

    def forward():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward_backward():
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(dout)

    fwd = best(forward, sync)
    both = best(forward_backward, sync)
    ref = {"bench": "attention_sdpa", "tokens": tokens, "hq": hq, "hkv": hkv, "d": d, "fwd_ms": round(fwd * 1e3, 3),
           "bwd_ms": round((both - fwd) * 1e3, 3), "fwd_bwd_ms": round(both * 1e3, 3), "torch": torch.__version__}
    print(json.dumps(ref))
    if len(sys.argv) == 6:
        ours = None
        with open(sys.argv[5]) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{") and '"attention_f32"' in line:
                    ours = json.loads(line)
        if ours is None:
            print(json.dumps({"bench": "attention_vs_sdpa", "error": f"no attention_f32 line in {sys.argv[5]}"}))
            return 1
        if (ours["tokens"], ours["hq"], ours["hkv"], ours["d"]) != (tokens, hq, hkv, d):
            print(json.dumps({"bench": "attention_vs_sdpa", "error": "shapes differ", "ours": ours}))
            return 1
        print(json.dumps({"bench": "attention_vs_sdpa", "tokens": tokens,
                          "ratio_fwd": round(ref["fwd_ms"] / ours["fwd_ms"], 3),
                          "ratio_bwd": round(ref["bwd_ms"] / ours["bwd_ms"], 3),
                          "ratio_fwd_bwd": round(ref["fwd_bwd_ms"] / ours["fwd_bwd_ms"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
