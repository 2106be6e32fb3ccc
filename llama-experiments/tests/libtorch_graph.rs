//! Decoding as CUDA graphs (`cuda_graph`): the replayed static step gives the eager cached
//! pass's logits on the same tokens (f32 and bf16, padded batches, grouped-query attention),
//! records again for a new cache and repeats itself bit for bit, and `decoder_for` picks it on
//! libtorch CUDA only; one row decoded token by token gives the full causal pass's logits.
//!
//! Needs `--features tch`; the GPU checks skip (saying so) where torch sees no GPU.
//! `LLAMA_REQUIRE_CUDA_GRAPHS=1` (CI) makes a binary built without the graph shim a failure.
#![cfg(feature = "tch")]

use burn::backend::LibTorch;
use burn::backend::libtorch::LibTorchDevice;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use llama_experiments::backend::{BackendJob, DeviceSpec};
use llama_experiments::decoder::{decoder_for, has_cuda_graphs};
use llama_model::{
    Decoder, EagerDecoder, KvCache, Llama, LlamaConfig, Precision, Sampling, StepInput, StepTokens,
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

/// Records each step's logits (on the host) of the decoder it wraps and, when `forced` holds
/// another decoding's tokens, returns logits that make the sampler draw those instead: every
/// step then sees the same inputs as in that decoding, so the two are compared step for step
/// whatever a rounding does to a draw at temperature 1.
struct Recording<'a, B: Backend> {
    inner: &'a mut dyn Decoder<B>,
    logits: Vec<Vec<f32>>,
    forced: Option<&'a [Vec<u32>]>,
}

impl<B: Backend> Decoder<B> for Recording<'_, B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn step(
        &mut self,
        model: &Llama<B>,
        cache: &mut KvCache<B>,
        input: StepInput<'_, B>,
    ) -> Tensor<B, 2> {
        let out = self.inner.step(model, cache, input);
        let [b, vocab] = out.dims();
        let host = out.clone().into_data().convert::<f32>().into_vec().unwrap();
        self.logits.push(host);
        let Some(forced) = self.forced else {
            return out;
        };
        // Step `t` draws each row's token `t + 1`: a logit of 1e4 against 0 elsewhere gives it
        // probability 1 (exp(-1e4) is 0 in f32).
        let t = self.logits.len();
        let mut one_hot = vec![0f32; b * vocab];
        for (r, ids) in forced.iter().enumerate() {
            one_hot[r * vocab + ids[t] as usize] = 1e4;
        }
        Tensor::from_data(TensorData::new(one_hot, [b, vocab]), &out.device())
    }
}

/// `tiny` with grouped-query attention (two key/value heads).
fn tiny_gqa() -> LlamaConfig {
    LlamaConfig {
        n_kv_heads: Some(2),
        ..LlamaConfig::preset("tiny").unwrap()
    }
}

/// A new `cfg` model stored for inference in `precision`.
fn inference_model<B: Backend>(
    cfg: &LlamaConfig,
    precision: Precision,
    device: &B::Device,
) -> Llama<B> {
    cfg.init::<B>(device)
        .unwrap()
        .with_precision(precision)
        .with_inference_weights()
}

/// The largest difference between `got` and `want`, relative to `want`'s largest value.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    err / scale
}

/// Logits of two decodings of the same tokens agree within this ([`rel_err`]): f32 rounding, or
/// about one bf16 rounding.
fn bound(precision: Precision) -> f32 {
    if precision == Precision::F32 {
        1e-4
    } else {
        2e-2
    }
}

/// A decoding's tokens per row/// A decoding's tokens per row and each decoder step's logits.
type Decoding = (Vec<Vec<u32>>, Vec<Vec<f32>>);

/// Generates 12 tokens at temperature 1 (or draws `forced`'s), returning the tokens and each
/// decoder step's logits.
fn run<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    decoder: &mut dyn Decoder<B>,
    forced: Option<&[Vec<u32>]>,
) -> Decoding {
    let sampling = Sampling {
        max_new_tokens: 12,
        temperature: 1.0,
        seed: 5,
        ..Default::default()
    };
    let mut rec = Recording {
        inner: decoder,
        logits: Vec::new(),
        forced,
    };
    let out = generate_with(model, prompts, &sampling, &mut rec).unwrap();
    (out, rec.logits)
}

