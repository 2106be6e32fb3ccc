//! Which of the model's operations each backend registers (`register_ops`), and the environment
//! knobs that pick among their forms for comparisons (`env_choice`, `knob_on`, the `*_CHOICES`).

use anyhow::{Result, anyhow, bail};
use llama_model::embedding::NativeEmbedding;
use llama_model::loss::NativeLoss;
use llama_model::rms_norm::NativeRmsNorm;
use llama_model::rotary::NativeRotary;
use llama_model::sdpa::{AttentionForward, NativeAttention};
use llama_model::swiglu::NativeSwiglu;

/// The value of the comparison knob `var` among `allowed` (`auto` when unset or empty), or a
/// one-line error naming the knob, the value and the choices.
pub(crate) fn env_choice(var: &str, allowed: &[&'static str]) -> Result<&'static str> {
    let value = std::env::var(var).unwrap_or_default();
    match value.as_str() {
        "" => Ok("auto"),
        v => allowed
            .iter()
            .copied()
            .find(|a| *a == v)
            .ok_or_else(|| anyhow!("{var}={v}: expected one of {}", allowed.join(", "))),
    }
}

/// `LLAMA_ATTN_SPLIT`'s values: `auto`, `off`, or the blocks of one cluster that share a
/// decoded (row, head) pair's keys, up to the kernel's 8.
pub(crate) const SPLIT_CHOICES: [&str; 10] =
    ["auto", "off", "1", "2", "3", "4", "5", "6", "7", "8"];

/// `LLAMA_ATTN_KEYS`'s values: `auto`, or the keys a warp of decoding's attention scores per
/// pass (the kernels `decode_attention.cu` compiles).
pub(crate) const KEYS_CHOICES: [&str; 4] = ["auto", "8", "16", "32"];
/// `LLAMA_ATTN_WARPS`'s values: `auto` (no more warps a block than keep every cluster of the
/// launch resident at once), `off` (as many as the keys ask for, up to 16), or a fixed cap.
pub(crate) const WARPS_CHOICES: [&str; 18] = [
    "auto", "off", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
    "16",
];
/// `LLAMA_ATTN_PRELOAD`'s values (decoding's attention, `cuda_kernels::ops`).
pub(crate) const PRELOAD_CHOICES: [&str; 3] = ["auto", "off", "all"];

/// Whether the on/off knob `var=auto|<off>` is on (unset, empty or `auto`), for the launchers
/// that read it where it acts; `register_ops` has already turned any other value into an error.
#[cfg(feature = "tch")]
pub(crate) fn knob_on(var: &str, off: &'static str) -> bool {
    env_choice(var, &["auto", off]).map_or(true, |v| v != off)
}

/// Most row blocks a projection's weight gradient is split into (`LLAMA_LINEAR=split`): a
/// `125m` weight gradient (768 × 768 over 16,384 tokens) then runs on 16× the cubes.
const MAX_SPLITS: usize = 16;

/// What [`register_ops`] registers for a backend `I`: the attention's forward, the backend's own
/// forms of the operations where it has them, and which of the opt-in operations are its defaults.
pub(crate) struct Ops<I: burn::tensor::backend::Backend> {
    pub(crate) forward: AttentionForward,
    pub(crate) attention: Option<NativeAttention<I>>,
    pub(crate) loss: Option<NativeLoss<I>>,
    pub(crate) swiglu: Option<NativeSwiglu<I>>,
    /// The residual update in one kernel (inference and training; `llama_model::residual`).
    pub(crate) residual: Option<llama_model::residual::NativeResidual<I>>,
    /// Fused kernels of this project for the backend, the default of `auto` where present.
    pub(crate) fused: Option<Fused<I>>,
    /// `LLAMA_LOSS=auto` means the backend's own loss (else the closed-form operation).
    pub(crate) torch_loss: bool,
    /// `LLAMA_NORM=auto` means the RMSNorm operation (else burn-nn's tensor-op form).
    pub(crate) norm_operation: bool,
    /// `LLAMA_ROPE=auto` means the rotary operation (else the tensor-op form).
    pub(crate) rope_operation: bool,
    /// `LLAMA_LINEAR=auto` splits the projections' weight gradients (`llama_model::split_k`)
    /// unless a native product runs.
    pub(crate) split_linear: bool,
    /// A library's matrix product (`llama_model::product`), registered where present.
    pub(crate) product: Option<llama_model::product::NativeProduct<I>>,
    /// The same library's `c + x · w` into `c` (`llama_model::product::register_accumulate`).
    pub(crate) product_accumulate: Option<llama_model::product::NativeAccumulate<I>>,
    /// This project's fused cross-entropy where the other fused kernels are not (CubeCL's CUDA).
    pub(crate) own_loss: Option<NativeLoss<I>>,
    /// This project's RMSNorm kernels where the other fused kernels are not (CubeCL's CUDA).
    pub(crate) own_norm: Option<NativeRmsNorm<I>>,
    /// This project's rotary kernel where the other fused kernels are not (CubeCL's CUDA).
    pub(crate) own_rotary: Option<NativeRotary<I>>,
    /// This project's SwiGLU kernels where the other fused kernels are not (CubeCL's CUDA).
    pub(crate) own_swiglu: Option<NativeSwiglu<I>>,
    /// The embedding's weight gradient by the backend's own kernel (`llama_model::embedding`).
    pub(crate) embedding: Option<NativeEmbedding<I>>,
    /// An update kernel of this project that reads bf16 gradients as they are (CubeCL's CUDA;
    /// tch-cuda's is part of `fused`): projections' weight gradients may then stay bf16.
    pub(crate) own_adamw: bool,
    /// The update's store of the weights' bf16 copies (`llama_model::weight_cast`), made only
    /// when registered (making it turns the copies on).
    pub(crate) weight_copies: Option<fn() -> llama_model::weight_cast::NativeCopies<I>>,
}

/// The operations with this project's fused kernels (`LLAMA_LOSS/NORM/ROPE/SWIGLU=fused`).
#[allow(dead_code)]
pub(crate) struct Fused<I: burn::tensor::backend::Backend> {
    pub(crate) loss: NativeLoss<I>,
    pub(crate) norm: NativeRmsNorm<I>,
    pub(crate) rotary: NativeRotary<I>,
    pub(crate) swiglu: NativeSwiglu<I>,
    /// Single-query attention for decoding (inference only).
    pub(crate) decode_attention: llama_model::decode_attention::NativeDecodeAttention<I>,
    /// Few-row products for decoding (inference only).
    pub(crate) gemv: llama_model::gemv::NativeGemv<I>,
    /// SwiGLU's gate in the epilogue of a row's stacked gate/up product (inference only).
    pub(crate) gemv_swiglu: llama_model::gemv::NativeGemvSwiglu<I>,
    /// The residual update with the next RMSNorm (inference only).
    pub(crate) add_norm: llama_model::add_norm::NativeAddRmsNorm<I>,
    /// A decode step's rotation and cache-slot write (inference only).
    pub(crate) rope_slot: llama_model::rope_slot::NativeRopeSlot<I>,
    /// The two above and decoding's attention in one kernel (inference only).
    pub(crate) rope_slot_attention: llama_model::rope_slot_attention::NativeRopeSlotAttention<I>,
    /// Generation's token draw (inference only).
    pub(crate) sample: llama_model::sampler::NativeSample<I>,
}

impl<I: burn::tensor::backend::Backend> Ops<I> {
    #[allow(dead_code)]
    pub(crate) fn new(forward: AttentionForward) -> Self {
        Self {
            forward,
            attention: None,
            loss: None,
            swiglu: None,
            residual: None,
            fused: None,
            torch_loss: false,
            norm_operation: false,
            rope_operation: false,
            split_linear: false,
            product: None,
            product_accumulate: None,
            own_loss: None,
            own_norm: None,
            own_rotary: None,
            own_swiglu: None,
            embedding: None,
            own_adamw: false,
            weight_copies: None,
        }
    }
}

/// Registers the model's own autodiff operations for backend `I`: the memory-efficient attention
/// (`llama_model::sdpa`, through the backend's native attention where it has one), the
/// cross-entropy (`llama_model::loss`, closed form or the backend's own), RMSNorm
/// (`llama_model::rms_norm`), the rotary embedding (`llama_model::rotary`) and SwiGLU's gate
/// (`llama_model::swiglu`) as single operations.
/// Each has an environment knob for comparisons (`auto` is the backend's default):
/// `LLAMA_ATTENTION=auto|blocked|decomposed`, `LLAMA_LOSS=auto|operation|torch|fused|decomposed`,
/// `LLAMA_NORM=auto|operation|fused|decomposed`, `LLAMA_ROPE=auto|operation|fused|decomposed`,
/// `LLAMA_SWIGLU=auto|operation|torch|fused|decomposed`, `LLAMA_LINEAR=auto|flat|split`,
/// `LLAMA_EMBEDDING=auto|decomposed` (the embedding's weight gradient by the backend's kernel),
/// `LLAMA_GRAD_NORM=auto|decomposed` (CubeCL's CUDA: the clipping's squared norms by our kernel),
/// `LLAMA_PRODUCT=auto|cublas|matmul` (cuBLAS's products under CubeCL, or the backend's matmul;
/// `auto`: cuBLAS where CUPTI finds CubeCL's stream), `LLAMA_PRODUCT_SUM=auto|burn` (products of
/// one input add their input gradients into one matrix, or Burn sums them),
/// `LLAMA_CUBLAS_WAIT=auto|stream|host`
/// (how cuBLAS's products and CubeCL's kernels hand over),
/// `LLAMA_DECODE_ATTENTION=auto|fused|decomposed`, `LLAMA_GEMV=auto|fused|matmul`,
/// `LLAMA_ADD_NORM=auto|fused|separate`, `LLAMA_ROPE_SLOT=auto|fused|separate`,
/// `LLAMA_PDL=auto|off` (the fused kernels of a decoded token with programmatic dependent launch),
/// `LLAMA_GEMV_SPLIT=auto|off` (the one-row product's long rows over several warps),
/// `LLAMA_VJP=auto|seed` (torch's backward from a given output gradient, or from `Σ out ⊙ grad`)
/// (`decomposed` is Burn's tensor-op form, `torch` the libtorch kernels, `fused` this project's
/// CUDA kernels on tch-cuda; `split`: projections' weight gradients over row blocks).
#[allow(dead_code)]
pub(crate) fn register_ops<I: burn::tensor::backend::Backend>(ops: Ops<I>) -> Result<()> {
    let libtorch_only =
        |var: &str| anyhow!("{var}=torch needs a libtorch device (tch-cpu, tch-cuda)");
    let fused = ops.fused;
    let (fused_loss, fused_norm, fused_rotary, fused_swiglu) = match &fused {
        Some(f) => (Some(f.loss), Some(f.norm), Some(f.rotary), Some(f.swiglu)),
        None => (None, None, None, None),
    };
    let fused_loss = fused_loss.or(ops.own_loss);
    let fused_norm = fused_norm.or(ops.own_norm);
    let fused_rotary = fused_rotary.or(ops.own_rotary);
    let fused_swiglu = fused_swiglu.or(ops.own_swiglu);
    match (
        env_choice("LLAMA_ATTENTION", &["auto", "blocked", "decomposed"])?,
        ops.attention,
    ) {
        ("decomposed", _) => {}
        ("auto", Some(native)) => llama_model::sdpa::register_native::<I>(ops.forward, native),
        _ => llama_model::sdpa::register::<I>(ops.forward),
    }
    match (
        env_choice(
            "LLAMA_LOSS",
            &["auto", "operation", "torch", "fused", "decomposed"],
        )?,
        ops.loss,
        fused_loss,
    ) {
        ("decomposed", _, _) => {}
        ("fused" | "auto", _, Some(fused)) => llama_model::loss::register_native::<I>(fused),
        ("fused", _, None) => return Err(fused_only("LLAMA_LOSS")),
        ("torch", Some(native), _) => llama_model::loss::register_native::<I>(native),
        ("auto", Some(native), _) if ops.torch_loss => {
            llama_model::loss::register_native::<I>(native)
        }
        ("torch", None, _) => return Err(libtorch_only("LLAMA_LOSS")),
        _ => llama_model::loss::register::<I>(),
    }
    register_operation(
        "LLAMA_NORM",
        fused_norm,
        ops.norm_operation,
        llama_model::rms_norm::register_native::<I>,
        llama_model::rms_norm::register::<I>,
    )?;
    register_operation(
        "LLAMA_ROPE",
        fused_rotary,
        ops.rope_operation,
        llama_model::rotary::register_native::<I>,
        llama_model::rotary::register::<I>,
    )?;
    match (
        env_choice(
            "LLAMA_SWIGLU",
            &["auto", "operation", "torch", "fused", "decomposed"],
        )?,
        ops.swiglu,
        fused_swiglu,
    ) {
        ("decomposed", _, _) => {}
        ("fused" | "auto", _, Some(fused)) => llama_model::swiglu::register_native::<I>(fused),
        ("fused", _, None) => return Err(fused_only("LLAMA_SWIGLU")),
        ("torch" | "auto", Some(native), _) => llama_model::swiglu::register_native::<I>(native),
        ("torch", None, _) => return Err(libtorch_only("LLAMA_SWIGLU")),
        ("operation", _, _) => llama_model::swiglu::register::<I>(),
        _ => {}
    }
    if let ("auto", Some(native)) = (
        env_choice("LLAMA_EMBEDDING", &["auto", "decomposed"])?,
        ops.embedding,
    ) {
        llama_model::embedding::register_native::<I>(native);
    }
    // Inference-only kernels: on by default where the fused kernels run.
    register_inference(
        "LLAMA_DECODE_ATTENTION",
        "decomposed",
        fused.as_ref().map(|f| f.decode_attention),
        llama_model::decode_attention::register_native::<I>,
    )?;
    register_inference(
        "LLAMA_GEMV",
        "matmul",
        fused.as_ref().map(|f| f.gemv),
        llama_model::gemv::register_native::<I>,
    )?;
    register_inference(
        "LLAMA_GEMV_SWIGLU",
        "separate",
        fused.as_ref().map(|f| f.gemv_swiglu),
        llama_model::gemv::register_native_swiglu::<I>,
    )?;
    register_inference(
        "LLAMA_ADD_NORM",
        "separate",
        fused.as_ref().map(|f| f.add_norm),
        llama_model::add_norm::register_native::<I>,
    )?;
    register_inference(
        "LLAMA_ROPE_SLOT",
        "separate",
        fused.as_ref().map(|f| f.rope_slot),
        llama_model::rope_slot::register_native::<I>,
    )?;
    // `tensor`: the tensor operations' draw (llama_model::sampler), for comparison.
    register_inference(
        "LLAMA_SAMPLER",
        "tensor",
        fused.as_ref().map(|f| f.sample),
        llama_model::sampler::register_native::<I>,
    )?;
    // The rotation, slot write and attention of a decode step in one kernel where both of the
    // kernels it replaces are on (`auto`; `fused` insists, `separate`: the two). It was opt-in
    // in session 24 after the graph-against-eager test failed once with it; that test compared
    // tokens drawn at temperature 1 from two differently rounded decodings, and now compares
    // logits on forced tokens and a recording against its repeat bit for bit, 9/9 with the fold
    // on the H200 (docs/performance.md, attempt 46).
    let (attention_on, slot_on) = (
        env_choice("LLAMA_DECODE_ATTENTION", &["auto", "fused", "decomposed"])? != "decomposed",
        env_choice("LLAMA_ROPE_SLOT", &["auto", "fused", "separate"])? != "separate",
    );
    match (
        env_choice("LLAMA_ROPE_SLOT_ATTENTION", &["auto", "fused", "separate"])?,
        &fused,
    ) {
        ("fused", None) => return Err(fused_only("LLAMA_ROPE_SLOT_ATTENTION")),
        ("fused", Some(_)) if !(attention_on && slot_on) => bail!(
            "LLAMA_ROPE_SLOT_ATTENTION=fused needs LLAMA_DECODE_ATTENTION and LLAMA_ROPE_SLOT on"
        ),
        ("fused" | "auto", Some(f)) if attention_on && slot_on => {
            llama_model::rope_slot_attention::register_native::<I>(f.rope_slot_attention)
        }
        _ => {}
    }
    // Read by the fused kernels' launchers; checked here for a clear error.
    env_choice("LLAMA_PDL", &["auto", "off"])?;
    env_choice("LLAMA_GEMV_SPLIT", &["auto", "off"])?;
    env_choice("LLAMA_GEMV_GRID", &["auto", "waves"])?;
    env_choice("LLAMA_NORM_EARLY", &["auto", "off"])?;
    env_choice("LLAMA_ATTN_VALUES", &["auto", "narrow"])?;
    env_choice("LLAMA_GEMV_LOADS", &["auto", "cached"])?;
    env_choice("LLAMA_ATTN_PRELOAD", &PRELOAD_CHOICES)?;
    env_choice("LLAMA_ATTN_SPLIT", &SPLIT_CHOICES)?;
    env_choice("LLAMA_ATTN_KEYS", &KEYS_CHOICES)?;
    env_choice("LLAMA_ATTN_WARPS", &WARPS_CHOICES)?;
    env_choice("LLAMA_VJP", &["auto", "seed"])?;
    // The residual update in one kernel, in inference and (as one autodiff operation) in
    // training; `decomposed`: the cast and the sum.
    if let ("auto", Some(add)) = (
        env_choice("LLAMA_RESIDUAL", &["auto", "decomposed"])?,
        ops.residual,
    ) {
        llama_model::residual::register_native::<I>(add);
        llama_model::residual::register_autodiff::<I>();
    }
    // Where the fused AdamW runs (it reads bf16 gradients as they are), a projection's weight
    // gradient stays bf16 instead of being widened to f32 by its cast's backward; `f32`: widened.
    // (On CubeCL the widening casts ran at the end of the backward pass, fused by shape into
    // five kernels at ~2.7 TB/s, ~2.4 ms of a `1b` step: attempt 65.)
    if env_choice("LLAMA_WEIGHT_GRAD", &["auto", "f32"])? == "auto"
        && (fused.is_some() || ops.own_adamw)
    {
        llama_model::weight_cast::register::<I>();
        // The update's bf16 copies of the weights, read by the next forward pass's products
        // instead of a cast per weight (CubeCL's CUDA, attempt 68); `off`: casts.
        if let ("auto", Some(copies)) = (
            env_choice("LLAMA_WEIGHT_COPY", &["auto", "off"])?,
            ops.weight_copies,
        ) {
            llama_model::weight_cast::register_copies::<I>(copies());
        }
    }
    // A library's products where the backend offers one (cuBLAS under CubeCL where its stream is
    // found, or asked for with `LLAMA_PRODUCT=cublas`); otherwise the backend's matmul.
    let product = match (
        env_choice("LLAMA_PRODUCT", &["auto", "cublas", "matmul"])?,
        ops.product,
    ) {
        ("cublas" | "auto", Some(native)) => {
            llama_model::product::register_native::<I>(native);
            // Products of one input add their input gradients into one matrix where the
            // library can (`LLAMA_PRODUCT_SUM=auto`); `burn`: Burn's separate sums.
            if let ("auto", Some(acc)) = (
                env_choice("LLAMA_PRODUCT_SUM", &["auto", "burn"])?,
                ops.product_accumulate,
            ) {
                llama_model::product::register_accumulate::<I>(acc);
            }
            true
        }
        ("cublas", None) => {
            bail!("LLAMA_PRODUCT=cublas needs `--device cuda` with libcublas on the library path")
        }
        _ => false,
    };
    match env_choice("LLAMA_LINEAR", &["auto", "flat", "split"])? {
        "split" => llama_model::split_k::register::<I>(MAX_SPLITS),
        "auto" if ops.split_linear && !product => llama_model::split_k::register::<I>(MAX_SPLITS),
        _ => {}
    }
    Ok(())
}

/// The error for `var=fused` where the fused kernels do not run.
fn fused_only(var: &str) -> anyhow::Error {
    anyhow!("{var}=fused needs tch-cuda with NVRTC (a CUDA toolkit's libnvrtc) on the library path")
}

/// The knob `var=auto|operation|fused|decomposed` of an operation without a torch form: the fused
/// kernels where the backend has them (`auto` too), the operation where asked or
/// `auto_operation`, else the tensor-op form.
fn register_operation<N>(
    var: &str,
    fused: Option<N>,
    auto_operation: bool,
    register_native: fn(N),
    register: fn(),
) -> Result<()> {
    match (
        env_choice(var, &["auto", "operation", "fused", "decomposed"])?,
        fused,
    ) {
        ("fused" | "auto", Some(fused)) => register_native(fused),
        ("fused", None) => return Err(fused_only(var)),
        ("operation", _) => register(),
        ("auto", _) if auto_operation => register(),
        _ => {}
    }
    Ok(())
}

/// `var=auto|fused|<off>` for an inference-only kernel: registered unless `off`; `fused` is an
/// error where the fused kernels do not run.
fn register_inference<N>(
    var: &str,
    off: &'static str,
    fused: Option<N>,
    register_native: fn(N),
) -> Result<()> {
    match (env_choice(var, &["auto", "fused", off])?, fused) {
        ("fused" | "auto", Some(fused)) => register_native(fused),
        ("fused", None) => return Err(fused_only(var)),
        _ => {}
    }
    Ok(())
}
