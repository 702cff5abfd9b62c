//! Reads and checks the exporter's PEM material once at start, so a bad file or Secret is
//! reported with its config field instead of as a handshake failure at the first export.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Error;
use crate::config::{ExporterTls, ValueSource};
use crate::secret;

/// The PEM contents of `exporter.tls`, each checked to hold what its field promises.
#[derive(Debug, Default)]
pub(crate) struct TlsFiles {
    /// The CA bundle that verifies the receiver.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads the files and value sources named in `tls` (validation lets each of `ca`,
    /// `cert` and `key` be given one way at most).
    ///
    /// # Errors
    /// [`Error::ReadFile`] or [`Error::TlsSource`] when a file or source cannot be read,
    /// [`Error::Pem`] or [`Error::PemValue`] when it holds no certificate (or key) or
    /// malformed PEM.
    pub(crate) fn load(tls: &ExporterTls) -> Result<Self, Error> {
        let ca = Pem::pick(
            &tls.ca_file,
            &tls.ca,
            "exporter.tls.ca_file",
            "exporter.tls.ca",
        )?;
        let cert = Pem::pick(
            &tls.cert_file,
            &tls.cert,
            "exporter.tls.cert_file",
            "exporter.tls.cert",
        )?;
        let key = Pem::pick(
            &tls.key_file,
            &tls.key,
            "exporter.tls.key_file",
            "exporter.tls.key",
        )?;
        let ca = ca.map(Pem::certificates).transpose()?;
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert.certificates()?, key.private_key()?)),
            // Validation pairs them; a lone one is ignored here rather than guessed at.
            _ => None,
        };
        Ok(Self { ca, identity })
    }
}

/// PEM bytes read for a config field, with the file they came from when there is one.
struct Pem<'a> {
    field: &'static str,
    path: Option<&'a Path>,
    bytes: Vec<u8>,
}

impl<'a> Pem<'a> {
    /// Reads whichever of the file (`file_field`) or the value source (`source_field`) is set.
    fn pick(
        file: &'a Option<std::path::PathBuf>,
        source: &Option<ValueSource>,
        file_field: &'static str,
        source_field: &'static str,
    ) -> Result<Option<Self>, Error> {
        if let Some(path) = file {
            let bytes = std::fs::read(path).map_err(|source| Error::ReadFile {
                field: file_field,
                path: path.to_owned(),
                source,
            })?;
            return Ok(Some(Self {
                field: file_field,
                path: Some(path),
                bytes,
            }));
        }
        let Some(source) = source else {
            return Ok(None);
        };
        let text = secret::read(source).map_err(|source| Error::TlsSource {
            field: source_field,
            source,
        })?;
        Ok(Some(Self {
            field: source_field,
            path: None,
            bytes: text.into_bytes(),
        }))
    }

    /// The error for PEM that does not parse, naming the file when there is one.
    fn invalid(&self, source: rustls::pki_types::pem::Error) -> Error {
        match self.path {
            Some(path) => Error::Pem {
                field: self.field,
                path: path.to_owned(),
                source,
            },
            None => Error::PemValue {
                field: self.field,
                source,
            },
        }
    }

    /// The bytes, once checked to hold at least one certificate and nothing malformed.
    fn certificates(self) -> Result<Vec<u8>, Error> {
        let mut found = false;
        for cert in CertificateDer::pem_slice_iter(&self.bytes) {
            cert.map_err(|source| self.invalid(source))?;
            found = true;
        }
        if !found {
            return Err(self.invalid(rustls::pki_types::pem::Error::NoItemsFound));
        }
        Ok(self.bytes)
    }

    /// The bytes, once checked to hold a private key.
    fn private_key(self) -> Result<Vec<u8>, Error> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|source| self.invalid(source))?;
        Ok(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_names_the_field_and_path() {
        let tls = ExporterTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = TlsFiles::load(&tls).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exporter.tls.ca_file: reading /nonexistent/ca.pem"
        );
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = ExporterTls {
            ca_file: Some(path.clone()),
            ..Default::default()
        };
        let err = TlsFiles::load(&tls).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "exporter.tls.ca_file: {} holds no valid PEM",
                path.display()
            )
        );
    }

    #[test]
    fn ca_value_without_certificates_names_the_field_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = ExporterTls {
            ca: Some(ValueSource::File(path)),
            ..Default::default()
        };
        let err = TlsFiles::load(&tls).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exporter.tls.ca: the value holds no valid PEM"
        );
    }

    #[test]
    fn unreadable_ca_value_names_the_field() {
        let tls = ExporterTls {
            ca: Some(ValueSource::Env("DBCOLLECTOR_TEST_UNSET_CA_8431".into())),
            ..Default::default()
        };
        let err = TlsFiles::load(&tls).unwrap_err();
        assert_eq!(err.to_string(), "exporter.tls.ca: reading the value");
    }

    #[test]
    fn no_files_load_nothing() {
        let files = TlsFiles::load(&ExporterTls::default()).unwrap();
        assert!(files.ca.is_none() && files.identity.is_none());
    }
}
