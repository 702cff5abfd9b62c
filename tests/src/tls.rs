//! Throwaway certificate authorities and certificates for TLS tests, written as PEM files that
//! the harness's servers (running as `postgres` or `mysql` when the tests run as root) can
//! read.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::otlp::ReceiverTls;
use crate::process::{self, ServiceUser};

/// Common name of the client certificate. PostgreSQL's `clientcert=verify-full` (and the
/// `cert` method) require it to equal the role name, so a test role for mutual TLS is
/// named this.
pub const CLIENT_NAME: &str = "dbcollector_tls";

/// Names the server certificate is valid for (its subject alternative names). Any other
/// address of the server, e.g. `127.0.0.2`, fails host name verification.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A test PKI: a CA, a server and a client certificate it signed, and a second CA that
/// signed nothing, each as a PEM file.
///
/// Certificates are world-readable (0644); private keys are readable by the test process
/// only (0600), so a server running as another account needs
/// [`TestPki::server_key_for`]. Every certificate is valid from 1975 to 4096 (rcgen's
/// defaults), so no test depends on the clock.
#[derive(Debug)]
pub struct TestPki {
    /// The directory holding every file.
    pub dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca_pem_path: PathBuf,
    /// Server certificate for [`SERVER_NAMES`], signed by the CA (the leaf only).
    pub server_cert_path: PathBuf,
    /// PKCS#8 private key of the server certificate.
    pub server_key_path: PathBuf,
    /// Client certificate with common name [`CLIENT_NAME`], signed by the CA.
    pub client_cert_path: PathBuf,
    /// PKCS#8 private key of the client certificate.
    pub client_key_path: PathBuf,
    /// A second, unrelated CA that signed nothing: verifying with it must fail.
    pub other_ca_pem_path: PathBuf,
    /// The directory when [`TestPki::temporary`] made it; removed on drop.
    _owned: Option<TempDir>,
}

impl TestPki {
    /// Generates the PKI into `dir`, which must exist.
    ///
    /// Sets `dir`'s mode to 0755, so that servers running as another account can reach
    /// the files; every directory above it must be searchable by them too (the system
    /// temporary directory and `/dev/shm` are).
    ///
    /// # Errors
    ///
    /// Fails when a key or certificate cannot be generated or a file cannot be written.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", dir.display()))?;

        let (ca_cert, ca) = new_ca("dbcollector test CA")?;
        let (other_ca_cert, _) = new_ca("dbcollector unrelated CA")?;
        let (server_cert, server_key) = new_leaf(
            &ca,
            "localhost",
            &SERVER_NAMES,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) =
            new_leaf(&ca, CLIENT_NAME, &[], ExtendedKeyUsagePurpose::ClientAuth)?;

