//! The fused CUDA kernels (`cuda_kernels`) against torch's own formulas and autograd, f32 and
//! bf16: cross-entropy (loss and the logits' gradient), RMSNorm (y, dx, dγ) and SwiGLU's gate (out,
//! da, db), each with a non-uniform upstream gradient; rotary; AdamW; decoding's single-query
//! attention, alone and with the decode step's rotation and cache write folded in.
//!
//! Needs `--features tch`. The source is compiled wherever NVRTC loads (a CUDA toolkit, or PyPI's
//! `nvidia-cuda-nvrtc`, on `LD_LIBRARY_PATH`; `LLAMA_REQUIRE_NVRTC=1` makes its absence a failure,
//! as in CI); the numerical checks run where torch sees a GPU and skip (saying so) elsewhere. On
//! the CPU every kernel declines, so the callers fall back.
#![cfg(feature = "tch")]

mod common;

use llama_experiments::cuda_kernels as k;
use tch::{Device, Kind, Reduction, Tensor};

fn cuda() -> Option<Device> {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: torch sees no CUDA device");
        return None;
    }
    let d = Device::Cuda(0);
    if !k::available(d) {
        eprintln!("skipped: the fused kernels do not load (NVRTC missing?)");
        return None;
    }
    Some(d)
}

/// max |got − want| / max |want|, both in f32.
fn rel(got: &Tensor, want: &Tensor) -> f64 {
    let (got, want) = (got.to_kind(Kind::Float), want.to_kind(Kind::Float));
    let err = (&got - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]).max(1e-30);
    err / scale
}

fn bound(kind: Kind) -> f64 {
    // One bf16 rounding of the result (2⁻⁸), plus the inputs' f32 arithmetic.
    if kind == Kind::BFloat16 { 1e-2 } else { 2e-5 }
}

#[test]
fn kernels_compile_with_nvrtc() {
    if !k::nvrtc_present() {
        assert!(
            std::env::var_os("LLAMA_REQUIRE_NVRTC").is_none(),
            "LLAMA_REQUIRE_NVRTC is set but NVRTC is not on the library path"
        );
        eprintln!("skipped: NVRTC is not on the library path");
        return;
    }
    let ptx = k::compile().expect("the kernel source compiles");
    let text = ptx.to_src();
    let names = k::KERNELS
        .iter()
        .flat_map(|n| [format!("{n}_f32"), format!("{n}_bf16")])
        .chain(k::F32_KERNELS.iter().map(|n| format!("{n}_f32")))
        .chain(k::BF16_KERNELS.iter().map(|n| format!("{n}_bf16")))
        .chain(k::ADD_NORM_KERNELS.iter().map(|n| n.to_string()))
        .chain(k::MIXED_KERNELS.iter().map(|n| format!("{n}_f32_bf16")));
    for name in names {
        let entry = format!(".entry {name}(");
        assert!(text.contains(&entry), "{entry} missing from the PTX");
    }
    // Hopper and later: every kernel launched with programmatic dependent launch waits for the
    // kernel ahead of it (without the wait it would race it), and no other kernel has the wait.
    let hopper = k::compile_for(k::arch_for(9)).expect("the kernel source compiles for sm_90");
    let hopper = hopper.to_src();
    let mut entries = hopper.split(".entry ").skip(1).peekable();
    assert!(entries.peek().is_some(), "no kernels in the sm_90 PTX");
    for body in entries {
        let name = body.split('(').next().unwrap_or_default();
        let pdl = k::PDL_KERNELS.iter().any(|base| name.starts_with(base));
        assert_eq!(
            body.contains("griddepcontrol.wait"),
            pdl,
            "{name}: waits for the kernel ahead if and only if it is launched with PDL"
        );
    }
    assert!(!text.contains("griddepcontrol"), "PDL below sm_90");
}

#[test]
fn cpu_tensors_are_declined() {
    let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    assert!(k::cross_entropy_forward(&x, &t).is_none());
    assert!(k::swiglu_forward(&x, &x).is_none());
    let xb = x.to_kind(Kind::BFloat16);
    assert!(k::gemv(&xb, &xb.transpose(0, 1)).is_none());
    let ones = Tensor::ones([8], (Kind::Float, Device::Cpu));
    assert!(k::rms_norm_forward(&x, &ones, 1e-6, Kind::Float).is_none());
    assert!(k::add_rms_norm(&x, &xb, &ones, 1e-6, Kind::BFloat16).is_none());
}

#[test]
fn cross_entropy_matches_torch() {
    let Some(dev) = cuda() else { return };
    for kind in [Kind::Float, Kind::BFloat16] {
        // 37 rows (not a multiple of anything), a vocabulary wider than a block's stride.
        let (n, vocab) = (37i64, 3001i64);
        let logits = (Tensor::randn([n, vocab], (Kind::Float, dev)) * 4.0).to_kind(kind);
        let targets = Tensor::randint(vocab, [n], (Kind::Int64, dev));
        let leaf = logits.to_kind(Kind::Float).detach().set_requires_grad(true);
        let want = leaf.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
        let g = Tensor::from_slice(&[0.7f32]).to_device(dev);
        let want_grad = Tensor::run_backward(&[&want * &g], &[&leaf], false, false).remove(0);

        let (loss, lse) = k::cross_entropy_forward(&logits, &targets).expect("runs on CUDA");
        assert_eq!(loss.size(), [1]);
        let err = rel(&loss, &want.reshape([1]));
        assert!(err < 1e-5, "{kind:?} loss: relative error {err:e}");
        let want_lse = logits.to_kind(Kind::Float).logsumexp([1], false);
        assert!(rel(&lse, &want_lse) < 1e-5, "{kind:?} log-sum-exp");

        let d = k::cross_entropy_backward(&logits, &targets, &lse, &g).expect("runs");
        assert_eq!(d.kind(), kind);
        let err = rel(&d, &want_grad);
        assert!(
            err < bound(kind),
            "{kind:?} d logits: relative error {err:e}"
        );
    }
}

