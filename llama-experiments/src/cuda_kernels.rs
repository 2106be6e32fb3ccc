//! Fused element-wise CUDA kernels for libtorch tensors (`cuda_kernels.cu`), compiled at run time
//! by NVRTC and launched through `cudarc` on the stream torch uses.
//!
//! Why our own kernels: after attempts 1–13 a tch-cuda training step runs the same kernels as
//! PyTorch eager, and what separates both from `torch.compile` is fusion (docs/performance.md).
//! Compile's Triton kernels cannot be reached from Rust and libtorch has no fused cross-entropy,
//! RMSNorm or SwiGLU, so these are written out: the cross-entropy reads the `[tokens, vocab]`
//! logits once forward and once backward (torch: about six passes, two of them in f32), RMSNorm
//! is one kernel each way instead of about seven, SwiGLU one instead of two forward and four
//! backward. `cudarc` is the CUDA binding candle and CubeCL use; it loads the driver and NVRTC
//! when first asked, so a binary without a GPU never needs them.
//!
//! Launches go to the legacy default stream, torch's current stream unless a program changes it
//! (this one never does), so they are ordered with torch's kernels and its caching allocator's
//! reuse of freed blocks. Every function returns `None` when it cannot run (a CPU tensor, another
//! dtype, no NVRTC, a too-wide row); the callers then use torch's kernels.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use tch::{Device, Kind, Tensor};

const SOURCE: &str = include_str!("cuda_kernels.cu");

/// Kernel names without their dtype suffix (`_f32`, `_bf16`), in both dtypes.
pub const KERNELS: [&str; 7] = [
    "cross_entropy_forward",
    "cross_entropy_backward",
    "swiglu_forward",
    "swiglu_backward",
    "rotary",
    "rms_norm_forward",
    "rms_norm_backward",
];

/// Kernels with an f32 form only.
pub const F32_KERNELS: [&str; 1] = ["adamw"];

/// RMSNorm's f32 input with a bf16 output (`_f32_bf16`).
pub const MIXED_KERNELS: [&str; 2] = ["rms_norm_forward", "rms_norm_backward"];

/// Columns per thread the row kernels keep in registers (`RMS_COLS` in the source; with 1,024
/// threads a block then fits the 64 K registers of an SM).
const ROW_COLS: usize = 8;

/// Whether NVRTC can be loaded (a CUDA toolkit, or PyPI's `nvidia-cuda-nvrtc`, on the library
/// path).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The kernels compiled to PTX (no GPU needed; the tests use it to check the source).
pub fn compile() -> Result<Ptx, String> {
    if !nvrtc_present() {
        return Err("NVRTC (libnvrtc) is not on the library path".into());
    }
    let options = CompileOptions {
        // Accurate expf/logf/division: the statistics must match torch's to f32 rounding.
        use_fast_math: Some(false),
        name: Some("cuda_kernels.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, options).map_err(|e| format!("NVRTC: {e}"))
}

/// The loaded kernels of one device.
struct Loaded {
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    /// Kernels whose argument list was checked against their signature.
    checked: Mutex<HashSet<String>>,
}

/// Per CUDA ordinal: the loaded kernels, or `None` after a failure (reported once).
static LOADED: OnceLock<Mutex<HashMap<usize, Option<Arc<Loaded>>>>> = OnceLock::new();

fn load(ordinal: usize) -> Result<Loaded, String> {
    let ptx = compile()?;
    let ctx = CudaContext::new(ordinal).map_err(|e| format!("CUDA context: {e}"))?;
    let module = ctx
        .load_module(ptx)
        .map_err(|e| format!("loading the kernels: {e}"))?;
    let mut functions = HashMap::new();
    let names = KERNELS
        .iter()
        .flat_map(|name| [format!("{name}_f32"), format!("{name}_bf16")])
        .chain(F32_KERNELS.iter().map(|name| format!("{name}_f32")))
        .chain(MIXED_KERNELS.iter().map(|name| format!("{name}_f32_bf16")));
    for full in names {
        let f = module
            .load_function(&full)
            .map_err(|e| format!("kernel {full}: {e}"))?;
        functions.insert(full, f);
    }
    Ok(Loaded {
        stream: ctx.default_stream(),
        functions,
        checked: Mutex::default(),
    })
}

fn loaded(device: Device) -> Option<Arc<Loaded>> {
    let Device::Cuda(ordinal) = device else {
        return None;
    };
    let mut map = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(ordinal)
        .or_insert_with(|| match load(ordinal) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                eprintln!("warning: fused CUDA kernels unavailable, using torch's: {e}");
                None
            }
        })
        .clone()
}

