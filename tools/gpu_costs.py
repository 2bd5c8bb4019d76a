#!/usr/bin/env python3
"""Measures, on an NVIDIA GPU through PyTorch, the quantities behind the planner's GPU cluster
constants (examples/clusters/*.yaml, docs/cost-model.md): GEMM throughput as a function of the
token count M for the LLaMA 7B/13B/70B layer shapes (bf16 and fp32), fused attention (SDPA,
causal, GQA) throughput as a function of sequence length, decode attention over a KV cache,
streaming bandwidth (copy, read) and the floor of one small kernel launch. tools/gpu-check.sh runs
it; one JSON object per line, then a summary line with fitted curve parameters:
  gemm_half_dim     the M at which a GEMM reaches half of the large-GEMM throughput, fitted to the
                    Estimator's curve  eff(M) = eff_max * M / (M + half)  (least squares in log space)
  attention_half_seq the same for attention vs sequence length
  memory_efficiency copy bandwidth (read + write bytes) / the datasheet HBM bandwidth given as argument
  kernel_launch_us  median wall time of one tiny eager kernel, launches back to back
Timing: CUDA events around N back-to-back repetitions after warm-ups; the median of 5 such groups.
Usage: gpu_costs.py [HBM_GBPS (datasheet; default 4800 = H200)] [--quick]
Exit: 0 measured; 77 no torch or no CUDA device."""
import json
import math
import sys
import time


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    hbm = float(args[0]) if args else 4800.0
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:
        print(f"gpu_costs: no torch ({e})", file=sys.stderr)
        return 77
    if not torch.cuda.is_available():
        print("gpu_costs: torch sees no CUDA device", file=sys.stderr)
        return 77
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the engine's fp32 GEMM)
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    emit = lambda o: print(json.dumps(o), flush=True)
    emit({"bench": "device", "name": props.name, "sms": props.multi_processor_count,
          "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
          "cuda": torch.version.cuda, "hbm_datasheet_gbps": hbm})

    def timed(fn, min_ms=20.0):
        """Seconds per call: median of 5 groups of back-to-back calls, each group >= min_ms."""
        fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize()
        one = max(s.elapsed_time(e), 1e-3)
        reps = max(1, min(2000, int(min_ms / one)))
        groups = []
        for _ in range(5):
            s.record()
            for _ in range(reps):
                fn()
            e.record()
            torch.cuda.synchronize()
            groups.append(s.elapsed_time(e) / 1e3 / reps)
        groups.sort()
        return groups[2]

    # ---- GEMM vs M: y[M,N] = x[M,K] @ W[N,K]^T (the linear layer's forward) ------------------------
    shapes = {  # (name, N, K): LLaMA-2 7B (h 4096, ffn 11008), 13B (5120, 13824), 70B (8192, 28672, GQA 8 kv heads)
        "7b": [("qkv", 3 * 4096, 4096), ("o", 4096, 4096), ("gate_up", 2 * 11008, 4096), ("down", 4096, 11008)],
        "13b": [("qkv", 3 * 5120, 5120), ("o", 5120, 5120), ("gate_up", 2 * 13824, 5120), ("down", 5120, 13824)],
        "70b": [("qkv", 8192 + 2 * 1024, 8192), ("o", 8192, 8192), ("gate_up", 2 * 28672, 8192), ("down", 8192, 28672)],
    }
    ms = [1, 8, 32, 128, 512, 2048, 8192] if quick else [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    gemm_points = {"bf16": [], "fp32": []}
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for model, layers in shapes.items():
            for lname, n, k in layers:
                if dtype_name == "fp32" and model != "7b":
                    continue  # fp32 only on the 7B shapes: the planner prices bf16 clusters
                w = torch.randn(n, k, device=dev, dtype=dtype) / math.sqrt(k)
                for m in ms:
                    x = torch.randn(m, k, device=dev, dtype=dtype)
                    t = timed(lambda: F.linear(x, w))
                    flops = 2.0 * m * n * k
                    bytes_ = (m * k + n * k + m * n) * x.element_size()
                    tf = flops / t / 1e12
                    gemm_points[dtype_name].append((m, flops, bytes_, t))
                    emit({"bench": "gemm", "dtype": dtype_name, "model": model, "layer": lname, "m": m, "n": n, "k": k,
                          "us": round(t * 1e6, 2), "tflops": round(tf, 1), "gbps": round(bytes_ / t / 1e9, 0)})
                    del x
                del w
                torch.cuda.empty_cache()

    # ---- attention vs sequence length (SDPA, causal; 32 query heads, 8 kv heads, head dim 128) --------
    hq, hkv, d = 32, 8, 128
    att_points = []
    seqs = [512, 2048, 8192] if quick else [256, 512, 1024, 2048, 4096, 8192, 16384]
    for seq in seqs:
        b = max(1, 16384 // seq)  # the same 16k tokens per batch
        q = torch.randn(b, hq, seq, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(b, hkv, seq, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(b, hkv, seq, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(b, hq, seq, d, device=dev, dtype=torch.bfloat16)
        try:
            attn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            attn()
        except TypeError:  # torch < 2.5: no enable_gqa
            k2, v2 = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
            attn = lambda: F.scaled_dot_product_attention(q, k2, v2, is_causal=True)

        def fwd():
            with torch.no_grad():
                attn()

        def fwd_bwd():
            q.grad = k.grad = v.grad = None
            attn().backward(do)

        tf_, tfb = timed(fwd), timed(fwd_bwd)
        flops_f = 4.0 * b * hq * seq * seq * d / 2  # causal: half of QK^T and PV
        att_points.append((seq, flops_f, 0.0, tf_))
        emit({"bench": "attention", "dtype": "bf16", "batch": b, "seq": seq, "hq": hq, "hkv": hkv, "d": d,
              "fwd_us": round(tf_ * 1e6, 1), "fwd_bwd_us": round(tfb * 1e6, 1),
              "fwd_tflops": round(flops_f / tf_ / 1e12, 1), "fwd_bwd_tflops": round(3.5 * flops_f / tfb / 1e12, 1)})
        del q, k, v, do
        torch.cuda.empty_cache()

    # ---- decode attention: one query token per sequence over a KV cache of L tokens ----------------
    for L in ([1024, 8192] if quick else [512, 2048, 8192, 32768]):
        b = 64
        q = torch.randn(b, hq, 1, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(b, hkv, L, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn(b, hkv, L, d, device=dev, dtype=torch.bfloat16)
        try:
            fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            fn()
        except TypeError:
            k2, v2 = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
            fn = lambda: F.scaled_dot_product_attention(q, k2, v2)
        t = timed(fn)
        kv_bytes = 2 * b * hkv * L * d * 2
        emit({"bench": "decode_attention", "batch": b, "kv_len": L, "us": round(t * 1e6, 1),
              "kv_read_gbps": round(kv_bytes / t / 1e9, 0), "of_hbm": round(kv_bytes / t / 1e9 / hbm, 3)})
        del q, k, v
        torch.cuda.empty_cache()

    # ---- streaming bandwidth ------------------------------------------------------------------------
    n = (1 << 30) // 4
    a = torch.randn(n, device=dev)
    bb = torch.empty_like(a)
    t_copy = timed(lambda: bb.copy_(a))
    t_read = timed(lambda: a.sum())
    copy_gbps = 2 * a.numel() * 4 / t_copy / 1e9
    read_gbps = a.numel() * 4 / t_read / 1e9
    emit({"bench": "stream", "bytes": a.numel() * 4, "copy_gbps_rw": round(copy_gbps, 0), "read_gbps": round(read_gbps, 0),
          "copy_of_hbm": round(copy_gbps / hbm, 3), "read_of_hbm": round(read_gbps / hbm, 3)})
    del a, bb
    torch.cuda.empty_cache()

    # ---- launch floor: a tiny kernel, eager, back to back (host dispatch included) ------------------
    x = torch.zeros(16, device=dev)
    torch.cuda.synchronize()
    for _ in range(100):
        x.add_(1.0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    iters = 5000
    for _ in range(iters):
        x.add_(1.0)
    torch.cuda.synchronize()
    eager_us = (time.perf_counter() - t0) / iters * 1e6
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(100):
            x.add_(1.0)
    g.replay(); torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    graph_us = (time.perf_counter() - t0) / 2000 * 1e6
    emit({"bench": "launch", "eager_us": round(eager_us, 2), "graph_us_per_kernel": round(graph_us, 2)})

    # ---- fits to the Estimator's curves --------------------------------------------------------------
    def fit_half(points, bw):
        """The Estimator's time for a kernel: max(flops / (top * x / (x + half)), bytes / bw). top = the
        best measured throughput; half by least squares of log(time) over a grid (dependency-free)."""
        top = max(f / t for (_, f, _, t) in points)
        best = None
        for i in range(0, 400):
            half = 2 ** (i / 20.0)
            err = sum((math.log(t) - math.log(max(f / (top * x / (x + half)), by / bw))) ** 2 for (x, f, by, t) in points)
            if best is None or err < best[0]:
                best = (err, half)
        return top / 1e12, best[1], math.sqrt(best[0] / len(points))

    summary = {"bench": "fit", "model": "t = max(flops / (top * x / (x + half)), bytes / read_bandwidth)"}
    for dt in ("bf16", "fp32"):
        top, half, rms = fit_half(gemm_points[dt], read_gbps * 1e9)
        summary[f"gemm_{dt}_top_tflops"] = round(top, 1)
        summary[f"gemm_{dt}_half_m"] = round(half, 1)
        summary[f"gemm_{dt}_fit_rms_log"] = round(rms, 3)
    top, half, rms = fit_half(att_points, float("inf"))
    summary.update({"attention_bf16_top_tflops": round(top, 1), "attention_half_seq": round(half, 0),
                    "attention_fit_rms_log": round(rms, 3), "memory_efficiency_copy": round(copy_gbps / hbm, 3),
                    "memory_efficiency_read": round(read_gbps / hbm, 3), "kernel_launch_us": round(eager_us, 2),
                    "graph_us_per_kernel": round(graph_us, 2)})
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