#[test]
fn rms_norm_matches_torch() {
    let Some(dev) = cuda() else { return };
    for kind in [Kind::Float, Kind::BFloat16] {
        // 768 and 2048 are the 125m and 1b widths; 100 leaves threads idle in the last column.
        for dim in [100i64, 768, 2048] {
            let n = 1500i64; // more rows than the backward's blocks: each block takes several
            let x = (Tensor::randn([n, dim], (Kind::Float, dev)) * 3.0).to_kind(kind);
            let gamma = Tensor::randn([dim], (Kind::Float, dev)) + 1.0;
            let dy = Tensor::randn([n, dim], (Kind::Float, dev)).to_kind(kind);
            let eps = 1e-5;

            let xl = x.to_kind(Kind::Float).detach().set_requires_grad(true);
            let gl = gamma.detach().set_requires_grad(true);
            let r = ((&xl * &xl).mean_dim([1i64].as_slice(), true, Kind::Float) + eps).rsqrt();
            let want = &xl * r * &gl;
            let seed = (&want * dy.to_kind(Kind::Float)).sum(Kind::Float);
            // The graph is kept for a second upstream gradient (the bf16 output's) below.
            let grads = Tensor::run_backward(&[seed], &[&xl, &gl], true, false);

            // The output in x's kind, and (from f32) in bf16 with a bf16 gradient.
            let outs = match kind {
                Kind::Float => vec![Kind::Float, Kind::BFloat16],
                _ => vec![kind],
            };
            for out in outs {
                let (y, rr) = k::rms_norm_forward(&x, &gamma, eps, out).expect("runs on CUDA");
                assert_eq!(y.kind(), out);
                let err = rel(&y, &want);
                assert!(
                    err < bound(out),
                    "{kind:?}→{out:?} d={dim} y: relative error {err:e}"
                );
                let dy = dy.to_kind(out);
                let grads = match out == kind {
                    true => grads.iter().map(|g| g.shallow_clone()).collect::<Vec<_>>(),
                    false => {
                        let seed = (&want * dy.to_kind(Kind::Float)).sum(Kind::Float);
                        Tensor::run_backward(&[seed], &[&xl, &gl], false, false)
                    }
                };
                let (dx, dgamma) = k::rms_norm_backward(&dy, &x, &gamma, &rr).expect("runs");
                assert_eq!(dx.kind(), kind);
                let err = rel(&dx, &grads[0]);
                assert!(
                    err < bound(out),
                    "{kind:?}→{out:?} d={dim} dx: relative error {err:e}"
                );
                // dγ sums 1,500 rows in f32 in a different order than torch.
                let err = rel(&dgamma, &grads[1]);
                assert!(
                    err < 1e-4,
                    "{kind:?}→{out:?} d={dim} dγ: relative error {err:e}"
                );
            }
        }
    }
}

#[test]
fn swiglu_matches_torch() {
    let Some(dev) = cuda() else { return };
    for kind in [Kind::Float, Kind::BFloat16] {
        let shape = [3i64, 333, 517];
        let a = (Tensor::randn(shape, (Kind::Float, dev)) * 4.0).to_kind(kind);
        let b = Tensor::randn(shape, (Kind::Float, dev)).to_kind(kind);
        let g = Tensor::randn(shape, (Kind::Float, dev)).to_kind(kind);
        let al = a.to_kind(Kind::Float).detach().set_requires_grad(true);
        let bl = b.to_kind(Kind::Float).detach().set_requires_grad(true);
        let want = al.silu() * &bl;
        let seed = (&want * g.to_kind(Kind::Float)).sum(Kind::Float);
        let grads = Tensor::run_backward(&[seed], &[&al, &bl], false, false);

        let out = k::swiglu_forward(&a, &b).expect("runs on CUDA");
        let err = rel(&out, &want);
        assert!(err < bound(kind), "{kind:?} out: relative error {err:e}");
        let (da, db) = k::swiglu_backward(&a, &b, &g).expect("runs");
        let err = rel(&da, &grads[0]);
        assert!(err < bound(kind), "{kind:?} da: relative error {err:e}");
        let err = rel(&db, &grads[1]);
        assert!(err < bound(kind), "{kind:?} db: relative error {err:e}");
    }
}

/// The two halves of the last dimension exchanged.
fn swap_halves(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[x.narrow(3, half, half), x.narrow(3, 0, half)], 3)
}

