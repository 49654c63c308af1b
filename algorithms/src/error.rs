use burn::tensor::TensorReadError;

/// Errors raised by kaizen-algorithms when a batch or a configuration is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two inputs that must have one entry per sample (or per token) differ in length.
    #[error("`{input}` has {actual} entries but `{reference}` has {expected} (expected one each)")]
    Length {
        /// The input whose length is wrong.
        input: &'static str,
        /// The input that sets the expected length.
        reference: &'static str,
        /// The length of `reference`.
        expected: usize,
        /// The length of `input`.
        actual: usize,
    },
    /// A reward or return is NaN or infinite.
    #[error("reward {index} is {value}; rewards must be finite")]
    NonFiniteReward {
        /// Position of the reward in the input.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A loss was asked for a micro-batch without any token.
    #[error("the micro-batch has no tokens to train on; skip it instead of computing a loss")]
    NoTokens,
    /// A configuration field is out of its valid range.
    #[error("`{field}` = {value} is invalid: expected {expected}")]
    Config {
        /// The field name (TRL `GRPOConfig` spelling where one exists).
        field: &'static str,
        /// The offending value.
        value: f64,
        /// What the field accepts.
        expected: &'static str,
    },
    /// An optional input is required by the configuration but was not given.
    #[error("`{input}` is required because {reason}")]
    MissingInput {
        /// The missing input.
        input: &'static str,
        /// The configuration that needs it.
        reason: &'static str,
    },
    /// A step-level normaliser is smaller than what this micro-batch alone contains.
    #[error(
        "step normaliser `{field}` = {value} but this micro-batch alone has {in_batch}; normalisers count the whole optimizer step"
    )]
    Normalizer {
        /// The normaliser field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// What the micro-batch alone contains.
        in_batch: usize,
    },
    /// A trajectory is inconsistent (reward count, non-finite reward).
    #[error(transparent)]
    Trajectory(#[from] kaizen_core::Error),
    /// A tensor could not be read back to the host for metrics.
    #[error("reading `{tensor}` back from the device failed: {source}")]
    Read {
        /// The tensor being read.
        tensor: &'static str,
        /// The backend's error.
        source: TensorReadError,
    },
}

/// Checks that every `(input, length)` has `expected` entries, the length of `reference`.
///
/// # Errors
/// [`Error::Length`] naming the first input that does not.
pub(crate) fn check_lengths(
    reference: &'static str,
    expected: usize,
    inputs: &[(&'static str, usize)],
) -> Result<(), Error> {
    match inputs.iter().find(|(_, len)| *len != expected) {
        Some(&(input, actual)) => Err(Error::Length {
            input,
            reference,
            expected,
            actual,
        }),
        None => Ok(()),
    }
}
