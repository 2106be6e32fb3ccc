//! The CubeCL backend's flash-attention source (`src/cubecl_flash/flash_attention*.cu`) compiled by
//! NVRTC, no GPU needed: for sm_80 every kernel is mma.sync's, and for Hopper's sm_90a (what the
//! launcher picks on compute capability 9.0) the head-dim-64 kernels are wgmma's and the
//! head-dim-128 ones still mma.sync's. The kernels' numbers are checked on a GPU by
//! `tests/cubecl_flash.rs` and `scripts/check_flash_attention.py`.
//!
//! Compiled with `--features tch` (which brings NVRTC's bindings; CI runs it there). Skips, saying
//! so, where NVRTC does not load; `LLAMA_REQUIRE_NVRTC=1` makes that a failure, as in CI.
#![cfg(feature = "tch")]

use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

const SOURCE: &str = concat!(
    include_str!("../src/cubecl_flash/flash_attention.cu"),
    include_str!("../src/cubecl_flash/flash_attention_sm90.cu")
);
const KERNELS: [&str; 3] = ["flash_forward", "flash_backward_dq", "flash_backward_dkdv"];

/// The source's PTX for `arch`, or `None` (skipped) without NVRTC.
fn ptx(arch: &'static str) -> Option<String> {
    if !llama_experiments::cuda_kernels::nvrtc_present() {
        assert!(
            std::env::var_os("LLAMA_REQUIRE_NVRTC").is_none(),
            "LLAMA_REQUIRE_NVRTC is set but NVRTC is not on the library path"
        );
        eprintln!("skipped: NVRTC is not on the library path");
        return None;
    }
    let options = CompileOptions {
        name: Some("flash_attention.cu".into()),
        arch: Some(arch),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(SOURCE, options).unwrap_or_else(|e| panic!("{arch}: {e}"));
    Some(ptx.to_src())
}

/// The PTX of kernel `name` (from its `.entry` to the next one).
fn body<'a>(ptx: &'a str, name: &str) -> &'a str {
    ptx.split(".entry ")
        .skip(1)
        .find(|b| b.split('(').next().map(str::trim) == Some(name))
        .unwrap_or_else(|| panic!("{name} is not in the PTX"))
}

#[test]
fn hopper_builds_use_warp_group_products_at_head_dim_64() {
    let (Some(ampere), Some(hopper)) = (ptx("compute_80"), ptx("compute_90a")) else {
        return;
    };
    for (arch, text) in [("compute_80", &ampere), ("compute_90a", &hopper)] {
        for base in KERNELS {
            for d in [64, 128] {
                let name = format!("{base}_d{d}");
                let code = body(text, &name);
                let wgmma = arch == "compute_90a" && d == 64;
                assert_eq!(
                    code.contains("wgmma.mma_async"),
                    wgmma,
                    "{name} for {arch}: wgmma expected {wgmma}"
                );
                assert_eq!(
                    code.contains("mma.sync.aligned"),
                    !wgmma,
                    "{name} for {arch}: mma.sync expected {}",
                    !wgmma
                );
            }
        }
    }
}
