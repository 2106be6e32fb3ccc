# What the card's memory reaches, for judging decoding's MBU (docs/performance.md, attempt 38):
# torch sums and copies of an 8 GiB bf16 tensor, and cuBLAS one-row products (torch.mv) at
# llama-7b's decode shapes replayed in a CUDA graph. Usage: python3 benches/bandwidth.py (CUDA).
import torch, json
dev = "cuda"
res = {}
x = torch.empty(4 * 2**30, dtype=torch.bfloat16, device=dev).normal_()
for name, f in {"sum": lambda: x.sum(dtype=torch.float32), "copy": lambda: y.copy_(x)}.items():
    y = torch.empty_like(x) if name == "copy" else None
    for _ in range(3): f()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10): f()
    e1.record(); torch.cuda.synchronize()
    s = e0.elapsed_time(e1) / 1e3 / 10
    nbytes = x.numel() * 2 * (2 if name == "copy" else 1)
    res[name] = round(nbytes / s / 1e12, 3)
del x, y
shapes = {"qkv": (4096, 12288), "o": (4096, 4096), "gate_up": (4096, 22016), "down": (11008, 4096)}
for nm, (k, n) in shapes.items():
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(8)]
    xv = torch.randn(k, device=dev, dtype=torch.bfloat16)
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3): ys = [torch.mv(w, xv) for w in ws]
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g): ys = [torch.mv(w, xv) for w in ws]
    for _ in range(5): g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(20): g.replay()
    e1.record(); torch.cuda.synchronize()
    us = e0.elapsed_time(e1) * 1000 / 20 / 8
    res[f"cublas_mv_{nm}"] = {"us": round(us, 2), "TB/s": round(k * n * 2 / us / 1e6, 3)}
    del ws
print("TB/s", json.dumps(res))
