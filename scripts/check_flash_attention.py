#!/usr/bin/env python3
"""Checks the flash kernels (llama-experiments/src/cubecl_flash/flash_attention*.cu) against PyTorch on a CUDA GPU.

The kernels are compiled with CuPy's NVRTC (as the Rust launcher compiles them with cudarc's) and
run on torch tensors; the reference is PyTorch's attention in f32 on the same bf16 inputs, with
autograd for the gradients. Prints the largest errors relative to each tensor's largest value,
then times the kernels against torch's own bf16 `scaled_dot_product_attention` (flash) at the
`125m` and `1b` training shapes. Exit status 1 when an error is over the tolerance.

    python3 scripts/check_flash_attention.py [--time]
"""

import argparse
import re
import math
import pathlib
import sys

import cupy
import torch
import torch.nn.functional as F

FLASH_DIR = pathlib.Path(__file__).resolve().parent.parent / "llama-experiments/src/cubecl_flash"
# The compiled source is these files in order (as the launcher concatenates them).
SOURCE = [FLASH_DIR / "flash_attention.cu", FLASH_DIR / "flash_attention_sm90.cu"]
BLOCK = 64
LOG2E = 1.4426950408889634


def module(source=SOURCE, defines=(), specific=True):
    """The source compiled, each `NAME=VALUE` of `defines` replacing its `#define NAME` first; for
    sm_90a (Hopper's wgmma kernels) on compute capability 9.0 unless `specific` is false, as the
    launcher does."""
    major, minor = torch.cuda.get_device_capability()
    code = "".join(pathlib.Path(f).read_text() for f in source)
    for d in defines:
        name, value = d.split("=")
        code, n = re.subn(rf"#define {name} \S+", f"#define {name} {value}", code)
        assert n == 1, f"no #define {name} in the source"
    suffix = "a" if specific and (major, minor) == (9, 0) else ""
    mod = cupy.RawModule(code=code, options=(f"--gpu-architecture=compute_{major}{minor}{suffix}",))
    # Rows per block of each kernel (`#define ROWS_FWD_D64 128`; BLOCK where a source has none).
    rows = {m[0]: int(m[1]) for m in re.findall(r"#define ROWS_(\w+) (\d+)", code)}
    return Module(mod, rows, "long long osb" in code, "int H, int G" in code)


class Module:
    """A compiled source and its kernels' rows per block."""

    def __init__(self, mod, rows, strided_outputs, grouped):
        self.mod, self.rows, self.strided_outputs = mod, rows, strided_outputs
        # Sources with grouped-query heads (session 31 on) take G = q heads per k/v head.
        self.grouped = grouped

    def get_function(self, name):
        return self.mod.get_function(name)


def grid_of(mod, kernel, d, t, h, b):
    rows = mod.rows.get(f"{kernel}_D{d}", BLOCK)
    return ((t + rows - 1) // rows, h, b)


def threads_of(mod, kernel, d):
    """A warp per 16 rows of the block."""
    return (2 * mod.rows.get(f"{kernel}_D{d}", BLOCK),)


def strides(t):
    s = t.stride()
    assert s[3] == 1
    return [s[0], s[1], s[2]]


def ptr(t):
    return cupy.uint64(t.data_ptr())


def run(mod, q, k, v, dout, causal, parts=("fwd", "dq", "dkdv"), bufs=None):
    b, h, t, d = q.shape
    group = h // k.shape[1]
    if bufs is None:
        bufs = buffers(q, mod.strided_outputs)
    hg = (cupy.int32(h), cupy.int32(group)) if mod.grouped else (cupy.int32(h),)
    o, lse2, dsum, dq, dk, dv = bufs
    scale = 1.0 / math.sqrt(d)
    i64 = cupy.int64
    qs, ks, vs, ds = ([i64(x) for x in strides(a)] for a in (q, k, v, dout))
    # Sources with output strides (session 30 on) write o, dq, dk and dv through them.
    os_, gs = ([i64(x) for x in strides(a)] for a in (o, dq))
    out = mod.strided_outputs
    fwd = mod.get_function(f"flash_forward_d{d}")
    if "fwd" in parts:
        fwd(grid_of(mod, "FWD", d, t, h, b), threads_of(mod, "FWD", d),
            (ptr(q), ptr(k), ptr(v), ptr(o), ptr(lse2), *hg, cupy.int32(t), *qs, *ks, *vs,
             *(os_ if out else []), cupy.float32(scale * LOG2E), cupy.int32(causal)))
    tail = (cupy.float32(scale * LOG2E), cupy.float32(scale), cupy.int32(causal))
    common = (*hg, cupy.int32(t), *qs, *ks, *vs, *ds)
    if "dq" in parts:
        mod.get_function(f"flash_backward_dq_d{d}")(
            grid_of(mod, "DQ", d, t, h, b), threads_of(mod, "DQ", d),
            (ptr(q), ptr(k), ptr(v), ptr(o), ptr(dout), ptr(lse2), ptr(dsum), ptr(dq), *common,
             *((*os_, *gs) if out else ()), *tail))
    if "dkdv" in parts:
        mod.get_function(f"flash_backward_dkdv_d{d}")(
            grid_of(mod, "DKDV", d, t, h, b), threads_of(mod, "DKDV", d),
            (ptr(q), ptr(k), ptr(v), ptr(dout), ptr(lse2), ptr(dsum), ptr(dk), ptr(dv), *common,
             *(gs if out else ()), *tail))
    return o, lse2, dq, dk, dv


def buffers(q, time_major=True):
    """o, lse2, dsum, dq, dk, dv; the bf16 ones [b, h, t, d] stored as [b, t, h, d] (as the model's
    heads are) unless `time_major` is false."""
    b, h, t, d = q.shape

    def out():
        if time_major:
            return torch.empty(b, t, h, d, dtype=torch.bfloat16, device=q.device).transpose(1, 2)
        return torch.empty(b, h, t, d, dtype=torch.bfloat16, device=q.device)

    o = out()
    lse2 = torch.empty(b, h, t, dtype=torch.float32, device=q.device)
    dsum = torch.empty_like(lse2)
    dq, dk, dv = out(), out(), out()
    return o, lse2, dsum, dq, dk, dv


def reference(q, k, v, dout, causal):
    """o, lse2, dq and dk, dv per query head (grouped k/v heads are repeated, as the kernels
    write their gradients)."""
    group = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(group, 1) for x in (k, v))
    qf, kf, vf = (x.float().detach().requires_grad_() for x in (q, k, v))
    s = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        t = q.shape[2]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    o = torch.softmax(s, -1) @ vf
    o.backward(dout.float())
    return o, lse * LOG2E, qf.grad, kf.grad, vf.grad