/// Whether the fused kernels load on `device` (compiling them on first use).
pub fn available(device: Device) -> bool {
    loaded(device).is_some()
}

/// The dtype suffix of a tensor the kernels take.
fn suffix(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Float => Some("f32"),
        Kind::BFloat16 => Some("bf16"),
        _ => None,
    }
}

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// 1 when every tensor's data is aligned for the kernels' four-element loads, else 0.
fn vec4(ts: &[&Tensor]) -> i32 {
    ts.iter()
        .all(|t| ptr(t).is_multiple_of(4 * t.kind().elt_size_in_bytes() as u64))
        .into()
}

/// `name` with the suffix of the dtype it runs in.
fn named(name: &str, kind: Kind) -> Option<String> {
    Some(format!("{name}_{}", suffix(kind)?))
}

fn launch(k: &Loaded, full: String, grid: usize, block: usize, args: &[&dyn Arg]) -> Option<()> {
    let name = &full;
    let f = k.functions.get(&full)?;
    // The driver reads one value per parameter of the kernel from the argument list: a list that
    // does not match would make it read past it (a crash in the driver, not an error), so the
    // first launch of each kernel checks the list against the kernel's signature.
    let mut checked = k.checked.lock().unwrap_or_else(|e| e.into_inner());
    if !checked.contains(&full) {
        let want: Vec<usize> = args.iter().map(|a| a.size()).collect();
        if let Some(have) = param_sizes(f)
            && have != want
        {
            eprintln!(
                "warning: fused CUDA kernel {full} takes parameters of {have:?} bytes, given {want:?}"
            );
            return None;
        }
        checked.insert(full.clone());
    }
    drop(checked);
    let mut b = k.stream.launch_builder(f);
    for a in args {
        a.push(&mut b);
    }
    let cfg = LaunchConfig {
        grid_dim: (u32::try_from(grid).ok()?, 1, 1),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: every pointer argument is the data of a contiguous tensor of the kind and size the
    // kernel indexes (checked by the callers), alive until this call returns; torch's allocator
    // reuses a freed block only for work queued after this launch on the same stream.
    match unsafe { b.launch(cfg) } {
        Ok(_) => Some(()),
        Err(e) => {
            eprintln!("warning: fused CUDA kernel {name} failed to launch: {e}");
            None
        }
    }
}

/// A kernel argument (`cudarc`'s builder borrows each; this keeps them in one slice).
trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
    fn size(&self) -> usize;
}
macro_rules! arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
            fn size(&self) -> usize {
                std::mem::size_of::<$t>()
            }
        }
    )*};
}
arg!(u64, i64, i32, f32);

/// The byte size of each of `f`'s parameters as the driver reads them (`cuFuncGetParamInfo`), or
/// `None` where the driver cannot say (before CUDA 12.4).
fn param_sizes(f: &CudaFunction) -> Option<Vec<usize>> {
    use cudarc::driver::sys;
    let mut version = 0;
    // SAFETY: plain driver queries with out-pointers we own; `f` is a loaded function.
    unsafe {
        if sys::cuDriverGetVersion(&mut version) != sys::CUresult::CUDA_SUCCESS || version < 12040 {
            return None;
        }
        let mut sizes = Vec::new();
        loop {
            let (mut offset, mut size) = (0usize, 0usize);
            let r = sys::cuFuncGetParamInfo(f.cu_function(), sizes.len(), &mut offset, &mut size);
            if r != sys::CUresult::CUDA_SUCCESS || sizes.len() > 64 {
                return Some(sizes);
            }
            sizes.push(size);
        }
    }
}

/// `t` contiguous, on a CUDA device with the kernels loaded, of a kind they take.
fn ready(t: &Tensor) -> Option<(Tensor, Arc<Loaded>)> {
    suffix(t.kind())?;
    let k = loaded(t.device())?;
    Some((t.contiguous(), k))
}

/// Threads per block of a row kernel over `dim` columns (about four columns per thread), or
/// `None` when a row does not fit the registers.
fn row_block(dim: usize) -> Option<usize> {
    let block = dim.div_ceil(4).next_multiple_of(32).clamp(32, 1024);
    (dim > 0 && dim <= ROW_COLS * block).then_some(block)
}

