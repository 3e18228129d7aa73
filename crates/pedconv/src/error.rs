//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;

use crate::import::ImportError;

/// What can go wrong in this crate: each kind names the thing that is wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid.
    Config {
        /// The configuration (`PedConv2dConfig`, `ResNetConfig`).
        config: &'static str,
        /// What is wrong, naming the field and its value.
        message: String,
    },
    /// A PyTorch checkpoint cannot be imported (unreadable, corrupt, or not this model's).
    Import(ImportError),
    /// A file cannot be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A tensor or an input size does not fit the layer, naming the sizes.
    Shape(String),
}

impl Error {
    /// An [`Error::Io`] of the file at `path`.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Io {
            path: path.into(),
            source: Box::new(source),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { config, message } => write!(f, "invalid {config}: {message}"),
            Error::Import(error) => error.fmt(f),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Shape(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Import(error) => Some(error),
            Error::Io { source, .. } => Some(source.as_ref()),
            Error::Config { .. } | Error::Shape(_) => None,
        }
    }
}

impl From<ImportError> for Error {
    fn from(error: ImportError) -> Self {
        Error::Import(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errors_say_what_is_wrong_and_keep_their_source() {
        let config = Error::Config {
            config: "ResNetConfig",
            message: "width must be positive, got 0".into(),
        };
        assert_eq!(
            config.to_string(),
            "invalid ResNetConfig: width must be positive, got 0"
        );
        assert!(config.source().is_none());
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let io = Error::io("model.mpk", missing);
        assert_eq!(io.to_string(), "model.mpk: no such file");
        assert!(io.source().unwrap().to_string().contains("no such file"));
        let import = Error::from(ImportError::Format {
            path: "a.pth".into(),
            message: "truncated".into(),
        });
        assert!(import.source().is_some() && import.to_string().contains("a.pth"));
    }
}
