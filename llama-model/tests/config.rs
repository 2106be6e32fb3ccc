mod common;

use burn::module::Module;
use common::*;
use llama_model::{FfnKind, LlamaConfig, PRESETS, PositionKind};

#[test]
fn paper_presets_have_the_exact_parameter_counts() {
    // Touvron et al. (2023), Table 2, as counted by Meta's released checkpoints.
    for (name, params) in [
        ("llama-7b", 6_738_415_616u64),
        ("llama-13b", 13_015_864_320),
        ("llama-33b", 32_528_943_616),
        ("llama-65b", 65_285_660_672),
    ] {
        let c = LlamaConfig::preset(name).unwrap();
        c.validate().unwrap();
        assert_eq!(c.param_counts().total, params, "{name}");
    }
    let c = LlamaConfig::preset("llama-7b").unwrap();
    assert_eq!(
        (c.dim, c.n_heads, c.n_layers, c.vocab_size, c.max_seq_len),
        (4096, 32, 32, 32_000, 2048)
    );
    assert_eq!(c.ffn_hidden(), 11008);
    assert_eq!(
        LlamaConfig::preset("llama-65b").unwrap().ffn_hidden(),
        22016
    );
}

#[test]
fn every_preset_is_valid_and_small_presets_have_their_advertised_size() {
    for name in PRESETS {
        LlamaConfig::preset(name).unwrap().validate().unwrap();
    }
    let total = |n| LlamaConfig::preset(n).unwrap().param_counts().total;
    assert!(
        (1_000_000..=3_000_000).contains(&total("tiny")),
        "{}",
        total("tiny")
    );
    assert!(
        (20_000_000..=30_000_000).contains(&total("small")),
        "{}",
        total("small")
    );
    assert!((900_000_000..=1_200_000_000).contains(&total("1b")));
    let gpt = LlamaConfig::preset("gpt-style").unwrap();
    assert_eq!(gpt.ffn, FfnKind::Gelu);
    assert_eq!(gpt.position, PositionKind::Learned);
    assert!(
        LlamaConfig::preset("llama-8b")
            .unwrap_err()
            .to_string()
            .contains("llama-7b")
    );
}

#[test]
fn analytic_count_equals_instantiated_count_for_every_variant() {
    for cfg in all_variants(61) {
        let model = cfg.init::<B>(&dev()).unwrap();
        assert_eq!(
            model.num_params() as u64,
            cfg.param_counts().total,
            "{}",
            label(&cfg)
        );
    }
    // An explicit hidden size and a multiplier.
    for cfg in [
        LlamaConfig {
            ffn_hidden_dim: Some(40),
            ..small(50)
        },
        LlamaConfig {
            ffn_dim_multiplier: Some(1.3),
            ..small(50)
        },
    ] {
        let model = cfg.init::<B>(&dev()).unwrap();
        assert_eq!(model.num_params() as u64, cfg.param_counts().total);
    }
}

#[test]
fn non_gated_mlp_matches_swiglu_parameter_count() {
    let swiglu = LlamaConfig::preset("small").unwrap();
    let gelu = LlamaConfig {
        ffn: FfnKind::Gelu,
        ..swiglu.clone()
    };
    assert_eq!(swiglu.param_counts(), gelu.param_counts());
    assert_eq!(gelu.ffn_hidden(), 3 * swiglu.ffn_hidden() / 2);
    let explicit = LlamaConfig {
        ffn_hidden_dim: Some(100),
        ..gelu
    };
    assert_eq!(explicit.ffn_hidden(), 100);
}

#[test]
fn flops_per_token_follows_the_palm_formula() {
    let c = LlamaConfig::preset("llama-7b").unwrap();
    let n = c.param_counts().non_embedding;
    assert_eq!(n, 6_738_415_616 - 2 * 32_000 * 4096);
    assert_eq!(
        c.flops_per_token(),
        6 * (n + 32_000 * 4096) + 12 * 32 * 4096 * 2048
    );
}

