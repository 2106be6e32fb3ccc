//! A decode step's rotation and cache-slot write (`rope_slot`) goes to a backend's registered
//! kernel in static-shape steps only (a slot set), and a kernel that declines leaves the numbers
//! as they were. NdArray f32 with a counting native (its own test binary: the registry is global).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::ndarray::NdArrayTensor;
use common::*;
use llama_model::rotary::NativeRotary;
use llama_model::{EagerDecoder, Sampling, StaticDecoder, generate_with};

static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Counts and declines.
#[allow(clippy::too_many_arguments)]
fn counting(
    _q: NdArrayTensor,
    _k: NdArrayTensor,
    _v: NdArrayTensor,
    _c: NdArrayTensor,
    _s: NdArrayTensor,
    _kc: NdArrayTensor,
    _vc: NdArrayTensor,
    _slot: NdArrayTensor,
) -> Option<NdArrayTensor> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    None
}

#[test]
fn only_slot_steps_take_the_registered_kernel() {
    // A rotary native (declining too) makes the angles carry the full-width tables the kernel
    // takes, as on libtorch.
    llama_model::rotary::register_native::<B>(NativeRotary {
        forward: |_, _, _| None,
        backward: |_, _, _| None,
    });
    let cfg = small(60);
    let model = cfg.init::<B>(&dev()).unwrap();
    let prompt: Vec<u32> = (1..=12).collect();
    let sampling = Sampling {
        max_new_tokens: 4,
        ..Default::default()
    };
    let prompts = std::slice::from_ref(&prompt);
    let before = generate_with(&model, prompts, &sampling, &mut StaticDecoder).unwrap();
    llama_model::rope_slot::register_native::<B>(counting);
    let eager = generate_with(&model, prompts, &sampling, &mut EagerDecoder).unwrap();
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        0,
        "no slot: prefill and eager steps"
    );
    assert_eq!(eager, before);
    let fixed = generate_with(&model, prompts, &sampling, &mut StaticDecoder).unwrap();
    assert_eq!(
        fixed, before,
        "a declining kernel leaves the numbers as they were"
    );
    assert_eq!(CALLS.load(Ordering::SeqCst), 3 * cfg.n_layers);
}