const ELEMENT_BLOCK: usize = 256;

fn element_grid(n: usize) -> usize {
    n.div_ceil(ELEMENT_BLOCK).clamp(1, 65_536)
}

/// Mean cross-entropy of `logits [n, vocab]` against `targets [n]` (int64): the loss (`[1]`, f32)
/// and each row's log-sum-exp (`[n]`, f32) for [`cross_entropy_backward`].
pub fn cross_entropy_forward(logits: &Tensor, targets: &Tensor) -> Option<(Tensor, Tensor)> {
    let (logits, k) = ready(logits)?;
    let [n, vocab] = logits.size()[..] else {
        return None;
    };
    let targets = targets.to_kind(Kind::Int64).contiguous();
    if targets.size() != [n] || targets.device() != logits.device() || n == 0 {
        return None;
    }
    let opts = (Kind::Float, logits.device());
    let lse = Tensor::empty([n], opts);
    let rows = Tensor::empty([n], opts);
    let vec = vec4(&[&logits]) * i32::from(vocab % 4 == 0);
    let vocab = i32::try_from(vocab).ok()?;
    launch(
        &k,
        named("cross_entropy_forward", logits.kind())?,
        n as usize,
        512,
        &[
            &ptr(&logits),
            &ptr(&targets),
            &ptr(&lse),
            &ptr(&rows),
            &vocab,
            &vec,
        ],
    )?;
    Some((rows.mean(Kind::Float).reshape([1]), lse))
}

/// The logits' gradient for the loss's gradient `g` (`[1]`): `(softmax − onehot) · g / n`, in the
/// logits' dtype.
pub fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    g: &Tensor,
) -> Option<Tensor> {
    let (logits, k) = ready(logits)?;
    let [n, vocab] = logits.size()[..] else {
        return None;
    };
    let targets = targets.to_kind(Kind::Int64).contiguous();
    let lse = lse.to_kind(Kind::Float).contiguous();
    let g = g
        .to_kind(Kind::Float)
        .to_device(logits.device())
        .contiguous();
    let dlogits = logits.empty_like();
    let inv_n = 1.0 / n as f32;
    let vec = vec4(&[&logits, &dlogits]) * i32::from(vocab % 4 == 0);
    let vocab = i32::try_from(vocab).ok()?;
    launch(
        &k,
        named("cross_entropy_backward", logits.kind())?,
        n as usize,
        512,
        &[
            &ptr(&logits),
            &ptr(&targets),
            &ptr(&lse),
            &ptr(&g),
            &ptr(&dlogits),
            &vocab,
            &inv_n,
            &vec,
        ],
    )?;
    Some(dlogits)
}

/// `silu(a) ⊙ b` in one kernel (`a`, `b` of one shape and kind).
pub fn swiglu_forward(a: &Tensor, b: &Tensor) -> Option<Tensor> {
    let (a, k) = ready(a)?;
    if b.size() != a.size() || b.kind() != a.kind() {
        return None;
    }
    let b = b.contiguous();
    let out = a.empty_like();
    let n = a.numel() as i64;
    let vec = vec4(&[&a, &b, &out]);
    launch(
        &k,
        named("swiglu_forward", a.kind())?,
        element_grid(n as usize / 4),
        ELEMENT_BLOCK,
        &[&ptr(&a), &ptr(&b), &ptr(&out), &n, &vec],
    )?;
    Some(out)
}

/// `(da, db)` of `silu(a) ⊙ b` for the output's gradient `g`, in one kernel.
pub fn swiglu_backward(a: &Tensor, b: &Tensor, g: &Tensor) -> Option<(Tensor, Tensor)> {
    let (a, k) = ready(a)?;
    if b.size() != a.size() || b.kind() != a.kind() || g.size() != a.size() {
        return None;
    }
    let b = b.contiguous();
    let g = g.to_kind(a.kind()).contiguous();
    let (da, db) = (a.empty_like(), a.empty_like());
    let n = a.numel() as i64;
    let vec = vec4(&[&a, &b, &g, &da, &db]);
    launch(
        &k,
        named("swiglu_backward", a.kind())?,
        element_grid(n as usize / 4),
        ELEMENT_BLOCK,
        &[&ptr(&a), &ptr(&b), &ptr(&g), &ptr(&da), &ptr(&db), &n, &vec],
    )?;
    Some((da, db))
}

