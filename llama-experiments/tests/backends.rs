//! The same weights give the same results on every compiled-in backend. Each test needs its
//! backend's feature (`--features flex`, `wgpu`, `tch`); ndarray is the reference.

use llama_experiments::backend::DeviceSpec;
use llama_experiments::check::{CheckRow, CheckSpec, check};
use llama_model::LlamaConfig;

/// Small enough for lavapipe (Vulkan on the CPU), with grouped-query attention and weights large
/// enough (`init_std` 0.2) that differences show.
#[allow(dead_code)]
fn spec() -> CheckSpec {
    CheckSpec {
        config: LlamaConfig {
            n_kv_heads: Some(2),
            multiple_of: 16,
            init_std: 0.2,
            ..LlamaConfig::llama(64, 32, 2, 4, 32)
        },
        batch: 2,
        seq: 12,
        seed: 3,
    }
}

#[allow(dead_code)]
fn assert_agrees(device: DeviceSpec) -> CheckRow {
    let rows = check(DeviceSpec::NdArray, &[device], &spec()).unwrap();
    let r = rows[1].clone();
    eprintln!("{r:?}");
    assert!(
        r.logits_rel <= 1e-5,
        "{device} logits differ by {}",
        r.logits_rel
    );
    assert!(
        r.cached_vs_full_rel <= 1e-5,
        "{device} cached decoding differs by {}",
        r.cached_vs_full_rel
    );
    assert!(
        r.loss_abs_diff <= 1e-5,
        "{device} loss differs by {}",
        r.loss_abs_diff
    );
    assert!(
        r.grads_rel <= 1e-4,
        "{device} gradients differ by {}",
        r.grads_rel
    );
    // Greedy and sampled tokens from the device sampler: the same draws on every backend.
    assert_eq!(r.tokens_differ, 0, "{device} generated other tokens");
    r
}

#[test]
fn the_reference_agrees_with_itself() {
    let rows = check(DeviceSpec::NdArray, &[DeviceSpec::NdArray], &spec()).unwrap();
    assert_eq!(rows[1].logits_rel, 0.0);
    assert_eq!(rows[1].grads_rel, 0.0);
    assert_eq!(rows[1].tokens_differ, 0);
    assert!(rows[1].cached_vs_full_rel <= 1e-5);
    assert!(rows[0].loss.is_finite() && rows[0].loss > 1.0);
}

#[cfg(feature = "flex")]
#[test]
fn flex_agrees_with_ndarray() {
    assert_agrees(DeviceSpec::Flex);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_agrees_with_ndarray() {
    assert_agrees(DeviceSpec::Wgpu);
}

#[cfg(feature = "tch")]
#[test]
fn tch_cpu_agrees_with_ndarray() {
    assert_agrees(DeviceSpec::TchCpu);
}
