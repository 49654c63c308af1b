//! The forward and training kernels compile with NVRTC — no GPU needed, only `libnvrtc.so.13` on
//! `LD_LIBRARY_PATH` (`scripts/test.sh` installs PyPI's `nvidia-cuda-nvrtc` for it). Without
//! NVRTC these tests fail when `KAIZEN_REQUIRE_SERVICES=1` (CI) and are skipped loudly
//! otherwise.

use kaizen_gpu::{GpuError, Library, decode_kernels, kernels, train};

fn nvrtc() -> bool {
    if Library::Nvrtc.is_present() {
        return true;
    }
    let message = "libnvrtc is not on LD_LIBRARY_PATH (pip install nvidia-cuda-nvrtc; \
                   scripts/test.sh does)";
    if std::env::var("KAIZEN_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{message}");
    }
    eprintln!("skipped: {message}");
    false
}

#[test]
fn every_kernel_compiles_to_ptx_for_ampere_and_hopper() {
    if !nvrtc() {
        return;
    }
    let (major, minor) = kernels::nvrtc_version().unwrap();
    assert!(
        major >= 13,
        "NVRTC {major}.{minor}: the bindings are CUDA 13's"
    );
    for arch in ["compute_80", "compute_90"] {
        let ptx = kernels::compile(Some(arch))
            .unwrap_or_else(|e| panic!("{e}"))
            .to_src();
        let target = arch.replace("compute_", "sm_");
        assert!(
            ptx.contains(&format!(".target {target}")),
            "{arch}: {}",
            &ptx[..ptx.len().min(400)]
        );
        for name in kernels::NAMES {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch}: kernel `{name}` missing from the PTX"
            );
        }
    }
}

#[test]
fn every_training_kernel_compiles_to_ptx_for_ampere_and_hopper() {
    if !nvrtc() {
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        let ptx = train::kernels::compile(Some(arch))
            .unwrap_or_else(|e| panic!("{e}"))
            .to_src();
        let target = arch.replace("compute_", "sm_");
        assert!(ptx.contains(&format!(".target {target}")), "{arch}");
        for name in train::kernels::NAMES {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch}: training kernel `{name}` missing from the PTX"
            );
        }
    }
}

#[test]
fn every_decoding_kernel_compiles_to_ptx_for_ampere_and_hopper() {
    if !nvrtc() {
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        let ptx = decode_kernels::compile(Some(arch))
            .unwrap_or_else(|e| panic!("{e}"))
            .to_src();
        let target = arch.replace("compute_", "sm_");
        assert!(ptx.contains(&format!(".target {target}")), "{arch}");
        for name in decode_kernels::NAMES {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch}: decoding kernel `{name}` missing from the PTX"
            );
        }
    }
}

#[test]
fn a_broken_kernel_is_a_compile_error_with_the_log() {
    if !nvrtc() {
        return;
    }
    let source = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }";
    let e = kernels::compile_source(source, Some("compute_90")).unwrap_err();
    assert!(matches!(e, GpuError::Compile { .. }), "{e:?}");
    assert!(e.to_string().contains("undefined_name"), "{e}");
    assert!(e.to_string().contains("compute_90"), "{e}");
}