#[test]
fn rotary_matches_the_formula() {
    let Some(dev) = cuda() else { return };
    for kind in [Kind::Float, Kind::BFloat16] {
        let (b, t, h, d) = (2i64, 77, 3, 64);
        // Queries as the attention makes them: [b, t, h, d] seen as [b, h, t, d] (not contiguous).
        let x = Tensor::randn([b, t, h, d], (Kind::Float, dev))
            .to_kind(kind)
            .transpose(1, 2);
        let g = Tensor::randn([b, h, t, d], (Kind::Float, dev)).to_kind(kind);
        let angle = Tensor::rand([1, 1, t, d / 2], (Kind::Float, dev)) * 6.0;
        let (cos, sin) = (angle.cos(), angle.sin());
        let c = Tensor::cat(&[&cos, &cos], 3).to_kind(kind);
        let s = Tensor::cat(&[-&sin, sin.shallow_clone()], 3).to_kind(kind);
        let f = |t: &Tensor| t.to_kind(Kind::Float);

        let want = f(&x) * f(&c) + swap_halves(&f(&x)) * f(&s);
        let y = k::rotary(&x, &c, &s, false).expect("runs on CUDA");
        let err = rel(&y, &want);
        assert!(
            err < bound(kind),
            "{kind:?} forward: relative error {err:e}"
        );

        let want = f(&g) * f(&c) + swap_halves(&(f(&g) * f(&s)));
        let dx = k::rotary(&g, &c, &s, true).expect("runs");
        let err = rel(&dx, &want);
        assert!(
            err < bound(kind),
            "{kind:?} backward: relative error {err:e}"
        );
        // The backward is the inverse rotation: it undoes the forward.
        if kind == Kind::Float {
            let back = k::rotary(&y, &c, &s, true).expect("runs");
            assert!(rel(&back, &x) < 1e-5, "inverse rotation");
        }
    }
}

/// On the CPU the kernels decline, so the registered backward passes take their fallbacks, the
/// model's closed forms in tensor ops (the path a failed launch takes on a GPU): they must agree
/// with torch's autograd.
/// Decoding's single-query attention against torch's formula (grouped heads repeated, f32
/// softmax, hidden keys at −∞), on a view of a longer cache as the model passes it.
#[test]
fn decode_attention_matches_the_formula() {
    let Some(dev) = cuda() else { return };
    for kind in [Kind::Float, Kind::BFloat16] {
        // (batch, heads, kv heads, head dim, keys, cache capacity, masked)
        for (b, h, hkv, d, t, cap, masked) in [
            (2i64, 4i64, 2i64, 64i64, 37i64, 50i64, true),
            (1, 12, 12, 64, 565, 565, false),
            (3, 2, 1, 128, 5, 9, true),
            (1, 32, 4, 64, 1, 8, false),
            (4, 32, 4, 64, 100, 120, true),
            // Many pairs, and a cache longer than a block's 32 warps take in one pass (each
            // warp loops, its running maximum rescaling what it summed).
            (64, 32, 4, 64, 300, 300, true),
            (1, 4, 1, 64, 5000, 5000, true),
            // Three passes per warp at 8 keys per warp, the first from the rows each warp copied
            // into shared memory before waiting (bf16: 16 KB of them, under the 24 KB default).
            (1, 2, 1, 32, 3000, 3000, true),
            // 7B's and 13B's heads at batch 1 (fewer pairs than SMs: on sm_90 each pair's
            // keys split over a cluster of blocks; a left-padded row leaves whole blocks with
            // every key hidden).
            (1, 32, 32, 128, 512, 512, false),
            (1, 40, 40, 128, 513, 600, true),
            // 7B after 1,536 tokens: 13 warps a block would not keep every cluster resident, so
            // the launch takes fewer (5 on an H200) and each warp loops (attempt 82).
            (1, 32, 32, 128, 1536, 1639, true),
            // Head dimensions of 32 and 256.
            (1, 8, 2, 32, 565, 600, true),
            (2, 4, 4, 256, 70, 80, true),
        ] {
            let q = Tensor::randn([b, h, 1, d], (Kind::Float, dev)).to_kind(kind);
            let cache = |_| Tensor::randn([b, hkv, cap, d], (Kind::Float, dev)).to_kind(kind);
            let (kc, vc) = (cache(0), cache(1));
            let (kv, vv) = (kc.narrow(2, 0, t), vc.narrow(2, 0, t));
            // Hide about a third of the keys and, in the first row, the first 40 % (a left-padded
            // prompt: whole warps' keys hidden); never the last key (the new token's own).
            let hidden = masked.then(|| {
                let m = Tensor::rand([b, 1, 1, t], (Kind::Float, dev)).lt(0.33);
                let _ = m.get(0).narrow(2, 0, t * 2 / 5).fill_(1);
                let _ = m.narrow(3, t - 1, 1).fill_(0);
                m
            });
            let f = |x: &Tensor| x.to_kind(Kind::Float);
            let rep = h / hkv;
            let (kr, vr) = (
                f(&kv).repeat_interleave_self_int(rep, 1, None),
                f(&vv).repeat_interleave_self_int(rep, 1, None),
            );
            let mut scores = f(&q).matmul(&kr.transpose(2, 3)) / (d as f64).sqrt();
            if let Some(m) = &hidden {
                scores = scores.masked_fill(m, f64::NEG_INFINITY);
            }
            let want = scores.softmax(3, Kind::Float).matmul(&vr);
            // The launch's own choice, then each number of keys a warp scores per pass.
            for kw in [None, Some(8), Some(16), Some(32)] {
                let run =
                    |v: &Tensor| k::decode_attention_with(&q, &kv, v, hidden.as_ref(), None, kw);
                let got = run(&vv).expect("runs on CUDA");
                let again = run(&vv).expect("runs again");
                assert!(
                    again.equal(&got),
                    "b{b} h{h} t{t} {kw:?}: a second run differs"
                );
                assert_eq!(got.size(), [b, h, 1, d]);
                assert_eq!(got.kind(), kind);
                let err = rel(&got, &want);
                assert!(
                    err < bound(kind),
                    "{kind:?} b{b} h{h}/{hkv} d{d} t{t} {kw:?}: relative error {err:e}"
                );
                // A hidden key's value is never read into the sum: NaN there changes nothing.
                if let Some(m) = &hidden {
                    let nan = vv.masked_fill(&m.reshape([b, 1, t, 1]), f64::NAN);
                    let same = run(&nan).expect("runs");
                    assert!(
                        same.equal(&got),
                        "b{b} h{h} t{t} {kw:?}: NaN in hidden values"
                    );
                }
            }
        }
    }
    // Other head dimensions are declined (the caller runs the tensor ops).
    let r = |s: &[i64]| Tensor::randn(s, (Kind::Float, dev));
    let (q, kv) = (r(&[1, 4, 1, 96]), r(&[1, 2, 10, 96]));
    assert!(k::decode_attention(&q, &kv, &kv, None).is_none(), "d 96");
    let (q, kv) = (r(&[1, 4, 1, 64]), r(&[1, 2, 10, 64]));
    let odd = k::decode_attention_with(&q, &kv, &kv, None, None, Some(4));
    assert!(odd.is_none(), "4 keys per warp");
}

