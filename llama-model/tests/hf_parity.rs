//! Parity with Hugging Face transformers: fixtures written by `scripts/make_reference.py`
//! (random-weight `LlamaForCausalLM`, float64 reference logits, loss and gradients).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use llama_model::{CheckpointError, Llama, load_hf};
use safetensors::{Dtype, SafeTensors};

// bf16-gqa and f16-gqa store their weights in half precision; the reference uses the rounded weights.
const FIXTURES: [&str; 5] = [
    "mha-untied",
    "gqa-tied",
    "gqa-sharded",
    "bf16-gqa",
    "f16-gqa",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

struct Reference {
    tokens: Vec<i64>,
    shape: Vec<usize>,
    f64s: HashMap<String, Vec<f64>>,
}

fn reference(name: &str) -> Reference {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut f64s = HashMap::new();
    let (mut tokens, mut shape) = (vec![], vec![]);
    for (n, v) in st.tensors() {
        match v.dtype() {
            Dtype::I64 => {
                tokens = v
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                shape = v.shape().to_vec();
            }
            Dtype::F64 => {
                f64s.insert(
                    n,
                    v.data()
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                );
            }
            other => panic!("unexpected dtype {other:?}"),
        }
    }
    Reference {
        tokens,
        shape,
        f64s,
    }
}

fn rel_err(ours: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().fold(0f64, |m, x| m.max(x.abs()));
    ours.iter()
        .zip(reference)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()))
        / scale
}

/// `[in, out]` Burn weight gradient → row-major `[out, in]` as Hugging Face stores it.
fn hf_layout(g: Tensor<B, 2>) -> Vec<f32> {
    to_vec(g.transpose())
}

#[test]
fn imported_checkpoints_match_transformers_logits_loss_and_gradients() {
    for name in FIXTURES {
        let model: Llama<AB> = load_hf(&fixture(name), &dev()).unwrap();
        let r = reference(name);
        let tokens = Tensor::<AB, 2, Int>::from_data(
            TensorData::new(r.tokens.clone(), [r.shape[0], r.shape[1]]),
            &dev(),
        );

        let logits = to_vec(model.forward(tokens.clone()));
        let e = rel_err(&logits, &r.f64s["logits"]);
        eprintln!("{name}: logits relative error {e:.2e}");
        assert!(e <= 1e-5, "{name}: logits relative error {e:.2e}");

        let loss = model.loss(tokens);
        let l = loss.clone().into_scalar() as f64;
        let ref_loss = r.f64s["loss"][0];
        eprintln!(
            "{name}: loss {l} vs {ref_loss} (relative {:.2e})",
            (l - ref_loss).abs() / ref_loss
        );
        assert!(
            (l - ref_loss).abs() / ref_loss <= 1e-5,
            "{name}: loss {l} vs {ref_loss}"
        );

        let grads = loss.backward();
        let g2 = |t: &Tensor<AB, 2>| t.grad(&grads).unwrap();
        let g1 = |t: &Tensor<AB, 1>| to_vec(t.grad(&grads).unwrap());
        let mut ours: Vec<(String, Vec<f32>)> = vec![(
            "model.embed_tokens.weight".into(),
            to_vec(g2(&model.tok_embeddings.weight.val())),
        )];
        for (i, l) in model.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let a = &l.attention;
            ours.push((
                p("self_attn.q_proj.weight"),
                hf_layout(g2(&a.wq.weight.val())),
            ));
            ours.push((
                p("self_attn.k_proj.weight"),
                hf_layout(g2(&a.wk.weight.val())),
            ));
            ours.push((
                p("self_attn.v_proj.weight"),
                hf_layout(g2(&a.wv.weight.val())),
            ));
            ours.push((
                p("self_attn.o_proj.weight"),
                hf_layout(g2(&a.wo.weight.val())),
            ));
            let f = &l.feed_forward;
            ours.push((p("mlp.gate_proj.weight"), hf_layout(g2(&f.w1.weight.val()))));
            ours.push((
                p("mlp.up_proj.weight"),
                hf_layout(g2(&f.w3.as_ref().unwrap().weight.val())),
            ));
            ours.push((p("mlp.down_proj.weight"), hf_layout(g2(&f.w2.weight.val()))));
            for (n, norm) in [
                ("input_layernorm.weight", &l.attention_norm),
                ("post_attention_layernorm.weight", &l.ffn_norm),
            ] {
                let llama_model::norm::Norm::Rms(rms) = norm else {
                    panic!("RMSNorm expected")
                };
                ours.push((p(n), g1(&rms.gamma.val())));
            }
        }
        let Some(llama_model::norm::Norm::Rms(fin)) = &model.norm else {
            panic!("final RMSNorm expected")
        };
        ours.push(("model.norm.weight".into(), g1(&fin.gamma.val())));
        if let Some(out) = &model.output {
            ours.push(("lm_head.weight".into(), hf_layout(g2(&out.weight.val()))));
        }
        let n_ref = r.f64s.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(
            ours.len(),
            n_ref,
            "{name}: every parameter has a reference gradient"
        );
        let mut worst = 0f64;
        for (n, g) in &ours {
            let e = rel_err(g, &r.f64s[&format!("grad.{n}")]);
            worst = worst.max(e);
            assert!(e <= 1e-4, "{name}: gradient of {n} relative error {e:.2e}");
        }
        eprintln!(
            "{name}: worst gradient relative error {worst:.2e} over {} tensors",
            ours.len()
        );
    }
}

