//! Meta's original LLaMA layout: `params.json` + `consolidated.NN.pth` (one file per model-parallel
//! rank). Pickles are parsed by burn-store's PyTorch reader, which never executes pickled code.
//!
//! Meta rotates interleaved pairs `(2i, 2i+1)` in RoPE while [`crate::position::Rope`] rotates halves
//! (`i`, `i + hd/2`), so the rows of `wq` and `wk` are permuted per head on import, as transformers'
//! `convert_llama_weights_to_hf.py` does. The tensors are then renamed to the Hugging Face layout and
//! loaded by the same code as Hugging Face checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn_store::pytorch::PytorchReader;
use serde_json::Value;

use crate::config::LlamaConfig;
use crate::error::CheckpointError;
use crate::hf::{CheckpointTensor, HostTensor, build_from_hf_tensors, read_json};
use crate::model::Llama;

/// Context length of LLaMA 1 (params.json does not record it).
pub const META_MAX_SEQ_LEN: usize = 2048;

fn consolidated_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CheckpointError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with("consolidated.") && n.ends_with(".pth")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CheckpointError::NotACheckpoint(dir.display().to_string()));
    }
    Ok(files)
}

fn read_pth(path: &Path) -> Result<BTreeMap<String, HostTensor>, CheckpointError> {
    let bad = |message: String| CheckpointError::Pytorch {
        path: path.display().to_string(),
        message,
    };
    let reader = PytorchReader::new(path).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, snap) in reader.into_tensors() {
        let data = snap
            .to_data()
            .map_err(|e| bad(format!("tensor `{name}`: {e:?}")))?;
        let shape = data.shape.clone().to_vec();
        let data = data
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| CheckpointError::Dtype {
                tensor: name.clone(),
                dtype: format!("{e:?}"),
            })?;
        out.insert(name, HostTensor { shape, data });
    }
    Ok(out)
}

/// Concatenates model-parallel shards of one tensor along `axis` (0 or 1) of a 2-D tensor.
fn concat(name: &str, parts: Vec<HostTensor>, axis: usize) -> Result<HostTensor, CheckpointError> {
    let first = &parts[0].shape;
    if first.len() != 2
        || parts
            .iter()
            .any(|p| p.shape.len() != 2 || p.shape[1 - axis] != first[1 - axis])
    {
        return Err(CheckpointError::Shape {
            tensor: name.to_string(),
            expected: first.clone(),
            found: parts
                .iter()
                .find(|p| p.shape != *first)
                .map_or(vec![], |p| p.shape.clone()),
        });
    }
    let rows: usize = if axis == 0 {
        parts.iter().map(|p| p.shape[0]).sum()
    } else {
        first[0]
    };
    let cols: usize = if axis == 1 {
        parts.iter().map(|p| p.shape[1]).sum()
    } else {
        first[1]
    };
    let mut data = Vec::with_capacity(rows * cols);
    if axis == 0 {
        parts.into_iter().for_each(|p| data.extend(p.data));
    } else {
        for r in 0..rows {
            for p in &parts {
                let c = p.shape[1];
                data.extend_from_slice(&p.data[r * c..(r + 1) * c]);
            }
        }
    }
    Ok(HostTensor {
        shape: vec![rows, cols],
        data,
    })
}

/// Interleaved-pair rows (Meta) → rotate-half rows (Hugging Face), per head: within each head, row
/// `2i + j` moves to `j · hd/2 + i`.
fn permute_rotary(t: HostTensor, n_heads: usize) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0f32; t.data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    HostTensor {
        shape: t.shape,
        data: out,
    }
}

/// Loads a Meta LLaMA directory onto `device`.
pub fn load_meta<B: Backend>(dir: &Path, device: &B::Device) -> Result<Llama<B>, CheckpointError> {
    load_meta_as(dir, device, None)
}

