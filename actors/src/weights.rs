//! Versioned weight broadcast from the learner to the actors.

use std::sync::Arc;

use kaizen_core::WeightsVersion;
use kaizen_model::Llama;
use tokio::sync::watch;

/// Weights as published: a version and an inference copy of the model (on a plain, not
/// autodiff, device).
#[derive(Debug)]
pub struct Published {
    /// +1 per publish; 0 for the initial weights.
    pub version: WeightsVersion,
    /// The weights. Cloning a burn module shares its tensors, so actors hold cheap handles.
    pub model: Llama,
}

/// The learner's end: publishes whole-model versions (one version per publish, never
/// per-tensor updates).
#[derive(Debug, Clone)]
pub struct WeightPublisher {
    tx: Arc<watch::Sender<Arc<Published>>>,
}

/// An actor's end: the newest published weights, picked up between generation steps.
#[derive(Debug, Clone)]
pub struct WeightSubscriber {
    rx: watch::Receiver<Arc<Published>>,
}

/// A broadcast starting from `initial` weights (version 0).
pub fn weight_broadcast(initial: Llama) -> (WeightPublisher, WeightSubscriber) {
    weight_broadcast_at(initial, WeightsVersion(0))
}

/// A broadcast starting from `initial` weights at `version` (a resumed run continues its
/// version numbers).
pub fn weight_broadcast_at(
    initial: Llama,
    version: WeightsVersion,
) -> (WeightPublisher, WeightSubscriber) {
    let (tx, rx) = watch::channel(Arc::new(Published {
        version,
        model: initial,
    }));
    (
        WeightPublisher { tx: Arc::new(tx) },
        WeightSubscriber { rx },
    )
}

impl WeightPublisher {
    /// Publishes `model` as the next version and returns that version.
    pub fn publish(&self, model: Llama) -> WeightsVersion {
        let version = self.tx.borrow().version.next();
        self.tx.send_replace(Arc::new(Published { version, model }));
        version
    }

    /// Publishes `model` as `version` (weights that arrive from another process keep the
    /// learner's numbering; a subscriber that missed versions simply gets the newest).
    pub fn publish_version(&self, model: Llama, version: WeightsVersion) {
        self.tx.send_replace(Arc::new(Published { version, model }));
    }

    /// The newest published version.
    pub fn version(&self) -> WeightsVersion {
        self.tx.borrow().version
    }

    /// A new subscriber (for an actor started later).
    pub fn subscribe(&self) -> WeightSubscriber {
        WeightSubscriber {
            rx: self.tx.subscribe(),
        }
    }
}

impl WeightSubscriber {
    /// The newest weights (marks them seen).
    pub fn latest(&mut self) -> Arc<Published> {
        self.rx.borrow_and_update().clone()
    }

    /// Whether weights newer than the last [`WeightSubscriber::latest`] were published.
    pub fn has_new(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }
}