/// The rotary embedding of `x [batch, heads, time, dim]` with the full-width tables `c`, `s`
/// (`[batch or 1, 1, time, dim]`, x's kind) of `llama_model::rotary`: `x c + swap(x) s`, or with
/// `backward` the inverse rotation `x c + swap(x s)` (x is then the output's gradient). The
/// result is contiguous; `x` may be any view with unit stride along `dim` (a transposed head
/// layout needs no copy).
pub fn rotary(x: &Tensor, c: &Tensor, s: &Tensor, backward: bool) -> Option<Tensor> {
    suffix(x.kind())?;
    let k = loaded(x.device())?;
    let [batch, heads, time, dim] = x.size()[..] else {
        return None;
    };
    let table_ok = |t: &Tensor| {
        let sz = t.size();
        t.kind() == x.kind()
            && t.device() == x.device()
            && sz.len() == 4
            && (sz[0] == batch || sz[0] == 1)
            && sz[1] == 1
            && sz[2] == time
            && sz[3] == dim
    };
    if !table_ok(c) || !table_ok(s) || c.size() != s.size() || dim % 2 != 0 {
        return None;
    }
    let x = if x.stride()[3] == 1 {
        x.shallow_clone()
    } else {
        x.contiguous()
    };
    let (c, s) = (c.contiguous(), s.contiguous());
    let y = Tensor::empty([batch, heads, time, dim], (x.kind(), x.device()));
    let n = y.numel() as i64;
    let st = x.stride();
    let cb = if c.size()[0] == 1 { 0 } else { c.stride()[0] };
    let ct = c.stride()[2];
    let (heads, time, dim) = (
        i32::try_from(heads).ok()?,
        i32::try_from(time).ok()?,
        i32::try_from(dim).ok()?,
    );
    launch(
        &k,
        named("rotary", x.kind())?,
        element_grid(n as usize),
        ELEMENT_BLOCK,
        &[
            &ptr(&x),
            &ptr(&c),
            &ptr(&s),
            &ptr(&y),
            &n,
            &heads,
            &time,
            &dim,
            &st[0],
            &st[1],
            &st[2],
            &cb,
            &ct,
            &i32::from(backward),
        ],
    )?;
    Some(y)
}

/// The RMSNorm kernels' name for an input of kind `x` and an output of kind `y`: the same kind,
/// or an f32 residual stream into a bf16 layer input.
fn rms_named(name: &str, x: Kind, y: Kind) -> Option<String> {
    match (x, y) {
        (Kind::Float, Kind::BFloat16) => Some(format!("{name}_f32_bf16")),
        _ if x == y => named(name, x),
        _ => None,
    }
}

/// RMSNorm of `x [n, dim]` with `gamma [dim]`: `y` (of kind `out`: x's, or bf16 from f32) and each
/// row's `r = 1/√(mean(x²)+ε)` (`[n]`, f32) for [`rms_norm_backward`].
pub fn rms_norm_forward(
    x: &Tensor,
    gamma: &Tensor,
    eps: f64,
    out: Kind,
) -> Option<(Tensor, Tensor)> {
    let (x, k) = ready(x)?;
    let name = rms_named("rms_norm_forward", x.kind(), out)?;
    let [n, dim] = x.size()[..] else {
        return None;
    };
    let block = row_block(dim as usize)?;
    if gamma.size() != [dim] || n == 0 {
        return None;
    }
    let gamma = gamma.to_kind(Kind::Float).contiguous();
    let y = Tensor::empty([n, dim], (out, x.device()));
    let r = Tensor::empty([n], (Kind::Float, x.device()));
    let (dim, eps) = (dim as i32, eps as f32);
    launch(
        &k,
        name,
        n as usize,
        block,
        &[&ptr(&x), &ptr(&gamma), &ptr(&y), &ptr(&r), &dim, &eps],
    )?;
    Some((y, r))
}

/// Blocks of the RMSNorm backward: enough to fill the card, few enough that summing their
/// `dγ` rows is cheap.
const ROW_GRID: usize = 1024;