/// One-row products against torch's f32 product of the same bf16 values, the weight the
/// transposed view of an `[n, k]` matrix as the model stores it for decoding: the decode shapes of
/// the `1b` and 7B presets, a `k` that is not a multiple of the warp's 256-element pass,
/// a row slice of a taller matrix (the stacked projections' views), the same bits when run again,
/// and the inputs it declines.
#[test]
fn gemv_matches_torch() {
    let Some(dev) = cuda() else { return };
    let randn = |dims: &[i64]| Tensor::randn(dims, (Kind::Float, dev));
    let bf = |t: Tensor| t.to_kind(Kind::BFloat16);
    let check = |x: &Tensor, w: &Tensor, what: &str| {
        let want = x.to_kind(Kind::Float).matmul(&w.to_kind(Kind::Float));
        let got = k::gemv(x, w).expect("runs on CUDA");
        assert_eq!(got.size(), want.size(), "{what}");
        assert_eq!(got.kind(), Kind::BFloat16, "{what}");
        let err = rel(&got, &want);
        assert!(
            err < bound(Kind::BFloat16),
            "{what}: relative error {err:e}"
        );
        let again = k::gemv(x, w).expect("runs again");
        assert!(again.equal(&got), "{what}: a second run differs");
    };
    for (kk, n) in [
        (2048i64, 2560i64), // q/k/v stacked
        (2048, 2048),       // output projection
        (2048, 11264),      // gate/up stacked
        (5632, 2048),       // down
        (2048, 32000),      // head
        (768, 72),
        (104, 7),
        (4096, 64),
        (2056, 9),     // two warps per output, the second over 1,024 columns
        (4104, 13),    // three warps of 1,368 columns
        (22016, 24),   // 65B's down projection: eleven warps per output
        (4096, 22016), // 7B's gate/up: many groups per block of a resident grid
        (11008, 4096), // 7B's down
        (33000, 5),    // 32 warps per output, two passes of loads each
    ] {
        let x = bf(randn(&[1, kk]));
        let wt = bf(randn(&[n, kk]) / (kk as f64).sqrt());
        check(&x, &wt.transpose(0, 1), &format!("1×{kk}·{kk}×{n}"));
    }
    let tall = bf(randn(&[3 * 64, 256]));
    let slice = tall.narrow(0, 64, 64).transpose(0, 1);
    check(&bf(randn(&[1, 256])), &slice, "row slice");

    let (x, wt) = (bf(randn(&[1, 64])), bf(randn(&[64, 64])));
    let w = wt.transpose(0, 1);
    assert!(k::gemv(&bf(randn(&[2, 64])), &w).is_none(), "two rows");
    let odd = bf(randn(&[1, 60]));
    assert!(
        k::gemv(&odd, &bf(randn(&[8, 60])).transpose(0, 1)).is_none(),
        "k not a multiple of 8"
    );
    assert!(
        k::gemv(&x.to_kind(Kind::Float), &w.to_kind(Kind::Float)).is_none(),
        "f32"
    );
    assert!(k::gemv(&x, &wt).is_none(), "an [in, out] weight");
}

