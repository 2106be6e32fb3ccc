//! Hugging Face LLaMA checkpoints: `config.json` + `model.safetensors`, or sharded
//! `model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`.
//!
//! Hugging Face stores q/k already permuted for "rotate half" RoPE, the layout of [`crate::position::Rope`],
//! so no permutation is needed; linear weights are `[out, in]` and are transposed to Burn's `[in, out]`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::config::LlamaConfig;
use crate::error::CheckpointError;
use crate::model::Llama;

/// Translates a Hugging Face `config.json` (transformers 4 or 5 style) into a [`LlamaConfig`].
pub fn config_from_hf(json: &Value, path: &Path) -> Result<LlamaConfig, CheckpointError> {
    let field = |k: &str| CheckpointError::Field {
        path: path.display().to_string(),
        field: k.to_string(),
    };
    let usize_of = |k: &str| {
        json.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| field(k))
    };
    let unsupported = |what: String| CheckpointError::Unsupported {
        path: path.display().to_string(),
        what,
    };
    if let Some(mt) = json.get("model_type").and_then(Value::as_str)
        && mt != "llama"
    {
        return Err(unsupported(format!("model_type `{mt}` (only `llama`)")));
    }
    if let Some(act) = json.get("hidden_act").and_then(Value::as_str)
        && act != "silu"
    {
        return Err(unsupported(format!("hidden_act `{act}` (only `silu`)")));
    }
    for bias in ["attention_bias", "mlp_bias"] {
        if json.get(bias).and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(format!("{bias} = true (LLaMA has no biases)")));
        }
    }
    // transformers 5: rope_parameters {rope_theta, rope_type}; transformers 4: rope_theta + rope_scaling.
    let rope = json.get("rope_parameters").filter(|v| !v.is_null());
    let rope_theta = rope
        .and_then(|r| r.get("rope_theta"))
        .or_else(|| json.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0);
    let rope_type = rope
        .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
        .or_else(|| {
            json.get("rope_scaling")
                .filter(|v| !v.is_null())
                .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        })
        .and_then(Value::as_str)
        .unwrap_or("default");
    if rope_type != "default" {
        return Err(unsupported(format!(
            "rope_type `{rope_type}` (only `default`: no RoPE scaling)"
        )));
    }
    let n_heads = usize_of("num_attention_heads")?;
    let dim = usize_of("hidden_size")?;
    let cfg = LlamaConfig {
        n_kv_heads: Some(
            json.get("num_key_value_heads")
                .and_then(Value::as_u64)
                .map_or(n_heads, |v| v as usize),
        ),
        ffn_hidden_dim: Some(usize_of("intermediate_size")?),
        norm_eps: json
            .get("rms_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-6),
        rope_theta,
        tie_embeddings: json
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ..LlamaConfig::llama(
            usize_of("vocab_size")?,
            dim,
            usize_of("num_hidden_layers")?,
            n_heads,
            usize_of("max_position_embeddings")?,
        )
    };
    if let Some(hd) = json.get("head_dim").and_then(Value::as_u64)
        && hd as usize != cfg.dim / cfg.n_heads
    {
        return Err(unsupported(format!(
            "head_dim {hd} != hidden_size / num_attention_heads"
        )));
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The weight files of a checkpoint directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`. Tensor names come from the files themselves, so a single file is
/// parsed once, when it is read.
fn weight_files(dir: &Path) -> Result<BTreeSet<PathBuf>, CheckpointError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| CheckpointError::Field {
                path: index.display().to_string(),
                field: "weight_map".into(),
            })?;
        Ok(map
            .values()
            .filter_map(|v| v.as_str().map(|f| dir.join(f)))
            .collect())
    } else if single.is_file() {
        Ok(BTreeSet::from([single]))
    } else {
        Err(CheckpointError::NotACheckpoint(dir.display().to_string()))
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Json {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A tensor read from a checkpoint, as f32 on the host.
pub(crate) struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A checkpoint's tensor, converted to f32 on the host only when the model takes it. Reading the
/// whole checkpoint into f32 first held twice a bf16 file's size on the host at once (27 GB for a
/// 7B model), beside the file's pages; on a GPU backend all of it only to be uploaded.
pub(crate) enum CheckpointTensor {
    Host(HostTensor),
    /// Bytes `range` of a memory-mapped safetensors file.
    Mapped {
        file: Arc<memmap2::Mmap>,
        range: Range<usize>,
        dtype: Dtype,
        shape: Vec<usize>,
    },
}

impl CheckpointTensor {
    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            Self::Host(t) => &t.shape,
            Self::Mapped { shape, .. } => shape,
        }
    }

    /// The tensor as f32 on the host.
    pub(crate) fn into_host(self, name: &str) -> Result<HostTensor, CheckpointError> {
        match self {
            Self::Host(t) => Ok(t),
            Self::Mapped {
                file,
                range,
                dtype,
                shape,
            } => {
                let data = to_f32(name, dtype, &file[range.clone()])?;
                // The file's pages of this tensor are not read again: dropped from memory now
                // rather than when the whole file is unmapped, so that a checkpoint's pages and
                // the model built from it are not both resident at the end of the import.
                #[cfg(unix)]
                // SAFETY: a read-only file mapping; nothing borrows these bytes any more (the data
                // was copied above), and a later read of them would fault them in from the file.
                let _ = unsafe {
                    file.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        range.start,
                        range.len(),
                    )
                };
                Ok(HostTensor { data, shape })
            }
        }
    }
}

fn to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, CheckpointError> {
    let chunks = |n: usize| bytes.chunks_exact(n);
    Ok(match dtype {
        Dtype::F32 => chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => chunks(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => chunks(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => {
            return Err(CheckpointError::Dtype {
                tensor: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

/// Every tensor of a Hugging Face checkpoint directory, file by file: the files memory-mapped
/// and their headers checked, the data left in place until taken.
pub(crate) fn read_tensors(
    dir: &Path,
) -> Result<BTreeMap<String, CheckpointTensor>, CheckpointError> {
    let mut out = BTreeMap::new();
    for path in weight_files(dir)? {
        let file = std::fs::File::open(&path).map_err(|e| CheckpointError::io(&path, e))?;
        // SAFETY: the file is opened read-only; a concurrent writer could change it under us, as with
        // every mmap-based checkpoint loader; safetensors validates the header.
        let mmap =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| CheckpointError::io(&path, e))?;
        let bad = |e: safetensors::SafeTensorError| CheckpointError::Safetensors {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        // `read_metadata` parses the header and checks that its offsets cover the data exactly
        // (what `deserialize` checks: it is this call and a slice); the offsets are relative to
        // the data, after the 8-byte length and the header.
        let (header, metadata) = SafeTensors::read_metadata(&mmap).map_err(bad)?;
        let file = Arc::new(mmap);
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            let tensor = CheckpointTensor::Mapped {
                file: file.clone(),
                range: 8 + header + start..8 + header + end,
                dtype: info.dtype,
                shape: info.shape.clone(),
            };
            out.insert(name, tensor);
        }
    }
    Ok(out)
}

/// Loads a Hugging Face LLaMA directory onto `device` (weights become the device's float dtype).
pub fn load_hf<B: Backend>(dir: &Path, device: &B::Device) -> Result<Llama<B>, CheckpointError> {
    load_hf_as(dir, device, None)
}

/// [`load_hf`] with the projection matrices (attention, feed-forward, an untied output head) made
/// in `weights` straight from the file, for inference in that dtype: what
/// `Llama::with_inference_weights` would cast them to, without an f32 copy of every matrix on the
/// device first (a bf16 7B model then loads in its 13.5 GB instead of peaking at 27 GB).
/// Embeddings and norms keep the device's float dtype, as there.
pub fn load_hf_as<B: Backend>(
    dir: &Path,
    device: &B::Device,
    weights: Option<DType>,
) -> Result<Llama<B>, CheckpointError> {
    let config_path = dir.join("config.json");
    let config = config_from_hf(&read_json(&config_path)?, &config_path)?;
    build_from_hf_tensors(&config, read_tensors(dir)?, device, weights)
}

/// Builds a model of `config` from tensors named and laid out as in Hugging Face checkpoints,
/// checking that every tensor is present, has its shape, and is used; the projection matrices in
/// `weights` where given ([`load_hf_as`]).
pub(crate) fn build_from_hf_tensors<B: Backend>(
    config: &LlamaConfig,
    mut tensors: BTreeMap<String, CheckpointTensor>,
    device: &B::Device,
    weights: Option<DType>,
) -> Result<Llama<B>, CheckpointError> {
    let mut model = config.init::<B>(device)?;
    // Linear weights are `[out, in]` in the file and `[in, out]` here: transposed, and made in
    // `weights` where given.
    let mut take = |name: String,
                    shape: [usize; 2],
                    transpose: bool|
     -> Result<Tensor<B, 2>, CheckpointError> {
        let t = tensors
            .remove(&name)
            .ok_or_else(|| CheckpointError::Missing(name.clone()))?;
        let is_vector = shape[0] == 1;
        if t.shape() != shape && !(is_vector && t.shape() == [shape[1]]) {
            return Err(CheckpointError::Shape {
                tensor: name,
                expected: if is_vector {
                    vec![shape[1]]
                } else {
                    shape.to_vec()
                },
                found: t.shape().to_vec(),
            });
        }
        let t = t.into_host(&name)?;
        let (data, dims) = if transpose {
            (transpose_2d(&t.data, shape), [shape[1], shape[0]])
        } else {
            (t.data, shape)
        };
        let data = TensorData::new(data, dims);
        Ok(match (transpose, weights) {
            (true, Some(dtype)) => Tensor::from_data(data, (device, dtype)),
            _ => Tensor::from_data(data, device),
        })
    };
    let (d, v, h) = (config.dim, config.vocab_size, config.ffn_hidden());
    let (q, kv) = (
        config.n_heads * config.head_dim(),
        config.kv_heads() * config.head_dim(),
    );
    model.tok_embeddings.weight =
        Param::from_tensor(take("model.embed_tokens.weight".into(), [v, d], false)?);
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let a = &mut layer.attention;
        a.wq.weight = Param::from_tensor(take(p("self_attn.q_proj.weight"), [q, d], true)?);
        a.wk.weight = Param::from_tensor(take(p("self_attn.k_proj.weight"), [kv, d], true)?);
        a.wv.weight = Param::from_tensor(take(p("self_attn.v_proj.weight"), [kv, d], true)?);
        a.wo.weight = Param::from_tensor(take(p("self_attn.o_proj.weight"), [d, q], true)?);
        let f = &mut layer.feed_forward;
        f.w1.weight = Param::from_tensor(take(p("mlp.gate_proj.weight"), [h, d], true)?);
        if let Some(w3) = f.w3.as_mut() {
            w3.weight = Param::from_tensor(take(p("mlp.up_proj.weight"), [h, d], true)?);
        }
        f.w2.weight = Param::from_tensor(take(p("mlp.down_proj.weight"), [d, h], true)?);
        set_norm(
            &mut layer.attention_norm,
            take(p("input_layernorm.weight"), [1, d], false)?,
        );
        set_norm(
            &mut layer.ffn_norm,
            take(p("post_attention_layernorm.weight"), [1, d], false)?,
        );
    }
    if let Some(norm) = model.norm.as_mut() {
        set_norm(norm, take("model.norm.weight".into(), [1, d], false)?);
    }
    if let Some(out) = model.output.as_mut() {
        out.weight = Param::from_tensor(take("lm_head.weight".into(), [v, d], true)?);
    }
    // Tied checkpoints may still carry lm_head; old transformers saved rotary inv_freq buffers.
    let ignored = |name: &str| {
        name.ends_with("rotary_emb.inv_freq") || (config.tie_embeddings && name == "lm_head.weight")
    };
    tensors.retain(|name, _| !ignored(name));
    if let Some(name) = tensors.keys().next() {
        return Err(CheckpointError::Unused(name.clone()));
    }
    Ok(model)
}

/// Norm weights are `[d]` in checkpoints; `take` reads them as `[1, d]` so one helper checks shapes.
fn set_norm<B: Backend>(norm: &mut crate::norm::Norm<B>, w: Tensor<B, 2>) {
    let d = w.dims()[1];
    let w = w.reshape([d]);
    match norm {
        crate::norm::Norm::Rms(n) => n.gamma = Param::from_tensor(w),
        crate::norm::Norm::Layer(n) => n.gamma = Param::from_tensor(w),
    }
}

/// Row-major `[r, c]` → `[c, r]`.
pub(crate) fn transpose_2d(data: &[f32], [r, c]: [usize; 2]) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = data[i * c + j];
        }
    }
    out
}

/// Writes `model` as a Hugging Face LLaMA directory (`config.json` + f32 `model.safetensors`) that
/// transformers loads with `LlamaForCausalLM.from_pretrained`. Only the LLaMA architecture (pre-RMSNorm,
/// SwiGLU, RoPE) has a Hugging Face counterpart. The directory is written beside `dir` and renamed into
/// place, so a failed export never leaves a directory that looks complete; `dir` must not exist.
pub fn save_hf<B: Backend>(model: &Llama<B>, dir: &Path) -> Result<(), CheckpointError> {
    use crate::knobs::{FfnKind, NormKind, NormPlacement, PositionKind};
    let c = model.config();
    if (c.norm, c.norm_placement, c.ffn, c.position)
        != (
            NormKind::RmsNorm,
            NormPlacement::Pre,
            FfnKind::Swiglu,
            PositionKind::Rope,
        )
    {
        return Err(CheckpointError::Export(format!(
            "only the LLaMA architecture has a Hugging Face layout (this model: {:?}, {:?}, {:?}, {:?})",
            c.norm, c.norm_placement, c.ffn, c.position
        )));
    }
    if dir.exists() {
        return Err(CheckpointError::Export(format!(
            "{} already exists",
            dir.display()
        )));
    }
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_hidden(),
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads(),
        "head_dim": c.head_dim(),
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": c.tie_embeddings,
        // Both spellings: transformers 5 reads rope_parameters, transformers 4 rope_theta.
        "rope_theta": c.rope_theta,
        "rope_scaling": null,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "torch_dtype": "float32",
        "dtype": "float32",
    });
    let host = F32View::matrix;
    let vector = F32View::vector;
    let gamma = |n: &crate::norm::Norm<B>| match n {
        crate::norm::Norm::Rms(n) => vector(n.gamma.val()),
        crate::norm::Norm::Layer(n) => vector(n.gamma.val()),
    };
    let mut tensors: Vec<(String, F32View<B>)> = vec![(
        "model.embed_tokens.weight".into(),
        host(model.tok_embeddings.weight.val(), false),
    )];
    for (i, l) in model.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let a = &l.attention;
        tensors.push((p("self_attn.q_proj.weight"), host(a.wq.weight.val(), true)));
        tensors.push((p("self_attn.k_proj.weight"), host(a.wk.weight.val(), true)));
        tensors.push((p("self_attn.v_proj.weight"), host(a.wv.weight.val(), true)));
        tensors.push((p("self_attn.o_proj.weight"), host(a.wo.weight.val(), true)));
        let f = &l.feed_forward;
        tensors.push((p("mlp.gate_proj.weight"), host(f.w1.weight.val(), true)));
        if let Some(w3) = &f.w3 {
            tensors.push((p("mlp.up_proj.weight"), host(w3.weight.val(), true)));
        }
        tensors.push((p("mlp.down_proj.weight"), host(f.w2.weight.val(), true)));
        tensors.push((p("input_layernorm.weight"), gamma(&l.attention_norm)));
        tensors.push((p("post_attention_layernorm.weight"), gamma(&l.ffn_norm)));
    }
    if let Some(n) = &model.norm {
        tensors.push(("model.norm.weight".into(), gamma(n)));
    }
    if let Some(out) = &model.output {
        tensors.push(("lm_head.weight".into(), host(out.weight.val(), true)));
    }
    // transformers refuses safetensors files without format metadata.
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));

    crate::native::write_dir_atomically(dir, |tmp| {
        // One tensor at a time is read back from the device and converted as it is written
        // (`F32View`), so the export needs the model and one tensor's copy, not the whole file.
        safetensors::tensor::serialize_to_file(tensors, metadata, &tmp.join("model.safetensors"))
            .map_err(std::io::Error::other)?;
        std::fs::write(
            tmp.join("config.json"),
            serde_json::to_string_pretty(&config).expect("json"),
        )
    })
}

/// A model tensor written to safetensors as f32 in `shape` (`[r, k]` as it is, or transposed to
/// `[k, r]`; a vector as `[d]`), read back from the device only when the writer asks for its
/// bytes.
struct F32View<B: Backend> {
    tensor: Tensor<B, 2>,
    transpose: bool,
    shape: Vec<usize>,
}

impl<B: Backend> F32View<B> {
    fn matrix(tensor: Tensor<B, 2>, transpose: bool) -> Self {
        let [r, k] = tensor.dims();
        let shape = match transpose {
            true => vec![k, r],
            false => vec![r, k],
        };
        Self {
            tensor,
            transpose,
            shape,
        }
    }

    fn vector(tensor: Tensor<B, 1>) -> Self {
        Self {
            shape: tensor.dims().to_vec(),
            tensor: tensor.unsqueeze::<2>(),
            transpose: false,
        }
    }
}

impl<B: Backend> safetensors::View for F32View<B> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let [r, k] = self.tensor.dims();
        let data = self
            .tensor
            .clone()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32");
        let data = match self.transpose {
            true => transpose_2d(&data, [r, k]),
            false => data,
        };
        data.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}
