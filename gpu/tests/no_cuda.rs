//! On a machine without an NVIDIA driver (CI, laptops), every GPU constructor returns a
//! `GpuError::Library` naming the driver — no panic, no hang. Skipped where a driver exists.

use kaizen_gpu::{GpuError, Library, NcclCollective, NcclId, cuda_context};
use kaizen_learner::SingleProcess;

fn driver_present() -> bool {
    let present = Library::Driver.is_present();
    if present {
        eprintln!("skipped: this machine has an NVIDIA driver (the device check covers it)");
    }
    present
}

fn assert_names_the_driver(e: &GpuError) {
    let text = e.to_string();
    assert!(matches!(e, GpuError::Library { .. }), "{e:?}");
    assert!(text.contains("libcuda"), "{text}");
    assert!(
        text.contains("libcuda.so.1"),
        "the names tried are listed: {text}"
    );
    assert!(text.contains("docs/gpu.md"), "{text}");
}

#[test]
fn nccl_collective_without_a_driver_is_a_library_error() {
    if driver_present() {
        return;
    }
    let id = NcclId::from_bytes(&[0u8; NcclId::LEN]).unwrap();
    assert_names_the_driver(&NcclCollective::init(0, 0, 1, &id, 1024).unwrap_err());
    assert_names_the_driver(&NcclCollective::single(0, 1024).unwrap_err());
    // Over a bootstrap group rank 0 fails to create the id and still answers the exchange.
    assert_names_the_driver(&NcclCollective::over(&SingleProcess, 0, 1024).unwrap_err());
    assert_names_the_driver(&cuda_context(0).unwrap_err());
    // The actors' GPU engine (`actors.device = "cuda"`).
    assert_names_the_driver(&kaizen_gpu::actor_rows::cuda_device(0).unwrap_err());
}

#[test]
fn bad_ranks_and_ids_are_input_errors() {
    let id = NcclId::from_bytes(&[7u8; NcclId::LEN]).unwrap();
    assert_eq!(id.as_bytes()[0], 7);
    let e = NcclId::from_bytes(&[0u8; 12]).unwrap_err();
    assert!(e.to_string().contains("128 bytes, got 12"), "{e}");
    let e = NcclCollective::init(0, 2, 2, &id, 1024).unwrap_err();
    assert!(e.to_string().contains("rank 2 of world size 2"), "{e}");
}

#[test]
fn device_check_records_errors_instead_of_panicking() {
    if driver_present() {
        return;
    }
    let options = kaizen_gpu::device_check::Options {
        model: "random".into(),
        nccl_floats: 16,
        ..Default::default()
    };
    let summary = kaizen_gpu::device_check::run(&options);
    assert_eq!(summary["ok"], false);
    for section in [
        "environment",
        "kernels",
        "model",
        "training",
        "generation",
        "actors",
        "nccl",
    ] {
        let error = summary[section]["error"].as_str().unwrap_or_default();
        assert!(error.contains("libcuda"), "{section}: {error}");
    }
    assert_eq!(summary["environment"]["libraries_found"]["driver"], false);
}

#[test]
fn the_batched_sampler_without_a_driver_is_a_library_error() {
    if driver_present() {
        return;
    }
    let e = cuda_context(0)
        .and_then(|context| kaizen_gpu::decode_ops::CudaDecodeOps::new(&context))
        .err()
        .expect("no driver");
    assert_names_the_driver(&e);
}