/// SwiGLU's gate in the epilogue of the stacked gate/up product gives the bits of the product
/// followed by the separate gate kernel: the decode shapes of `125m`, `1b`, 7B and 13B (one, four
/// and five warps per row; many groups per block of a resident grid), a small odd width, and the
/// inputs it declines.
#[test]
fn gemv_swiglu_is_the_product_then_the_gate() {
    let Some(dev) = cuda() else { return };
    let bf = |t: Tensor| t.to_kind(Kind::BFloat16);
    for (kk, n) in [
        (768i64, 2048i64),
        (2048, 5632),
        (4096, 11008),
        (5120, 13824),
        (64, 24),
    ] {
        let x = bf(Tensor::randn([1, kk], (Kind::Float, dev)));
        let wt = bf(Tensor::randn([2 * n, kk], (Kind::Float, dev)) / (kk as f64).sqrt());
        let w = wt.transpose(0, 1);
        let both = k::gemv(&x, &w).expect("runs on CUDA");
        let want =
            k::swiglu_forward(&both.narrow(1, 0, n), &both.narrow(1, n, n)).expect("runs on CUDA");
        let got = k::gemv_swiglu(&x, &w).expect("runs on CUDA");
        assert_eq!(got.size(), [1, n], "{kk}×{n}");
        assert!(got.equal(&want), "{kk}×{n}: not the separate kernels' bits");
    }
    let (x, wt) = (
        bf(Tensor::randn([1, 64], (Kind::Float, dev))),
        bf(Tensor::randn([6, 64], (Kind::Float, dev))),
    );
    assert!(
        k::gemv_swiglu(&x, &wt.narrow(0, 0, 5).transpose(0, 1)).is_none(),
        "an odd width"
    );
    assert!(k::gemv_swiglu(&x, &wt.transpose(0, 1)).is_some());
}

/// The residual update with the next RMSNorm in one kernel gives the bits of torch's promoting
/// add followed by the RMSNorm kernel, for the three dtype pairs.
#[test]
fn add_rms_norm_is_the_add_then_the_norm() {
    let Some(dev) = cuda() else { return };
    let eps = 1e-5;
    for (delta_kind, out) in [
        (Kind::Float, Kind::Float),
        (Kind::BFloat16, Kind::BFloat16),
        (Kind::BFloat16, Kind::Float),
    ] {
        for (n, dim) in [(1i64, 2048i64), (3, 768), (2, 100)] {
            let x = Tensor::randn([n, dim], (Kind::Float, dev)) * 2.0;
            let delta = Tensor::randn([n, dim], (Kind::Float, dev)).to_kind(delta_kind);
            let gamma = Tensor::randn([dim], (Kind::Float, dev)) + 1.0;
            let (h, y) = k::add_rms_norm(&x, &delta, &gamma, eps, out).expect("runs on CUDA");
            let want_h = &x + &delta;
            assert_eq!(want_h.kind(), Kind::Float);
            let (want_y, _) = k::rms_norm_forward(&want_h, &gamma, eps, out).expect("runs");
            let what = format!("{delta_kind:?}→{out:?} {n}×{dim}");
            assert!(h.equal(&want_h), "{what}: h differs");
            assert_eq!(y.kind(), out, "{what}");
            assert!(y.equal(&want_y), "{what}: y differs");
        }
    }
}

/// A decode step's unrotated query `[b, h, 1, d]`, key and value `[b, hkv, 1, d]`, and the
/// rotary operation's full-width tables `[b, 1, 1, d]` of random angles.
struct Step {
    q: Tensor,
    kk: Tensor,
    v: Tensor,
    c: Tensor,
    s: Tensor,
}

impl Step {
    fn random(b: i64, h: i64, hkv: i64, d: i64, kind: Kind, dev: Device) -> Self {
        let randn = |dims: &[i64]| Tensor::randn(dims, (Kind::Float, dev)).to_kind(kind);
        let angle = Tensor::rand([b, 1, 1, d / 2], (Kind::Float, dev)) * 6.0;
        let (cos, sin) = (angle.cos(), angle.sin());
        Self {
            q: randn(&[b, h, 1, d]),
            kk: randn(&[b, hkv, 1, d]),
            v: randn(&[b, hkv, 1, d]),
            c: Tensor::cat(&[&cos, &cos], 3).to_kind(kind),
            s: Tensor::cat(&[&(-&sin), &sin], 3).to_kind(kind),
        }
    }
}

/// A decode step's rotation and cache-slot write in one kernel gives the bits of the rotary
/// kernel and torch's `index_copy_`, and leaves the rest of the cache as it was.
#[test]
fn rope_slot_is_the_rotations_and_the_slot_writes() {
    let Some(dev) = cuda() else { return };
    for kind in [Kind::Float, Kind::BFloat16] {
        for (b, h, hkv, d, cap, at) in [
            (1i64, 32i64, 4i64, 64i64, 565i64, 512i64),
            (3, 4, 2, 16, 9, 0),
        ] {
            let randn = |dims: &[i64]| Tensor::randn(dims, (Kind::Float, dev)).to_kind(kind);
            let Step { q, kk, v, c, s } = Step::random(b, h, hkv, d, kind, dev);
            let (kc, vc) = (randn(&[b, hkv, cap, d]), randn(&[b, hkv, cap, d]));
            let slot = Tensor::from_slice(&[at]).to_device(dev);
            let (mut want_k, mut want_v) = (kc.copy(), vc.copy());
            let want_q = k::rotary(&q, &c, &s, false).expect("runs");
            let _ = want_k.index_copy_(2, &slot, &k::rotary(&kk, &c, &s, false).expect("runs"));
            let _ = want_v.index_copy_(2, &slot, &v);
            let got = k::rope_slot(&q, &kk, &v, &c, &s, &kc, &vc, &slot).expect("runs on CUDA");
            let what = format!("{kind:?} b{b} h{h}/{hkv} d{d}");
            assert!(got.equal(&want_q), "{what}: queries differ");
            assert!(kc.equal(&want_k), "{what}: key cache differs");
            assert!(vc.equal(&want_v), "{what}: value cache differs");
        }
    }
}

