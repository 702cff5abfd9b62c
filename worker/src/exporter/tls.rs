//! Reads and checks the exporter's PEM files once at start, so a bad file is reported with
//! its config field instead of as a handshake failure at the first export.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Error;
use crate::config::ExporterTls;

/// The PEM contents of `exporter.tls`, each checked to hold what its field promises.
#[derive(Debug, Default)]
pub(crate) struct TlsFiles {
    /// The CA bundle that verifies the receiver.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads the files named in `tls`.
    ///
    /// # Errors
    /// [`Error::ReadFile`] when a file cannot be read, [`Error::Pem`] when it holds no
    /// certificate (or key) or malformed PEM.
    pub(crate) fn load(tls: &ExporterTls) -> Result<Self, Error> {
        let ca = match &tls.ca_file {
            Some(path) => Some(certificates("exporter.tls.ca_file", path)?),
            None => None,
        };
        let identity = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => Some((
                certificates("exporter.tls.cert_file", cert)?,
                private_key(key)?,
            )),
            // Validation pairs them; a lone one is ignored here rather than guessed at.
            _ => None,
        };
        Ok(Self { ca, identity })
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        field,
        path: path.to_owned(),
        source,
    })
}

fn certificates(field: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    let pem = read(field, path)?;
    let mut found = false;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|source| Error::Pem {
            field,
            path: path.to_owned(),
            source,
        })?;
        found = true;
    }
    if !found {
        let source = rustls::pki_types::pem::Error::NoItemsFound;
        return Err(Error::Pem {
            field,
            path: path.to_owned(),
            source,
        });
    }
    Ok(pem)
}

fn private_key(path: &Path) -> Result<Vec<u8>, Error> {
    let field = "exporter.tls.key_file";
    let pem = read(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| Error::Pem {
        field,
        path: path.to_owned(),
        source,
    })?;
    Ok(pem)
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
    fn no_files_load_nothing() {
        let files = TlsFiles::load(&ExporterTls::default()).unwrap();
        assert!(files.ca.is_none() && files.identity.is_none());
    }
}