/// [`load_meta`] with the projection matrices made in `weights` (see [`crate::hf::load_hf_as`]).
pub fn load_meta_as<B: Backend>(
    dir: &Path,
    device: &B::Device,
    weights: Option<burn::tensor::DType>,
) -> Result<Llama<B>, CheckpointError> {
    let params_path = dir.join("params.json");
    let params = read_json(&params_path)?;
    let field = |k: &str| CheckpointError::Field {
        path: params_path.display().to_string(),
        field: k.to_string(),
    };
    let get = |k: &str| params.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let (dim, n_heads, n_layers) = (
        get("dim").ok_or_else(|| field("dim"))?,
        get("n_heads").ok_or_else(|| field("n_heads"))?,
        get("n_layers").ok_or_else(|| field("n_layers"))?,
    );
    let n_kv = get("n_kv_heads").unwrap_or(n_heads);

    // Read every rank, then merge shards: column-parallel weights split the output dimension
    // (rows), row-parallel ones the input dimension (columns); norms are replicated.
    let mut shards: BTreeMap<String, Vec<HostTensor>> = BTreeMap::new();
    for f in consolidated_files(dir)? {
        for (name, t) in read_pth(&f)? {
            shards.entry(name).or_default().push(t);
        }
    }
    let mut meta = BTreeMap::new();
    for (name, mut parts) in shards {
        let t = if parts.len() == 1 || name.ends_with("norm.weight") || name == "rope.freqs" {
            parts.swap_remove(0)
        } else if ["wo.weight", "w2.weight", "tok_embeddings.weight"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            concat(&name, parts, 1)?
        } else {
            concat(&name, parts, 0)?
        };
        meta.insert(name, t);
    }
    let emb = meta
        .get("tok_embeddings.weight")
        .ok_or_else(|| CheckpointError::Missing("tok_embeddings.weight".into()))?;
    // LLaMA 1's params.json says vocab_size -1: the embedding's shape is the truth.
    let vocab_size = emb.shape[0];
    let hidden = meta
        .get("layers.0.feed_forward.w1.weight")
        .map(|t| t.shape[0])
        .ok_or_else(|| CheckpointError::Missing("layers.0.feed_forward.w1.weight".into()))?;
    let config = LlamaConfig {
        n_kv_heads: Some(n_kv),
        ffn_hidden_dim: Some(hidden),
        norm_eps: params
            .get("norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-6),
        rope_theta: params
            .get("rope_theta")
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0),
        tie_embeddings: !meta.contains_key("output.weight"),
        ..LlamaConfig::llama(vocab_size, dim, n_layers, n_heads, META_MAX_SEQ_LEN)
    };
    config.validate()?;

    let mut hf = BTreeMap::new();
    for (name, t) in meta {
        if name == "rope.freqs" {
            continue; // a buffer, recomputed from rope_theta
        }
        let renamed = match name.as_str() {
            "tok_embeddings.weight" => "model.embed_tokens.weight".to_string(),
            "norm.weight" => "model.norm.weight".to_string(),
            "output.weight" => "lm_head.weight".to_string(),
            other => match other
                .strip_prefix("layers.")
                .and_then(|r| r.split_once('.'))
            {
                Some((i, rest)) => {
                    let hf_rest = match rest {
                        "attention.wq.weight" => "self_attn.q_proj.weight",
                        "attention.wk.weight" => "self_attn.k_proj.weight",
                        "attention.wv.weight" => "self_attn.v_proj.weight",
                        "attention.wo.weight" => "self_attn.o_proj.weight",
                        "feed_forward.w1.weight" => "mlp.gate_proj.weight",
                        "feed_forward.w3.weight" => "mlp.up_proj.weight",
                        "feed_forward.w2.weight" => "mlp.down_proj.weight",
                        "attention_norm.weight" => "input_layernorm.weight",
                        "ffn_norm.weight" => "post_attention_layernorm.weight",
                        _ => return Err(CheckpointError::Unused(name)),
                    };
                    format!("model.layers.{i}.{hf_rest}")
                }
                None => return Err(CheckpointError::Unused(name)),
            },
        };
        let t = if renamed.ends_with("q_proj.weight") && t.shape.len() == 2 {
            permute_rotary(t, n_heads)
        } else if renamed.ends_with("k_proj.weight") && t.shape.len() == 2 {
            permute_rotary(t, n_kv)
        } else {
            t
        };
        hf.insert(renamed, CheckpointTensor::Host(t));
    }
    build_from_hf_tensors(&config, hf, device, weights)
}
