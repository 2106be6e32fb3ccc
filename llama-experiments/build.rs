//! With the `tch` feature and a CUDA build of libtorch: compiles `csrc/cuda_graph.cpp` (torch's
//! CUDA graphs behind a C interface, for the decoder in `src/cuda_graph.rs`) and
//! `csrc/autograd.cpp` (a vector-Jacobian product with a given output gradient, for
//! `src/libtorch_autograd.rs`) and sets the `llama_cuda_graph` cfg. It needs the CUDA runtime
//! headers (`cuda_runtime_api.h`, `crt/host_defines.h`): `LLAMA_CUDA_INCLUDE` (paths separated by `:`), or the PyPI wheels
//! beside libtorch (`nvidia/cu13/include`; `nvidia/cuda_runtime/include` and
//! `nvidia/cuda_nvcc/include` for CUDA 12), or `$CUDA_HOME/include`, `/usr/local/cuda/include`.
//! Without them the tool builds without CUDA graphs and says so.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(llama_cuda_graph)");
    println!("cargo::rerun-if-changed=csrc/cuda_graph.cpp");
    println!("cargo::rerun-if-changed=csrc/autograd.cpp");
    println!("cargo::rerun-if-changed=csrc/guarded.h");
    println!("cargo::rerun-if-env-changed=LLAMA_CUDA_INCLUDE");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    // torch-sys (`links = "tch"`) passes its libtorch lib directory to direct dependents.
    let Some(lib) = env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo::warning=libtorch's directory is unknown: built without CUDA graphs");
        return;
    };
    if !lib.join("libtorch_cuda.so").exists() {
        return; // a CPU libtorch
    }
    let torch = lib.parent().unwrap_or(&lib).to_path_buf();
    let site = torch.parent().unwrap_or(&torch).to_path_buf();
    let mut cuda: Vec<PathBuf> = match env::var("LLAMA_CUDA_INCLUDE") {
        Ok(paths) => env::split_paths(&paths).collect(),
        Err(_) => Vec::new(),
    };
    cuda.extend(
        [
            "nvidia/cu13/include",
            "nvidia/cuda_runtime/include",
            "nvidia/cuda_nvcc/include",
        ]
        .map(|p| site.join(p)),
    );
    if let Some(home) = env::var_os("CUDA_HOME") {
        cuda.push(Path::new(&home).join("include"));
    }
    cuda.push(PathBuf::from("/usr/local/cuda/include"));
    cuda.retain(|p| p.is_dir());
    let has = |f: &str| cuda.iter().any(|p| p.join(f).exists());
    if !(has("cuda_runtime_api.h") && has("crt/host_defines.h")) {
        println!(
            "cargo::warning=CUDA runtime headers not found (set LLAMA_CUDA_INCLUDE): built \
             without CUDA graphs"
        );
        return;
    }
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .includes(&cuda)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/cuda_graph.cpp")
        .file("csrc/autograd.cpp")
        .compile("llama_cuda_graph");
    println!("cargo::rustc-link-search=native={}", lib.display());
    println!("cargo::rustc-link-lib=dylib=c10_cuda");
    println!("cargo::rustc-link-lib=dylib=torch_cuda");
    println!("cargo::rustc-cfg=llama_cuda_graph");
}