/// A decode step's rotation, slot write and attention in one kernel against the two kernels it
/// replaces (rope_slot, then decoding's attention over the whole cache): the same cache bits, the
/// same outputs within rounding, for every number of keys per warp, with NaN in the cache past the
/// slot (never written yet: the one kernel must not read it).
#[test]
fn rope_slot_attention_is_rope_slot_then_attention() {
    let Some(dev) = cuda() else { return };
    for kind in [Kind::Float, Kind::BFloat16] {
        // (batch, heads, kv heads, head dim, cache capacity, slot, masked)
        for (b, h, hkv, d, cap, at, masked) in [
            (1i64, 32i64, 32i64, 128i64, 565i64, 512i64, false),
            (1, 40, 40, 128, 600, 513, true),
            (2, 8, 2, 64, 50, 37, true),
            (3, 4, 2, 32, 9, 0, false),
            (1, 4, 1, 256, 70, 69, false),
            (4, 32, 4, 64, 120, 100, true),
        ] {
            let randn = |dims: &[i64]| Tensor::randn(dims, (Kind::Float, dev)).to_kind(kind);
            let Step { q, kk, v, c, s } = Step::random(b, h, hkv, d, kind, dev);
            let (kc, vc) = (randn(&[b, hkv, cap, d]), randn(&[b, hkv, cap, d]));
            let _ = kc.narrow(2, at, cap - at).fill_(f64::NAN);
            let _ = vc.narrow(2, at, cap - at).fill_(f64::NAN);
            let slot = Tensor::from_slice(&[at]).to_device(dev);
            // Past the slot hidden; with `masked`, about a third of the keys before it too (pads).
            let past = Tensor::arange(cap, (Kind::Int64, dev))
                .gt(at)
                .reshape([1, 1, 1, cap]);
            let mut hidden = past.expand([b, 1, 1, cap], false).contiguous();
            if masked {
                let pads = Tensor::rand([b, 1, 1, cap], (Kind::Float, dev)).lt(0.33);
                let _ = pads.narrow(3, at, 1).fill_(0);
                hidden = hidden.logical_or(&pads);
            }
            let (want_k, want_v) = (kc.copy(), vc.copy());
            let rq = k::rope_slot(&q, &kk, &v, &c, &s, &want_k, &want_v, &slot).expect("runs");
            let want = k::decode_attention(&rq, &want_k, &want_v, Some(&hidden)).expect("runs");
            let step = k::StepKv {
                k: &kk,
                v: &v,
                c: &c,
                s: &s,
                slot: &slot,
            };
            for kw in [None, Some(8), Some(16), Some(32)] {
                let what = format!("{kind:?} b{b} h{h}/{hkv} d{d} slot {at} {kw:?}");
                let got = k::decode_attention_with(&q, &kc, &vc, Some(&hidden), Some(&step), kw)
                    .expect("runs on CUDA");
                // Up to the slot (NaN past it is not equal to itself).
                let upto = |t: &Tensor| t.narrow(2, 0, at + 1).to_kind(Kind::Float);
                let gap =
                    |a: &Tensor, b: &Tensor| (upto(a) - upto(b)).abs().max().double_value(&[]);
                assert!(
                    upto(&kc).equal(&upto(&want_k)),
                    "{what}: key cache differs by up to {:e}",
                    gap(&kc, &want_k)
                );
                assert!(
                    upto(&vc).equal(&upto(&want_v)),
                    "{what}: value cache differs by up to {:e}",
                    gap(&vc, &want_v)
                );
                let err = rel(&got, &want);
                assert!(err < bound(kind), "{what}: relative error {err:e}");
            }
        }
    }
}

#[test]
fn backward_fallbacks_match_torch_autograd() {
    use burn::backend::libtorch::TchTensor;
    use llama_experiments::libtorch_fused;
    let cpu = (Kind::Float, Device::Cpu);

    let (n, vocab) = (9i64, 50i64);
    let logits = Tensor::randn([n, vocab], cpu) * 3.0;
    let targets = Tensor::randint(vocab, [n], (Kind::Int64, Device::Cpu));
    let lse = logits.logsumexp([1i64].as_slice(), false);
    let g = Tensor::from_slice(&[0.3f32]);
    let leaf = logits.detach().set_requires_grad(true);
    let loss = leaf.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
    let want = Tensor::run_backward(&[loss * &g], &[&leaf], false, false).remove(0);
    let saved = vec![
        TchTensor::new(logits.shallow_clone()),
        TchTensor::new(targets.shallow_clone()),
        TchTensor::new(lse),
    ];
    let got = (libtorch_fused::loss().backward)(saved, TchTensor::new(g.shallow_clone()));
    let err = rel(&got.tensor, &want);
    assert!(err < 1e-5, "cross-entropy fallback: relative error {err:e}");

    let (n, dim, eps) = (11i64, 24i64, 1e-5);
    let x = Tensor::randn([n, dim], cpu) * 2.0;
    let gamma = Tensor::randn([dim], cpu) + 1.0;
    let dy = Tensor::randn([n, dim], cpu);
    let xl = x.detach().set_requires_grad(true);
    let gl = gamma.detach().set_requires_grad(true);
    let r = ((&xl * &xl).mean_dim([1i64].as_slice(), true, Kind::Float) + eps).rsqrt();
    let seed = (&xl * &r * &gl * &dy).sum(Kind::Float);
    let want = Tensor::run_backward(&[seed], &[&xl, &gl], false, false);
    let r = r.detach().reshape([n]);
    let saved = vec![TchTensor::new(x), TchTensor::new(gamma), TchTensor::new(r)];
    let (dx, dgamma) = (libtorch_fused::rms_norm().backward)(saved, TchTensor::new(dy));
    let err = rel(&dx.tensor, &want[0]);
    assert!(err < 1e-5, "RMSNorm fallback dx: relative error {err:e}");
    let err = rel(&dgamma.tensor, &want[1]);
    assert!(err < 1e-5, "RMSNorm fallback dγ: relative error {err:e}");
}

