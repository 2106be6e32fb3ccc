//! The launcher of `sample.cu`: each row's next token drawn from its logits in one kernel.

use tch::{Device, Kind, Tensor};

use super::{launch, loaded, ptr};

/// Threads per block of `sample_rows_f32` (its `__launch_bounds__`).
const THREADS: usize = 1024;

/// Each row's token `[rows, 1]` (int64) from `logits [rows, n]` (f32, CUDA): the first largest
/// logit when `temperature` is 0, else the draw of `llama_model::sampler` at the uniforms `u
/// [rows]` (f32) with `top_k` (`None`: all) and `top_p` (`None`: all). `None` for anything else
/// (the caller draws with tensor operations).
pub fn sample_rows(
    logits: &Tensor,
    u: Option<&Tensor>,
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
) -> Option<Tensor> {
    let &[rows, n] = &logits.size()[..] else {
        return None;
    };
    let device = logits.device();
    if logits.kind() != Kind::Float
        || !matches!(device, Device::Cuda(_))
        || rows <= 0
        || n <= 0
        || !(temperature.is_finite() && temperature >= 0.0)
    {
        return None;
    }
    let random = temperature > 0.0;
    let u = match (random, u) {
        (false, _) => None,
        (true, Some(u))
            if u.kind() == Kind::Float && u.device() == device && u.numel() == rows as usize =>
        {
            Some(u.contiguous())
        }
        (true, _) => return None,
    };
    let kern = loaded(device)?;
    let logits = logits.contiguous();
    let out = Tensor::empty([rows, 1], (Kind::Int64, device));
    // k ≥ n keeps every token, as does p ≥ 1 (the kernel's "none").
    let k = top_k.map_or(0, |k| i32::try_from(k).unwrap_or(i32::MAX));
    let p = top_p.unwrap_or(1.0) as f32;
    let u_ptr = u.as_ref().map_or(0, ptr);
    launch(
        &kern,
        "sample_rows_f32".to_string(),
        usize::try_from(rows).ok()?,
        THREADS,
        &[
            &ptr(&logits),
            &u_ptr,
            &ptr(&out),
            &i32::try_from(n).ok()?,
            &(temperature as f32),
            &k,
            &p,
        ],
    )?;
    Some(out)
}