def qkv(b, h, t, d, hkv):
    """q, k, v as the model has them: [b, t, h, d] seen as [b, h, t, d] (strided heads); k and v
    with `hkv` heads."""
    return (torch.randn(b, t, n, d, device="cuda").to(torch.bfloat16).transpose(1, 2) for n in (h, hkv, hkv))


def check(mod, b, h, t, d, causal, hkv=None, tol=2e-2):
    torch.manual_seed(t + d)
    hkv = hkv or h
    q, k, v = qkv(b, h, t, d, hkv)
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
    print(f"b{b} h{h}/{hkv} t{t} d{d} causal={causal}: " + ", ".join(parts) + ("" if ok else "  FAIL"))
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


def speed(mod, b, h, t, d, parts=False, hkv=None):
    hkv = hkv if mod.grouped and hkv else h
    q, k, v = qkv(b, h, t, d, hkv)
    dout = torch.randn(b, h, t, d, device="cuda").to(torch.bfloat16)
    bufs = buffers(q, mod.strided_outputs)
    ours = timed(lambda: run(mod, q, k, v, dout, True, bufs=bufs))
    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))

    def torch_step():
        o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=hkv != h)
        o.backward(dout)

    theirs = timed(torch_step)
    flops = 4 * b * h * t * t * d / 2 * 3.5  # causal forward + backward (2.5x)
    print(f"time b{b} h{h}/{hkv} t{t} d{d} causal fwd+bwd: ours {ours:.3f} ms ({flops / ours / 1e9:.0f} TFLOP/s), "
          f"torch sdpa {theirs:.3f} ms ({flops / theirs / 1e9:.0f} TFLOP/s)")
    if parts:
        each = {p: timed(lambda p=p: run(mod, q, k, v, dout, True, parts=(p,), bufs=bufs)) for p in ("fwd", "dq", "dkdv")}
        with torch.no_grad():
            tf = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hkv != h))
        print(f"  parts: ours fwd {each['fwd']:.3f} dq {each['dq']:.3f} dkdv {each['dkdv']:.3f} ms; "
              f"torch fwd {tf:.3f} bwd {theirs - tf:.3f} ms (fwd {flops / 3.5 / tf / 1e9:.0f} TFLOP/s)")


def profile(mod):
    """One launch of each kernel at the 125m shape, ours and torch's, for Nsight Compute."""
    b, h, t, d = 8, 12, 2048, 64
    q, k, v = qkv(b, h, t, d, h)
    dout = torch.randn(b, h, t, d, device="cuda").to(torch.bfloat16)
    run(mod, q, k, v, dout, True)
    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    F.scaled_dot_product_attention(qq, kk, vv, is_causal=True).backward(dout)
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--parts", action="store_true", help="with --time: each kernel and torch's passes apart")
    ap.add_argument("--profile", action="store_true", help="only one launch of each kernel (for ncu)")
    ap.add_argument("--source", nargs="+", default=SOURCE,
                    help="other versions of the source files, concatenated in order")
    ap.add_argument("--define", action="append", default=[], metavar="NAME=VALUE",
                    help="replace the source's `#define NAME` (e.g. ROWS_FWD_D64=256)")
    ap.add_argument("--portable", action="store_true",
                    help="compile for compute_90, not compute_90a (the mma.sync kernels on Hopper)")
    a = ap.parse_args()
    mod = module(a.source, a.define, not a.portable)
    if a.define:
        print("defines: " + " ".join(a.define))
    if a.profile:
        profile(mod)
        return
    ok = True
    for b, h, t, d in [(2, 3, 200, 64), (1, 2, 64, 64), (2, 2, 130, 128), (1, 4, 512, 64), (1, 2, 300, 128)]:
        for causal in (True, False):
            ok &= check(mod, b, h, t, d, causal)
    if mod.grouped:
        for b, h, t, d, hkv in [(2, 8, 200, 64, 2), (1, 4, 130, 128, 1)]:
            ok &= check(mod, b, h, t, d, True, hkv)
    if a.time:
        speed(mod, 8, 12, 2048, 64, a.parts)
        speed(mod, 4, 32, 2048, 64, a.parts)
        speed(mod, 4, 32, 2048, 64, a.parts, hkv=4)  # 1b's grouped heads, read in place
        speed(mod, 4, 16, 2048, 128, a.parts)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