/// The fused AdamW kernel (reached through `libtorch_adamw` on CUDA) against the tensor-op update,
/// first step and later, with and without decay and a clipping factor; sizes that leave a tail
/// after the four-element loads.
#[test]
fn adamw_matches_the_tensor_op_update() {
    use burn::backend::libtorch::{LibTorch, LibTorchDevice};
    use llama_experiments::libtorch_adamw::try_update;
    if cuda().is_none() {
        return;
    }
    let cases = [
        (1001, 1, 0.01, false, true),
        (4096, 7, 0.0, true, false),
        (999, 7, 0.01, true, true),
    ];
    common::adamw::check_update::<LibTorch>(&LibTorchDevice::Cuda(0), &cases, |a| {
        try_update(a, true).ok()
    });
}

/// The optimiser on CUDA updating every bucket parameter by parameter (`AdamwParts`: no
/// concatenation, the clipping and the accumulation scale folded into the kernel's factor)
/// against the f64 reference of torch's AdamW; and one bucket's update by parts bit for bit the
/// same as the concatenated bucket's, for parts whose offsets break the four-element loads.
#[test]
fn adamw_by_parameter_is_the_bucket_update() {
    use burn::backend::Autodiff;
    use burn::backend::libtorch::{LibTorch, LibTorchDevice};
    use burn::tensor::{Distribution, Tensor as BurnTensor};
    use llama_experiments::libtorch_adamw::{try_update, try_update_parts, updates_parts};
    use llama_experiments::train::optim::{AdamwParts, AdamwScalars};
    if cuda().is_none() {
        return;
    }
    let device = LibTorchDevice::Cuda(0);
    assert!(
        updates_parts::<LibTorch>(&device),
        "the fused kernels load on CUDA"
    );
    assert!(!updates_parts::<LibTorch>(&LibTorchDevice::Cpu));
    common::adamw::check_torch_adamw::<Autodiff<LibTorch>>(&device, true, Some(1));
    let r =
        |n, std| BurnTensor::<LibTorch, 1>::random([n], Distribution::Normal(0.0, std), &device);
    let cases = [
        (vec![4096, 2048, 64], true),
        (vec![4096, 1001, 7, 2048], true),
        (vec![999, 4096], false),
    ];
    for (sizes, later) in cases {
        let len: usize = sizes.iter().sum();
        let mut offset = 0;
        let parts: Vec<_> = sizes
            .iter()
            .map(|&n| {
                offset += n;
                (offset - n, r(n, 1.0), r(n, 0.1))
            })
            .collect();
        let step = AdamwParts {
            len,
            parts,
            grad_factor: Some(BurnTensor::from_floats([0.37], &device)),
            moments: later.then(|| (r(len, 0.01), r(len, 1e-4).abs())),
            scalars: AdamwScalars {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                lr: 3e-4,
                decay: 3e-5,
                c1: 0.5,
                c2: 0.3,
            },
        };
        let again = AdamwParts {
            parts: step.parts.clone(),
            grad_factor: step.grad_factor.clone(),
            moments: step.moments.clone(),
            ..step
        };
        // The same update from bf16 gradients (`llama_model::weight_cast`): each widened
        // exactly as it is loaded, so the same bits as from their f32 copies.
        let rounded = AdamwParts {
            parts: (step.parts.iter())
                .map(|(o, p, g)| {
                    let g16 = g.clone().cast(burn::tensor::DType::BF16);
                    (*o, p.clone(), g16)
                })
                .collect(),
            grad_factor: step.grad_factor.clone(),
            moments: step.moments.clone(),
            ..step
        };
        let widened = AdamwParts {
            parts: (rounded.parts.iter())
                .map(|(o, p, g)| (*o, p.clone(), g.clone().cast(burn::tensor::DType::F32)))
                .collect(),
            grad_factor: step.grad_factor.clone(),
            moments: step.moments.clone(),
            ..step
        };
        let (Ok(a), Ok(b)) = (try_update_parts(rounded), try_update_parts(widened)) else {
            panic!("bf16 and f32 gradients are both updated by the kernels");
        };
        let bits = |o: llama_experiments::train::optim::AdamwOutput<LibTorch>| {
            [o.0, o.1, o.2].map(|t| t.into_data().to_vec::<f32>().unwrap())
        };
        assert_eq!(bits(a), bits(b), "bf16 gradients, sizes {sizes:?}");
        // And a concatenated bucket of bf16 gradients (the fused kernel's bf16 form).
        let flat = |dtype| AdamwParts {
            parts: (step.parts.iter())
                .map(|(o, p, g)| {
                    let g = g.clone().cast(burn::tensor::DType::BF16).cast(dtype);
                    (*o, p.clone(), g)
                })
                .collect(),
            grad_factor: step.grad_factor.clone(),
            moments: step.moments.clone(),
            ..step
        };
        let bf16 = flat(burn::tensor::DType::BF16).concatenated();
        assert_eq!(bf16.grad.dtype(), burn::tensor::DType::BF16);
        let (Ok(a), Ok(b)) = (
            try_update(bf16, true),
            try_update(flat(burn::tensor::DType::F32).concatenated(), true),
        ) else {
            panic!("concatenated bf16 and f32 gradients are both updated by the kernel");
        };
        assert_eq!(
            bits(a),
            bits(b),
            "concatenated bf16 gradients, sizes {sizes:?}"
        );
        let Ok((p, m, v)) = try_update_parts(step) else {
            panic!("libtorch CUDA f32 parts are updated by the kernel");
        };
        let Ok((p2, m2, v2)) = try_update(again.concatenated(), true) else {
            panic!("the concatenated bucket is updated by the kernel");
        };
        // Parts at offsets of four elements take the kernel's four-wide loads as the whole
        // bucket does: the same bits. Others take its one-element loop, which the compiler may
        // contract into fused multiply-adds differently: within rounding.
        let aligned = sizes.iter().all(|n| n % 4 == 0);
        for (what, a, b) in [("p", p, p2), ("m", m, m2), ("v", v, v2)] {
            let (a, b) = (
                a.into_data().to_vec::<f32>().unwrap(),
                b.into_data().to_vec::<f32>().unwrap(),
            );
            let worst = (a.iter().zip(&b))
                .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
                .fold(0.0f32, f32::max);
            match aligned {
                true => assert_eq!(a, b, "{what}, sizes {sizes:?}: worst {worst:e}"),
                false => assert!(worst < 1e-6, "{what}, sizes {sizes:?}: worst {worst:e}"),
            }
        }
    }
}