/// `(dx, dγ)` of RMSNorm for the output's gradient `dy` (of the output's kind), from what
/// [`rms_norm_forward`] kept: `dx` in x's kind, `dγ` in f32.
pub fn rms_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    r: &Tensor,
) -> Option<(Tensor, Tensor)> {
    let (x, k) = ready(x)?;
    let [n, dim] = x.size()[..] else {
        return None;
    };
    let block = row_block(dim as usize)?;
    if dy.size() != x.size() || gamma.size() != [dim] || r.size() != [n] || n == 0 {
        return None;
    }
    let dy = match rms_named("rms_norm_backward", x.kind(), dy.kind()) {
        Some(_) => dy.contiguous(),
        None => dy.to_kind(x.kind()).contiguous(),
    };
    let name = rms_named("rms_norm_backward", x.kind(), dy.kind())?;
    let gamma = gamma.to_kind(Kind::Float).contiguous();
    let r = r.to_kind(Kind::Float).contiguous();
    let grid = (n as usize).min(ROW_GRID);
    let dx = x.empty_like();
    let partial = Tensor::empty([grid as i64, dim], (Kind::Float, x.device()));
    let dim32 = dim as i32;
    launch(
        &k,
        name,
        grid,
        block,
        &[
            &ptr(&dy),
            &ptr(&x),
            &ptr(&gamma),
            &ptr(&r),
            &ptr(&dx),
            &ptr(&partial),
            &n,
            &dim32,
        ],
    )?;
    Some((dx, partial.sum_dim_intlist(0, false, Kind::Float)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_fit_the_registers() {
        assert_eq!(row_block(768), Some(192));
        assert_eq!(row_block(2048), Some(512));
        assert_eq!(row_block(8192), Some(1024)); // 65B's width
        assert_eq!(row_block(8192 + 1), None);
        assert_eq!(row_block(0), None);
        assert_eq!(row_block(5), Some(32));
    }
}

/// AdamW's scalars for [`adamw`], in `train::optim::AdamwStep`'s terms.
#[derive(Debug, Clone, Copy)]
pub struct AdamwScalars {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub lr: f64,
    /// `lr · weight_decay`, or 0.
    pub decay: f64,
    /// Bias corrections `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    pub c1: f64,
    pub c2: f64,
}

/// One AdamW update of a flat f32 bucket in one kernel: new `(p, m, v)`. `moments` is `None` on
/// the first step; `factor` (`[1]`, f32, on the device) scales the gradient first.
pub fn adamw(
    p: &Tensor,
    g: &Tensor,
    moments: Option<(&Tensor, &Tensor)>,
    factor: Option<&Tensor>,
    s: AdamwScalars,
) -> Option<(Tensor, Tensor, Tensor)> {
    if p.kind() != Kind::Float || g.kind() != Kind::Float || p.size() != g.size() {
        return None;
    }
    let (p, k) = ready(p)?;
    let g = g.contiguous();
    let moments = match moments {
        Some((m, v)) => {
            if m.size() != p.size() || v.size() != p.size() || m.kind() != Kind::Float {
                return None;
            }
            Some((m.contiguous(), v.to_kind(Kind::Float).contiguous()))
        }
        None => None,
    };
    let factor = factor.map(|f| f.to_kind(Kind::Float).to_device(p.device()).contiguous());
    let (po, mo, vo) = (p.empty_like(), p.empty_like(), p.empty_like());
    let n = p.numel() as i64;
    let (mp, vp) = moments.as_ref().map_or((0, 0), |(m, v)| (ptr(m), ptr(v)));
    let mut aligned = vec![&p, &g, &po, &mo, &vo];
    if let Some((m, v)) = &moments {
        aligned.extend([m, v]);
    }
    let vec = vec4(&aligned);
    let f = |x: f64| x as f32;
    launch(
        &k,
        named("adamw", Kind::Float)?,
        element_grid(n as usize / 4),
        ELEMENT_BLOCK,
        &[
            &ptr(&p),
            &ptr(&g),
            &mp,
            &vp,
            &ptr(&po),
            &ptr(&mo),
            &ptr(&vo),
            &n,
            &factor.as_ref().map_or(0, ptr),
            &f(s.beta1),
            &f(s.beta2),
            &f(s.lr / s.c1),
            &f(1.0 / s.c2.sqrt()),
            &f(s.eps),
            &f(1.0 - s.decay),
            &vec,
        ],
    )?;
    Some((po, mo, vo))
}
