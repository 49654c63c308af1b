//! Helpers shared by the coordinator's tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use burn::tensor::Device;
use kaizen_model::{Llama, LlamaConfig};
use kaizen_transport::wire::CoordinatorConfig;
use kaizen_transport::wire::proto::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;

/// The job fingerprint every test actor presents.
pub const FINGERPRINT: &str = "job-1";

pub fn model(seed: u64) -> Llama {
    Llama::init(&LlamaConfig::tiny(32), &Device::default(), seed).unwrap()
}

pub fn config(peer_timeout: Duration, results_capacity: usize) -> CoordinatorConfig {
    CoordinatorConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        peer_timeout,
        results_capacity,
        max_message_bytes: 64 * 1024,
        weights_chunk_bytes: 4096,
        env_names: vec!["self_correct".into()],
        job_fingerprint: FINGERPRINT.into(),
        shutdown_grace: Duration::from_millis(200),
        weights_groups: None,
    }
}

pub async fn client(addr: SocketAddr) -> CoordinatorClient<Channel> {
    CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
