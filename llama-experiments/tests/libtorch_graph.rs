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
use burn::tensor::backend::{AutodiffBackend, Backend};
use llama_experiments::backend::{BackendJob, DeviceSpec};
use llama_experiments::decoder::{decoder_for, has_cuda_graphs};
use llama_model::{
    Decoder, EagerDecoder, KvCache, Llama, LlamaConfig, Precision, Sampling, StepInput,
    generate_with,
};

#[test]
fn the_graph_shim_is_built_with_a_cuda_libtorch() {
    if std::env::var_os("LLAMA_REQUIRE_CUDA_GRAPHS").is_some() {
        assert!(
            has_cuda_graphs(),
            "LLAMA_REQUIRE_CUDA_GRAPHS is set but the binary was built without CUDA graphs"
        );
    }
    // On the CPU the eager decoder runs, whatever the binary has.
    let d = decoder_for::<LibTorch>(&LibTorchDevice::Cpu).unwrap();
    assert_eq!(d.name(), "eager");
}

/// Records each step's logits (on the host) of the decoder it wraps.
struct Recording<'a, B: Backend> {
    inner: &'a mut dyn Decoder<B>,
    logits: Vec<Vec<f32>>,
}

impl<B: Backend> Decoder<B> for Recording<'_, B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn step(
        &mut self,
        model: &Llama<B>,
        cache: &mut KvCache<B>,
        input: StepInput<'_>,
    ) -> Tensor<B, 2> {
        let out = self.inner.step(model, cache, input);
        let host = out.clone().into_data().convert::<f32>().into_vec().unwrap();
        self.logits.push(host);
        out
    }
}

fn run<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    decoder: &mut dyn Decoder<B>,
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

/// Run through `DeviceSpec::run`, as the `llama` tool does: the tool's libtorch operations (the
/// fused kernels' forward passes among them) are registered, so the recorded step is the one
/// `llama generate` replays.
struct GraphVsEager;

impl BackendJob for GraphVsEager {
    type Output = ();
    fn run<AB: AutodiffBackend>(self, device: AB::Device) {
        type B<AB> = <AB as AutodiffBackend>::InnerBackend;
        let cfg = LlamaConfig {
            n_kv_heads: Some(2),
            ..LlamaConfig::preset("tiny").unwrap()
        };
        let padded = [vec![3, 14, 15, 92], vec![65, 35], vec![8, 9, 7, 9, 3, 2, 3]];
        for precision in Precision::ALL {
            let model = cfg
                .init::<B<AB>>(&device)
                .unwrap()
                .with_precision(precision)
                .with_inference_weights();
            let mut graph = decoder_for::<B<AB>>(&device).unwrap();
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
                    // Attention over the capacity (masked) against the filled prefix: the same
                    // sums up to cuBLAS's choice of algorithm and one bf16 rounding.
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
}

#[test]
fn graph_decoding_matches_eager_decoding() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: torch sees no CUDA device");
        return;
    }
    assert!(has_cuda_graphs(), "a CUDA libtorch but no graph shim");
    DeviceSpec::TchCuda(0).run(GraphVsEager).unwrap();
}