#[test]
fn decode_bytes_count_every_matrix_once_and_the_visible_cache() {
    // 7B: 6,738,415,616 parameters (Hugging Face's count), two embedding-sized matrices of which
    // a decoded row reads the head whole and one row of the input table.
    let c = LlamaConfig::preset("llama-7b").unwrap();
    let matrices = 6_738_415_616 - 32_000 * 4096;
    let kv = 32 * 2 * 4096;
    assert_eq!(c.decode_bytes(1, 0, 2, 2), 2 * (matrices + 4096) + 2 * kv);
    assert_eq!(
        c.decode_bytes(4, 511, 2, 2),
        2 * (matrices + 4 * 4096) + 2 * 4 * kv * 512
    );
    // f32 weights with a bf16 cache.
    assert_eq!(c.decode_bytes(1, 0, 4, 2), 4 * (matrices + 4096) + 2 * kv);
    // `1b`: grouped-query attention (4 of 32 heads hold keys and values).
    let c = LlamaConfig::preset("1b").unwrap();
    let layer = 2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 5632 + 2 * 2048;
    let weights = 22 * layer + 2048 + 32_000 * 2048 + 2048;
    assert_eq!(
        c.decode_bytes(1, 539, 2, 2),
        2 * weights + 2 * 22 * 2 * 256 * 540
    );
    // About 2.08 GB, 0.43 ms at an H200's 4.8 TB/s.
    assert!((c.decode_bytes(1, 539, 2, 2) as f64 / 4.8e12 - 0.434e-3).abs() < 1e-5);
}

#[test]
fn invalid_combinations_are_rejected_with_a_clear_message() {
    let base = small(64);
    let cases = [
        (
            LlamaConfig {
                n_heads: 5,
                ..base.clone()
            },
            "not divisible by n_heads",
        ),
        (
            LlamaConfig {
                n_kv_heads: Some(3),
                ..base.clone()
            },
            "n_kv_heads",
        ),
        (
            LlamaConfig {
                n_kv_heads: Some(8),
                ..base.clone()
            },
            "n_kv_heads",
        ),
        (
            LlamaConfig {
                dim: 36,
                n_heads: 12,
                ..base.clone()
            },
            "even head_dim",
        ),
        (
            LlamaConfig {
                vocab_size: 0,
                ..base.clone()
            },
            "vocab_size",
        ),
        (
            LlamaConfig {
                norm_eps: 0.0,
                ..base.clone()
            },
            "norm_eps",
        ),
        (
            LlamaConfig {
                rope_theta: f64::NAN,
                ..base.clone()
            },
            "rope_theta",
        ),
        (
            LlamaConfig {
                ffn_dim_multiplier: Some(-1.0),
                ..base.clone()
            },
            "ffn_dim_multiplier",
        ),
    ];
    for (cfg, needle) in cases {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle}");
        assert!(cfg.init::<B>(&dev()).is_err());
    }
    // Odd head_dim is fine without RoPE.
    LlamaConfig {
        dim: 36,
        n_heads: 12,
        position: PositionKind::Learned,
        ..base
    }
    .validate()
    .unwrap();
}

#[test]
fn configs_round_trip_through_json_and_toml_files() {
    let dir = std::env::temp_dir().join(format!("llama-model-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cfg in all_variants(100).into_iter().step_by(7) {
        let json = dir.join("c.json");
        std::fs::write(&json, cfg.to_json()).unwrap();
        assert_eq!(LlamaConfig::from_file(&json).unwrap(), cfg);
        let toml = dir.join("c.toml");
        std::fs::write(&toml, cfg.to_toml()).unwrap();
        assert_eq!(LlamaConfig::from_file(&toml).unwrap(), cfg);
    }
    // Knobs default to LLaMA and accept readable spellings.
    let minimal = "vocab_size = 10\ndim = 8\nn_layers = 1\nn_heads = 2\nmax_seq_len = 16\nffn = \"gelu\"\nnorm = \"layernorm\"\n";
    std::fs::write(dir.join("m.toml"), minimal).unwrap();
    let c = LlamaConfig::from_file(&dir.join("m.toml")).unwrap();
    assert_eq!((c.ffn, c.position), (FfnKind::Gelu, PositionKind::Rope));
    std::fs::write(dir.join("bad.toml"), "dim = 8\nunknown_field = 1\n").unwrap();
    let err = LlamaConfig::from_file(&dir.join("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.toml"), "{err}");
    std::fs::write(
        dir.join("bad2.json"),
        "{\"vocab_size\": 10, \"dim\": 9, \"n_layers\": 1, \"n_heads\": 2, \"max_seq_len\": 4}",
    )
    .unwrap();
    assert!(
        LlamaConfig::from_file(&dir.join("bad2.json"))
            .unwrap_err()
            .to_string()
            .contains("divisible")
    );
    assert!(LlamaConfig::from_file(&dir.join("missing.toml")).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
