//! Reads values that must not live in the config (passwords, header values) from files
//! or environment variables, each time they are needed, so a rotated secret takes effect
//! at the next connect without a restart.

use std::path::PathBuf;

use crate::config::ValueSource;

/// Why a secret could not be read. Never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading secret file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The environment variable is not set or not Unicode.
    #[error("environment variable {name} is not set")]
    Env {
        /// The variable's name.
        name: String,
    },
}

/// Reads the current value. A file's trailing newline (as `echo` and most editors write
/// it) is not part of the value.
///
/// # Errors
/// [`Error::File`] or [`Error::Env`] when the source is missing.
pub fn read(source: &ValueSource) -> Result<String, Error> {
    match source {
        ValueSource::File(path) => {
            let mut value = std::fs::read_to_string(path).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
            while value.ends_with('\n') || value.ends_with('\r') {
                value.pop();
            }
            Ok(value)
        }
        ValueSource::Env(name) => {
            std::env::var(name).map_err(|_| Error::Env { name: name.clone() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_value_loses_its_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "p@ss:w%rd#1;x=y?& \n").unwrap();
        assert_eq!(
            read(&ValueSource::File(path)).unwrap(),
            "p@ss:w%rd#1;x=y?& "
        );
    }

    #[test]
    fn missing_sources_name_the_source_not_the_value() {
        let err = read(&ValueSource::Env("DBCOLLECTOR_TEST_UNSET_VAR".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable DBCOLLECTOR_TEST_UNSET_VAR is not set"
        );
        let err = read(&ValueSource::File("/nonexistent/pw".into())).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pw"));
    }
}