/// Run through `DeviceSpec::run`, as the `llama` tool does: the tool's libtorch operations (the
/// fused kernels' forward passes among them) are registered, so the recorded step is the one
/// `llama generate` replays.
///
/// The replayed graph draws its own tokens; the eager decoder is then forced to the same ones
/// (the prefill, the same code in both, draws the first), so each step's logits are compared
/// on the same inputs. Sampled ids are not compared across the two: at temperature 1 a bf16
/// rounding of another summation order may move a draw (session 24 saw one such failure). A
/// second generation with the same prompts records the graph again and must repeat the first
/// bit for bit: a race in a kernel (the slot write against a read) would show there.
struct GraphVsEager;

impl BackendJob for GraphVsEager {
    type Output = ();
    fn run<AB: AutodiffBackend>(self, device: AB::Device) {
        type B<AB> = <AB as AutodiffBackend>::InnerBackend;
        let cfg = tiny_gqa();
        let padded = [vec![3, 14, 15, 92], vec![65, 35], vec![8, 9, 7, 9, 3, 2, 3]];
        for precision in Precision::ALL {
            let model = inference_model::<B<AB>>(&cfg, precision, &device);
            let mut graph = decoder_for::<B<AB>>(&device).unwrap();
            assert_eq!(graph.name(), "cuda-graph");
            let mut runs: Vec<Decoding> = Vec::new();
            // Twice with one decoder: the second generation has a new cache, so it records again.
            for prompts in [&padded[..], &padded[..], &padded[2..]] {
                let (ids, got) = run(&model, prompts, graph.as_mut(), None);
                let (eager_ids, want) = run(&model, prompts, &mut EagerDecoder, Some(&ids));
                assert_eq!(
                    eager_ids, ids,
                    "{precision:?}: the eager decoding was not forced"
                );
                assert_eq!(got.len(), 11);
                assert_eq!(want.len(), 11);
                for (g, w) in got.iter().zip(&want) {
                    // Attention over the capacity (masked) against the filled prefix: the same
                    // sums up to cuBLAS's choice of algorithm and one bf16 rounding.
                    let err = rel_err(g, w);
                    assert!(err < bound(precision), "{precision:?}: rel {err}");
                }
                runs.push((ids, got));
            }
            // The same prompts twice: the second recording repeats the first bit for bit.
            assert_eq!(
                runs[1].0, runs[0].0,
                "{precision:?}: a second recording drew others"
            );
            assert!(
                runs[1].1 == runs[0].1,
                "{precision:?}: a second recording's logits differ from the first's"
            );
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

/// A row decoded one token at a time (the eager cached pass) against the full causal pass over
/// the same tokens, on the tool's libtorch operations: decoding's own kernels (the one-row
/// products, the residual update with the next norm, the rotation, slot write and attention in
/// one) against the ten-row forms. f32 and bf16, grouped-query attention.
struct OneRowVsFullPass;

impl BackendJob for OneRowVsFullPass {
    type Output = ();
    fn run<AB: AutodiffBackend>(self, device: AB::Device) {
        type B<AB> = <AB as AutodiffBackend>::InnerBackend;
        let cfg = tiny_gqa();
        let ids: Vec<i64> = vec![3, 14, 15, 92, 65, 35, 8, 9, 7, 93];
        let t = ids.len();
        for precision in Precision::ALL {
            let model = inference_model::<B<AB>>(&cfg, precision, &device);
            let tokens = Tensor::<B<AB>, 2, burn::tensor::Int>::from_data(
                TensorData::new(ids.clone(), [1, t]),
                &device,
            );
            let full = model.forward(tokens).cast(burn::tensor::DType::F32);
            let mut cache = model.new_cache(1, t, &device);
            for (i, &id) in ids.iter().enumerate() {
                let input = StepInput {
                    tokens: StepTokens::Host(&[id]),
                    pads: &[0],
                    cur: i,
                };
                let got: Vec<f32> = EagerDecoder
                    .step(&model, &mut cache, input)
                    .into_data()
                    .to_vec()
                    .unwrap();
                let v = got.len();
                let want: Vec<f32> = full
                    .clone()
                    .narrow(1, i, 1)
                    .reshape([v])
                    .into_data()
                    .to_vec()
                    .unwrap();
                let err = rel_err(&got, &want);
                assert!(
                    err < bound(precision),
                    "{precision:?}, token {i}: rel {err}"
                );
            }
        }
    }
}

#[test]
fn one_row_decoding_matches_the_full_pass() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: torch sees no CUDA device");
        return;
    }
    DeviceSpec::TchCuda(0).run(OneRowVsFullPass).unwrap();
}
