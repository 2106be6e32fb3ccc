//! Decoding as CUDA graphs (`cuda_graph`): the replayed static step gives the eager cached
//! pass's logits and tokens (f32 and bf16, padded batches, grouped-query attention), records again for a new
//! cache, and `decoder_for` picks it on libtorch CUDA only.
//!
//! Needs `--features tch`; the GPU checks skip (saying so) where torch sees no GPU.
//! `LLAMA_REQUIRE_CUDA_GRAPHS=1` (CI) makes a binary built without the graph shim a failure.
#![cfg(feature = "tch")]

use burn::backend::LibTorch;
use burn::backend::libtorch::LibTorchDevice;
use burn::tensor::Tensor;
use llama_experiments::decoder::{HAS_CUDA_GRAPHS, decoder_for};
use llama_model::{
    Decoder, EagerDecoder, KvCache, Llama, LlamaConfig, Precision, Sampling, StepInput,
    generate_with,
};

#[test]
fn the_graph_shim_is_built_with_a_cuda_libtorch() {
    if std::env::var_os("LLAMA_REQUIRE_CUDA_GRAPHS").is_some() {
        assert!(
            HAS_CUDA_GRAPHS,
            "LLAMA_REQUIRE_CUDA_GRAPHS is set but the binary was built without CUDA graphs"
        );
    }
    // On the CPU the eager decoder runs, whatever the binary has.
    let d = decoder_for::<LibTorch>(&LibTorchDevice::Cpu).unwrap();
    assert_eq!(d.name(), "eager");
}

/// Records each step's logits (on the host) of the decoder it wraps.
struct Recording<'a> {
    inner: &'a mut dyn Decoder<LibTorch>,
    logits: Vec<Vec<f32>>,
}

impl Decoder<LibTorch> for Recording<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn step(
        &mut self,
        model: &Llama<LibTorch>,
        cache: &mut KvCache<LibTorch>,
        input: StepInput<'_>,
    ) -> Tensor<LibTorch, 2> {
        let out = self.inner.step(model, cache, input);
        let host = out.clone().into_data().convert::<f32>().into_vec().unwrap();
        self.logits.push(host);
        out
    }
}

fn run(
    model: &Llama<LibTorch>,
    prompts: &[Vec<u32>],
    decoder: &mut dyn Decoder<LibTorch>,
) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let sampling = Sampling {
        max_new_tokens: 12,
        temperature: 1.0,
        seed: 5,
        ..Default::default()
    };
    let mut rec = Recording {
        inner: decoder,
        logits: Vec::new(),
    };
    let out = generate_with(model, prompts, &sampling, &mut rec).unwrap();
    (out, rec.logits)
}

#[test]
fn graph_decoding_matches_eager_decoding() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: torch sees no CUDA device");
        return;
    }
    assert!(HAS_CUDA_GRAPHS, "a CUDA libtorch but no graph shim");
    let device = LibTorchDevice::Cuda(0);
    let cfg = LlamaConfig {
        n_kv_heads: Some(2),
        ..LlamaConfig::preset("tiny").unwrap()
    };
    let padded = vec![vec![3, 14, 15, 92], vec![65, 35], vec![8, 9, 7, 9, 3, 2, 3]];
    for precision in Precision::ALL {
        let model = cfg
            .init::<LibTorch>(&device)
            .unwrap()
            .with_precision(precision)
            .with_inference_weights();
        let mut graph = decoder_for::<LibTorch>(&device).unwrap();
        assert_eq!(graph.name(), "cuda-graph");
        // Twice with one decoder: the second generation has a new cache, so it records again.
        for prompts in [&padded[..], &padded[..], &padded[2..]] {
            let (want_ids, want) = run(&model, prompts, &mut EagerDecoder);
            let (ids, got) = run(&model, prompts, graph.as_mut());
            assert_eq!(ids, want_ids, "{precision:?}");
            assert_eq!(got.len(), 11);
            for (g, w) in got.iter().zip(&want) {
                let scale = w.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
                let err = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                // Attention over the capacity (masked) against the filled prefix: the same sums
                // up to cuBLAS's choice of algorithm and one bf16 rounding.
                let bound = if precision == Precision::F32 {
                    1e-4
                } else {
                    2e-2
                };
                assert!(err / scale < bound, "{precision:?}: rel {}", err / scale);
            }
        }
    }
}
