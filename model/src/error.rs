use std::path::PathBuf;

/// Errors of kaizen-model. Each names the file, field or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model configuration value is invalid.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A configuration file could not be parsed.
    #[error("cannot parse model config {path}: {message}")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the field).
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A weights file is malformed or does not match the model.
    #[error("weights {path}: {message}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor.
        message: String,
    },
    /// A GGUF file is malformed or unsupported.
    #[error("GGUF {path}: {message}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key, tensor or byte offset.
        message: String,
    },
    /// A tokenizer could not be loaded, built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template cannot render the given conversation.
    #[error("chat template: {0}")]
    Template(String),
    /// Invalid sampling parameters.
    #[error("invalid sampling parameters: {0}")]
    Sampling(String),
    /// Invalid generation or scoring input (e.g. an empty prompt, a token id outside the vocabulary).
    #[error("invalid input: {0}")]
    Input(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `Result` with kaizen-model's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
