//! A decoded row's feed-forward sublayer (`decode_ffn`) goes to a backend's registered kernel for
//! one-row steps of a pre-norm RMSNorm/SwiGLU model with stacked inference weights, and only
//! there; the kernel's `(h, y)` take the place of the add-and-norm and the network. Flex bf16 with
//! natives written in tensor ops (their own test binary: the registry is global).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use common::*;
use llama_model::decode_ffn::DecodeFfnInputs;
use llama_model::{EagerDecoder, FfnKind, Precision, Sampling, StaticDecoder, generate_with};

static CALLS: AtomicUsize = AtomicUsize::new(0);

fn float<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Checks the shapes it is given, counts, and computes the sublayer with the model's own
/// operations (so the tokens must not change).
fn native(i: DecodeFfnInputs<Flex>) -> Option<(FlexTensor, FlexTensor)> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    let (x, delta) = (float::<2>(i.x), float::<2>(i.delta));
    let [rows, d] = x.dims();
    let gate_up = float::<2>(i.gate_up);
    let down = float::<2>(i.down);
    let hidden = down.dims()[0];
    assert_eq!(rows, 1);
    assert_eq!(delta.dims(), [1, d]);
    assert_eq!(gate_up.dims(), [d, 2 * hidden]);
    assert_eq!(down.dims(), [hidden, d]);
    assert_eq!(i.out, DType::BF16);
    assert_eq!(gate_up.dtype(), DType::BF16);
    let h = llama_model::residual::add(x, delta);
    let a = llama_model::rms_norm::rms_norm_to(h.clone(), float::<1>(i.gamma), i.eps, i.out);
    let both = a.matmul(gate_up).unsqueeze::<3>();
    let g = both.clone().narrow(2, 0, hidden);
    let u = both.narrow(2, hidden, hidden);
    let y = llama_model::swiglu::swiglu(g, u)
        .reshape([1, hidden])
        .matmul(down);
    Some((h.into_primitive().tensor(), y.into_primitive().tensor()))
}

#[test]
fn one_row_steps_take_the_registered_sublayer() {
    let fdev = Default::default();
    let vocab = 64;
    let cfg = small(vocab);
    let model = cfg
        .init::<Flex>(&fdev)
        .unwrap()
        .with_precision(Precision::Bf16)
        .with_inference_weights();
    let prompt: Vec<u32> = (1..=12).collect();
    let sampling = Sampling {
        max_new_tokens: 4,
        ..Default::default()
    };
    let one = std::slice::from_ref(&prompt);
    let two = [prompt.clone(), prompt[..7].to_vec()];
    let before = generate_with(&model, one, &sampling, &mut StaticDecoder).unwrap();
    let before_two = generate_with(&model, &two, &sampling, &mut StaticDecoder).unwrap();

    llama_model::decode_ffn::register_native::<Flex>(native);
    for (what, tokens) in [
        (
            "static",
            generate_with(&model, one, &sampling, &mut StaticDecoder).unwrap(),
        ),
        (
            "eager",
            generate_with(&model, one, &sampling, &mut EagerDecoder).unwrap(),
        ),
    ] {
        assert_eq!(tokens, before, "{what}");
    }
    // The prompt's pass has 12 rows; then three one-row steps, twice.
    assert_eq!(CALLS.load(Ordering::SeqCst), 2 * 3 * cfg.n_layers);

    CALLS.store(0, Ordering::SeqCst);
    let two_rows = generate_with(&model, &two, &sampling, &mut StaticDecoder).unwrap();
    assert_eq!(two_rows, before_two);
    assert_eq!(CALLS.load(Ordering::SeqCst), 0, "two rows per step");

    // Without stacked weights (no `with_inference_weights`), or with another network: never.
    let plain = cfg
        .init::<Flex>(&fdev)
        .unwrap()
        .with_precision(Precision::Bf16);
    generate_with(&plain, one, &sampling, &mut StaticDecoder).unwrap();
    let geglu = llama_model::LlamaConfig {
        ffn: FfnKind::Geglu,
        ..small(vocab)
    };
    let geglu = geglu
        .init::<Flex>(&fdev)
        .unwrap()
        .with_precision(Precision::Bf16)
        .with_inference_weights();
    generate_with(&geglu, one, &sampling, &mut StaticDecoder).unwrap();
    assert_eq!(CALLS.load(Ordering::SeqCst), 0, "not stacked, or GeGLU");
}