#[test]
fn both_config_styles_and_sharding_are_read() {
    let tied = load_hf::<B>(&fixture("gqa-tied"), &dev()).unwrap();
    let c = tied.config();
    assert!(c.tie_embeddings && tied.output.is_none());
    assert_eq!(
        (c.n_heads, c.kv_heads(), c.rope_theta, c.norm_eps),
        (6, 2, 500_000.0, 1e-5)
    );
    let sharded = load_hf::<B>(&fixture("gqa-sharded"), &dev()).unwrap();
    assert_eq!(sharded.config().rope_theta, 1_000_000.0);
    assert!(!sharded.config().tie_embeddings && sharded.output.is_some());
}

/// Copies a fixture to a temporary directory so a test can damage it.
fn scratch(name: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("llama-hf-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dst).ok();
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn checkpoints_that_do_not_fit_fail_with_one_clear_message() {
    // Unsupported RoPE scaling.
    let d = scratch("mha-untied", "rope");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    let cfg = cfg.replace("\"rope_type\": \"default\"", "\"rope_type\": \"llama3\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = load_hf::<B>(&d, &dev()).unwrap_err().to_string();
    assert!(e.contains("rope_type `llama3`"), "{e}");

    // A missing shard file, then a truncated one.
    let d = scratch("gqa-sharded", "shard");
    let mut shards: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("model-")
        })
        .collect();
    shards.sort();
    assert!(shards.len() > 2);
    let gone = shards.pop().unwrap();
    std::fs::remove_file(&gone).unwrap();
    let e = load_hf::<B>(&d, &dev()).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&*gone.file_name().unwrap().to_string_lossy()),
        "{e}"
    );
    let d = scratch("gqa-sharded", "trunc");
    let bytes = std::fs::read(&shards[0]).unwrap();
    let victim = d.join(shards[0].file_name().unwrap());
    std::fs::write(&victim, &bytes[..bytes.len() - 7]).unwrap();
    let e = load_hf::<B>(&d, &dev()).unwrap_err();
    assert!(matches!(e, CheckpointError::Safetensors { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&*victim.file_name().unwrap().to_string_lossy()),
        "{e}"
    );

    // A tensor the model does not use.
    let d = scratch("gqa-tied", "unused");
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = load_hf::<B>(&d, &dev()).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.1.") && e.contains("not used"),
        "{e}"
    );

    // Wrong config (a tensor of the wrong shape follows), and no checkpoint at all.
    let d = scratch("mha-untied", "shape");
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 64");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = load_hf::<B>(&d, &dev()).unwrap_err().to_string();
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("[96, 32]"),
        "{e}"
    );
    let e = load_hf::<B>(&std::env::temp_dir(), &dev())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn export_then_import_is_identical() {
    for name in FIXTURES {
        let model = load_hf::<B>(&fixture(name), &dev()).unwrap();
        let out = std::env::temp_dir().join(format!("llama-export-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&out).ok();
        llama_model::save_hf(&model, &out).unwrap();
        let again = load_hf::<B>(&out, &dev()).unwrap();
        assert_eq!(again.config(), model.config());
        let r = reference(name);
        let tokens = || {
            Tensor::<B, 2, Int>::from_data(
                TensorData::new(r.tokens.clone(), [r.shape[0], r.shape[1]]),
                &dev(),
            )
        };
        assert_eq!(
            to_vec(model.forward(tokens())),
            to_vec(again.forward(tokens())),
            "{name}"
        );
        // Refuses to overwrite, and refuses architectures without a Hugging Face layout.
        assert!(
            llama_model::save_hf(&model, &out)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
        // Keep one export for scripts/check_export.py (transformers loading it).
        match std::env::var_os("LLAMA_KEEP_EXPORT") {
            Some(keep) => {
                let keep = PathBuf::from(keep).join(name);
                std::fs::remove_dir_all(&keep).ok();
                std::fs::create_dir_all(keep.parent().unwrap()).unwrap();
                std::fs::rename(&out, keep).unwrap();
            }
            None => std::fs::remove_dir_all(&out).unwrap(),
        }
    }
    let gpt = llama_model::LlamaConfig {
        ffn: llama_model::FfnKind::Gelu,
        ..small(30)
    }
    .init::<B>(&dev())
    .unwrap();
    let e = llama_model::save_hf(&gpt, &std::env::temp_dir().join("never-written"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("only the LLaMA architecture"), "{e}");
}

#[test]
fn native_save_then_load_is_identical_and_checked() {
    let model = load_hf::<B>(&fixture("gqa-tied"), &dev()).unwrap();
    let dir = std::env::temp_dir().join(format!("llama-native-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    llama_model::save_native(&model, &dir).unwrap();
    let again = llama_model::load_native::<B>(&dir, &dev()).unwrap();
    let r = reference("gqa-tied");
    let tokens = || {
        Tensor::<B, 2, Int>::from_data(
            TensorData::new(r.tokens.clone(), [r.shape[0], r.shape[1]]),
            &dev(),
        )
    };
    assert_eq!(
        to_vec(model.forward(tokens())),
        to_vec(again.forward(tokens()))
    );
    assert!(
        llama_model::save_native(&model, &dir)
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );
    // A config that does not belong to the weights, and truncated weights.
    let cfg = std::fs::read_to_string(dir.join("llama.json"))
        .unwrap()
        .replace("\"ffn_hidden_dim\": 128", "\"ffn_hidden_dim\": 64");
    std::fs::write(dir.join("llama.json"), cfg).unwrap();
    assert!(llama_model::load_native::<B>(&dir, &dev()).is_err());
    let bytes = std::fs::read(dir.join("model.mpk")).unwrap();
    std::fs::write(dir.join("model.mpk"), &bytes[..bytes.len() / 3]).unwrap();
    let e = llama_model::load_native::<B>(&dir, &dev())
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.mpk"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Loading for bf16 inference (`load_hf_as`) makes the projection matrices bf16 as they are read,
/// each the f32 weight rounded to nearest even (torch's cast) bit for bit, for untied, tied,
/// sharded and bf16 checkpoints; embeddings and norms stay f32; and the model predicts what
/// loading in f32 and casting predicts. (Not bit for bit there: Flex's own f32-to-bf16 cast goes
/// through f64, and half 2.7's f64-to-bf16 drops the f64's low 32 bits before rounding, so an f32
/// just above a tie rounds as the tie: 0x3cd88003 to 0x3cd8 instead of 0x3cd9.)
#[test]
fn loading_straight_into_bf16_rounds_each_weight_once() {
    use burn::backend::Flex;
    use burn::tensor::DType;
    use llama_model::{Precision, load_hf_as};
    let fdev = Default::default();
    let bits = |t: Tensor<Flex, 2>| -> Vec<u16> {
        match t.dtype() {
            DType::BF16 => t.into_data().to_vec::<half::bf16>().unwrap(),
            _ => t
                .into_data()
                .to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(half::bf16::from_f32)
                .collect(),
        }
        .into_iter()
        .map(half::bf16::to_bits)
        .collect()
    };
    for name in ["mha-untied", "gqa-tied", "gqa-sharded", "bf16-gqa"] {
        let direct = load_hf_as::<Flex>(&fixture(name), &fdev, Some(DType::BF16)).unwrap();
        let f32s = load_hf::<Flex>(&fixture(name), &fdev).unwrap();
        assert_eq!(
            direct.tok_embeddings.weight.val().dtype(),
            DType::F32,
            "{name}"
        );
        assert_eq!(direct.output.is_some(), f32s.output.is_some(), "{name}");
        if let (Some(x), Some(y)) = (&direct.output, &f32s.output) {
            assert_eq!(x.weight.val().dtype(), DType::BF16, "{name}: head");
            assert_eq!(bits(x.weight.val()), bits(y.weight.val()), "{name}: head");
        }
        for (i, (x, y)) in direct.layers.iter().zip(&f32s.layers).enumerate() {
            let (ax, ay, fx, fy) = (&x.attention, &y.attention, &x.feed_forward, &y.feed_forward);
            let up = fx.w3.as_ref().zip(fy.w3.as_ref());
            for (what, p, q) in [
                ("wq", &ax.wq, &ay.wq),
                ("wk", &ax.wk, &ay.wk),
                ("wv", &ax.wv, &ay.wv),
                ("wo", &ax.wo, &ay.wo),
                ("w1", &fx.w1, &fy.w1),
                ("w2", &fx.w2, &fy.w2),
            ]
            .into_iter()
            .chain(up.map(|(p, q)| ("w3", p, q)))
            {
                let (p, q) = (p.weight.val(), q.weight.val());
                assert_eq!(p.dtype(), DType::BF16, "{name}: layer {i} {what}");
                assert_eq!(bits(p), bits(q), "{name}: layer {i} {what}");
            }
            let gamma = |n: &llama_model::norm::Norm<Flex>| match n {
                llama_model::norm::Norm::Rms(n) => n.gamma.val().dtype(),
                llama_model::norm::Norm::Layer(n) => n.gamma.val().dtype(),
            };
            assert_eq!(
                gamma(&x.attention_norm),
                DType::F32,
                "{name}: layer {i} norm"
            );
        }
        let ready = |m: Llama<Flex>| m.with_precision(Precision::Bf16).with_inference_weights();
        let (direct, cast) = (ready(direct), ready(f32s));
        let ids = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new((0..12i64).collect::<Vec<_>>(), [2, 6]),
            &fdev,
        );
        let logits = |m: &Llama<Flex>| -> Vec<f32> {
            m.forward(ids.clone())
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap()
        };
        let (a, b) = (logits(&direct), logits(&cast));
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 0.02 * scale,
            "{name}: logits {worst} apart (scale {scale})"
        );
        let argmax = |v: &[f32]| {
            v.chunks(v.len() / 12)
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .fold(0, |k, (j, x)| if *x > r[k] { j } else { k })
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(argmax(&a), argmax(&b), "{name}: predictions");
    }
}