#[test]
fn sample_rows_draws_what_the_host_reference_draws() {
    use llama_model::Sampling;
    use rand::{Rng, SeedableRng};
    let Some(dev) = cuda() else { return };
    // (temperature, top-k, top-p)
    let settings = [
        (0.0, None, None),
        (0.8, None, None),
        (1.7, Some(5), None),
        (0.8, None, Some(0.6)),
        (0.8, Some(12), Some(0.85)),
        (0.8, None, Some(0.95)),
        (1.0, Some(40), Some(0.95)),
    ]
    .map(|(temperature, top_k, top_p)| Sampling {
        temperature,
        top_k,
        top_p,
        ..Default::default()
    });
    // Small rows (one warp's segment, a prime), LLaMA's vocabulary, and integer logits (ties at
    // every boundary: top-k and top-p keep all tied tokens, greedy takes the first maximum).
    for (rows, vocab, ties) in [
        (3, 40, false),
        (2, 41, false),
        (2, 32_000, false),
        (2, 3001, true),
    ] {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(vocab as u64);
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|i| match ties {
                true => rng.random_range(0..6) as f32,
                false => rng.random::<f32>() * (1 + i / vocab) as f32 * 3.0,
            })
            .collect();
        let t = Tensor::from_slice(&logits)
            .reshape([rows as i64, vocab as i64])
            .to_device(dev);
        let n = 64;
        for s in &settings {
            let (mut wrong, mut distinct) = (0, std::collections::HashSet::new());
            for i in 0..n {
                let u = (i as f32 + 0.5) / n as f32;
                let ut = Tensor::from_slice(&vec![u; rows]).to_device(dev);
                let p = s.top_p.filter(|&p| p < 1.0);
                let k = s.top_k.filter(|&k| k < vocab);
                let got = k::sample_rows(&t, Some(&ut), s.temperature, k, p).expect("runs on CUDA");
                assert_eq!(got.size(), [rows as i64, 1]);
                let got = Vec::<i64>::try_from(got.reshape([-1]).to_device(Device::Cpu)).unwrap();
                for r in 0..rows {
                    let want = s.pick(&logits[r * vocab..(r + 1) * vocab], u as f64);
                    wrong += usize::from(want as i64 != got[r]);
                    distinct.insert(got[r]);
                }
            }
            assert_eq!(
                wrong,
                0,
                "{rows}×{vocab} {s:?}: {wrong} of {} picks differ",
                n * rows
            );
            assert!(s.temperature == 0.0 || distinct.len() > rows, "{s:?}");
        }
    }
    // Greedy needs no draws; a CPU tensor is declined.
    let x = Tensor::from_slice(&[1.0f32, 3.0, 3.0, 2.0]).reshape([1, 4]);
    let got = k::sample_rows(&x.to_device(dev), None, 0.0, None, None).unwrap();
    assert_eq!(got.int64_value(&[0, 0]), 1);
    assert!(k::sample_rows(&x, None, 0.0, None, None).is_none());
}