        let pki = Self {
            dir: dir.to_path_buf(),
            ca_pem_path: dir.join("ca.pem"),
            server_cert_path: dir.join("server.pem"),
            server_key_path: dir.join("server.key"),
            client_cert_path: dir.join("client.pem"),
            client_key_path: dir.join("client.key"),
            other_ca_pem_path: dir.join("other-ca.pem"),
            _owned: None,
        };
        write(&pki.ca_pem_path, &ca_cert.pem(), 0o644)?;
        write(&pki.other_ca_pem_path, &other_ca_cert.pem(), 0o644)?;
        write(&pki.server_cert_path, &server_cert.pem(), 0o644)?;
        write(&pki.server_key_path, &server_key.serialize_pem(), 0o600)?;
        write(&pki.client_cert_path, &client_cert.pem(), 0o644)?;
        write(&pki.client_key_path, &client_key.serialize_pem(), 0o600)?;
        Ok(pki)
    }

    /// Generates the PKI into a fresh directory next to the harness's server directories,
    /// removed when the returned value is dropped (or, if the test process is killed, by
    /// the next test process).
    ///
    /// # Errors
    ///
    /// As [`TestPki::new`], or when the directory cannot be created.
    pub fn temporary() -> anyhow::Result<Self> {
        let dir = process::server_dir("pki", None)?;
        let mut pki = Self::new(dir.path())?;
        pki._owned = Some(dir);
        Ok(pki)
    }

    /// A copy of the server key that system account `account` (`postgres` or `mysql`)
    /// may read, for a server the harness runs as that account, with mode 0600.
    ///
    /// PostgreSQL refuses a key that is readable by others or owned by another account
    /// than itself (root aside); MariaDB just has to be able to read it. When the tests do
    /// not run as root the servers run as the test user, who owns the copy.
    ///
    /// # Errors
    ///
    /// Fails when the account does not exist (as root) or the copy cannot be made.
    pub fn server_key_for(&self, account: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("server-{account}.key"));
        let key = fs::read_to_string(&self.server_key_path)
            .with_context(|| format!("reading {}", self.server_key_path.display()))?;
        write(&path, &key, 0o600)?;
        if let Some(user) = ServiceUser::for_root(account)? {
            process::chown(&path, user)?;
        }
        Ok(path)
    }

    /// `postgresql.conf` lines (for `PgOptions::extra_conf`) that turn TLS on with the
    /// server certificate, and trust client certificates signed by the CA (used only by
    /// hba lines that ask for a client certificate).
    ///
    /// # Errors
    ///
    /// As [`TestPki::server_key_for`].
    pub fn postgres_conf(&self) -> anyhow::Result<Vec<String>> {
        let key = self.server_key_for("postgres")?;
        Ok(vec![
            "ssl = on".to_owned(),
            format!("ssl_cert_file = '{}'", self.server_cert_path.display()),
            format!("ssl_key_file = '{}'", key.display()),
            format!("ssl_ca_file = '{}'", self.ca_pem_path.display()),
        ])
    }

    /// `mariadbd` arguments (for `MariaDbOptions::extra_args`) that turn TLS on with the
    /// server certificate and trust client certificates signed by the CA.
    ///
    /// # Errors
    ///
    /// As [`TestPki::server_key_for`].
    pub fn mariadb_args(&self) -> anyhow::Result<Vec<String>> {
        let key = self.server_key_for("mysql")?;
        Ok(vec![
            format!("--ssl-cert={}", self.server_cert_path.display()),
            format!("--ssl-key={}", key.display()),
            format!("--ssl-ca={}", self.ca_pem_path.display()),
        ])
    }

    /// TLS settings for an [`crate::OtlpReceiver`] presenting the server certificate;
    /// with `mutual`, clients must present a certificate signed by the CA.
    pub fn receiver_tls(&self, mutual: bool) -> ReceiverTls {
        ReceiverTls {
            cert_file: self.server_cert_path.clone(),
            key_file: self.server_key_path.clone(),
            client_ca_file: mutual.then(|| self.ca_pem_path.clone()),
        }
    }
}

/// A self-signed CA named `name`, and the issuer that signs with its key.
fn new_ca(name: &str) -> anyhow::Result<(Certificate, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().context("generating a CA key")?;
    let cert = params
        .self_signed(&key)
        .with_context(|| format!("self-signing {name}"))?;
    Ok((cert, Issuer::new(params, key)))
}

/// An end-entity certificate for `common_name` and `names` (DNS names or IP addresses),
/// signed by `issuer`, for `usage`; and its key.
fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(Certificate, KeyPair)> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().context("generating a key")?;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("signing the certificate of {common_name}"))?;
    Ok((cert, key))
}

/// Writes `contents` to `path` with `mode` (replacing the file, whatever the umask).
fn write(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    // Removing first makes the mode apply to a new file, and drops a previous owner.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn server_certificate_verifies_against_the_ca_and_not_the_other_one() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(dir.path()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let now = rustls::pki_types::UnixTime::now();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();

        for (ca, ok) in [(&pki.ca_pem_path, true), (&pki.other_ca_pem_path, false)] {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der(ca)).unwrap();
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.into(),
                provider.clone(),
            )
            .build()
            .unwrap();
            let result =
                verifier.verify_server_cert(&der(&pki.server_cert_path), &[], &name, &[], now);
            assert_eq!(result.is_ok(), ok, "verifying with {}", ca.display());
        }
    }

    #[test]
    fn private_keys_are_private_and_certificates_public() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(dir.path()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki.server_key_path), 0o600);
        assert_eq!(mode(&pki.client_key_path), 0o600);
        assert_eq!(mode(&pki.ca_pem_path), 0o644);
        assert_eq!(mode(dir.path()), 0o755);
    }
}
