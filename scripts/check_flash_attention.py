#!/usr/bin/env python3
"""Checks llama-experiments/src/cubecl_flash/flash_attention.cu against PyTorch on a CUDA GPU.

The kernels are compiled with CuPy's NVRTC (as the Rust launcher compiles them with cudarc's) and
run on torch tensors; the reference is PyTorch's attention in f32 on the same bf16 inputs, with
autograd for the gradients. Prints the largest errors relative to each tensor's largest value,
then times the kernels against torch's own bf16 `scaled_dot_product_attention` (flash) at the
`125m` and `1b` training shapes. Exit status 1 when an error is over the tolerance.

    python3 scripts/check_flash_attention.py [--time]
"""

import argparse
import math
import pathlib
import sys

import cupy
import torch
import torch.nn.functional as F

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "llama-experiments/src/cubecl_flash/flash_attention.cu"
BLOCK = 64
LOG2E = 1.4426950408889634


def module():
    major, minor = torch.cuda.get_device_capability()
    return cupy.RawModule(code=SOURCE.read_text(), options=(f"--gpu-architecture=compute_{major}{minor}",))


def strides(t):
    s = t.stride()
    assert s[3] == 1
    return [s[0], s[1], s[2]]


def ptr(t):
    return cupy.uint64(t.data_ptr())


def run(mod, q, k, v, dout, causal):
    b, h, t, d = q.shape
    o = torch.empty(b, h, t, d, dtype=torch.bfloat16, device=q.device)
    lse2 = torch.empty(b, h, t, dtype=torch.float32, device=q.device)
    dsum = torch.empty_like(lse2)
    dq, dk, dv = (torch.empty(b, h, t, d, dtype=torch.bfloat16, device=q.device) for _ in range(3))
    scale = 1.0 / math.sqrt(d)
    grid = ((t + BLOCK - 1) // BLOCK, h, b)
    i64 = cupy.int64
    qs, ks, vs = ([i64(x) for x in strides(a)] for a in (q, k, v))
    fwd = mod.get_function(f"flash_forward_d{d}")
    fwd(grid, (128,), (ptr(q), ptr(k), ptr(v), ptr(o), ptr(lse2), cupy.int32(h), cupy.int32(t), *qs, *ks, *vs,
                       cupy.float32(scale * LOG2E), cupy.int32(causal)))
    ds = [i64(x) for x in strides(dout)]
    common = (cupy.int32(h), cupy.int32(t), *qs, *ks, *vs, *ds, cupy.float32(scale * LOG2E), cupy.float32(scale),
              cupy.int32(causal))
    mod.get_function(f"flash_backward_dq_d{d}")(
        grid, (128,), (ptr(q), ptr(k), ptr(v), ptr(o), ptr(dout), ptr(lse2), ptr(dsum), ptr(dq), *common))
    mod.get_function(f"flash_backward_dkdv_d{d}")(
        grid, (128,), (ptr(q), ptr(k), ptr(v), ptr(dout), ptr(lse2), ptr(dsum), ptr(dk), ptr(dv), *common))
    return o, lse2, dq, dk, dv


def reference(q, k, v, dout, causal):
    qf, kf, vf = (x.float().detach().requires_grad_() for x in (q, k, v))
    s = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        t = q.shape[2]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    o = torch.softmax(s, -1) @ vf
    o.backward(dout.float())
    return o, lse * LOG2E, qf.grad, kf.grad, vf.grad


def check(mod, b, h, t, d, causal, tol=2e-2):
    torch.manual_seed(t + d)
    # q, k, v as the model has them: [b, t, h, d] seen as [b, h, t, d] (strided heads).
    q, k, v = (torch.randn(b, t, h, d, device="cuda").to(torch.bfloat16).transpose(1, 2) for _ in range(3))
    dout = torch.randn(b, h, t, d, device="cuda").to(torch.bfloat16)
    got = run(mod, q, k, v, dout, causal)
    want = reference(q, k, v, dout, causal)
    worst = 0.0
    parts = []
    for name, g, w in zip(["o", "lse2", "dq", "dk", "dv"], got, want):
        err = ((g.float() - w.float()).abs().max() / w.float().abs().max().clamp_min(1e-6)).item()
        worst = max(worst, err)
        parts.append(f"{name} {err:.2e}")
    ok = worst <= tol
    print(f"b{b} h{h} t{t} d{d} causal={causal}: " + ", ".join(parts) + ("" if ok else "  FAIL"))
    return ok


def timed(f, iters=20):
    f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        f()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def speed(mod, b, h, t, d):
    q, k, v = (torch.randn(b, t, h, d, device="cuda").to(torch.bfloat16).transpose(1, 2) for _ in range(3))
    dout = torch.randn(b, h, t, d, device="cuda").to(torch.bfloat16)
    ours = timed(lambda: run(mod, q, k, v, dout, True))
    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))

    def torch_step():
        o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
        o.backward(dout)

    theirs = timed(torch_step)
    flops = 4 * b * h * t * t * d / 2 * 3.5  # causal forward + backward (2.5x)
    print(f"time b{b} h{h} t{t} d{d} causal fwd+bwd: ours {ours:.3f} ms ({flops / ours / 1e9:.0f} TFLOP/s), "
          f"torch sdpa {theirs:.3f} ms ({flops / theirs / 1e9:.0f} TFLOP/s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", action="store_true")
    a = ap.parse_args()
    mod = module()
    ok = True
    for b, h, t, d in [(2, 3, 200, 64), (1, 2, 64, 64), (2, 2, 130, 128), (1, 4, 512, 64), (1, 2, 300, 128)]:
        for causal in (True, False):
            ok &= check(mod, b, h, t, d, causal)
    if a.time:
        speed(mod, 8, 12, 2048, 64)
        speed(mod, 4, 32, 2048, 64)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
