//! A key of the web configuration file with a wrong value, as the parts
//! that check one (`tls`, `basic_auth`) report it; `web_config` adds the
//! file's name. A file of its own so that those parts need not import the
//! web configuration that imports them.

use std::path::PathBuf;

/// A key's value is wrong, before the file is named.
#[derive(Debug)]
pub(crate) enum KeyError {
    /// The value is wrong.
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The file it names cannot be read.
    File {
        /// The dotted key.
        key: String,
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl KeyError {
    /// A wrong value of `key`.
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> KeyError {
        KeyError::Invalid { key: key.to_string(), message: message.into() }
    }
}
