//! TLS over the wire: the worker's PostgreSQL and MySQL collectors against servers that
//! require TLS (server verification modes, client certificates, the CA file read again at
//! each connect), and the OTLP exporter against a TLS receiver over gRPC and HTTP.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use dbcollector_tests::{
    init_tracing, MariaDbOptions, MariaDbServer, OtlpOptions, OtlpReceiver, PgOptions, PgServer,
    Protocol, TestPki, CLIENT_NAME,
};
use dbcollector_worker::attrs;
use dbcollector_worker::config::{self, Config};
use dbcollector_worker::exporter::{Exporter, ExporterHandle};
use dbcollector_worker::metrics::{Batch, Descriptor, Point, Resource, Value};
use dbcollector_worker::pool::Endpoints;
use dbcollector_worker::receivers::{mysql, postgres, ErrorKind, ScrapeError, TargetSpec};
use dbcollector_worker::telemetry::{DropLabel, DropReason, Metrics, ResultLabel};
use sqlx::{Executor as _, Row as _};
use tempfile::TempDir;
use tokio::sync::OnceCell;

/// Password of every test login; read by the worker from a file.
const PASSWORD: &str = "tls-test-pw";

/// PostgreSQL group role whose members may only log in over TLS (see `pg`).
const TLS_ONLY: &str = "tls_only";

/// Long enough for any wait on a healthy loopback server; only reached on failure.
const PATIENCE: Duration = Duration::from_secs(30);

/// Installs the ring crypto provider as the process default (the workspace's provider)
/// and the test log. Safe to call from every test.
fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_tracing();
}

/// A string as a YAML double-quoted scalar (JSON strings are valid YAML).
fn q(text: impl AsRef<str>) -> String {
    serde_json::Value::String(text.as_ref().to_owned()).to_string()
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// The error and every cause below it, for messages and for telling TLS failures apart.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A password file for the worker, in its own directory.
fn password_file() -> anyhow::Result<(TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("password");
    std::fs::write(&path, PASSWORD)?;
    Ok((dir, path_str(&path)))
}

/// Database TLS settings as written in a target.
struct DbTlsYaml<'a> {
    mode: &'a str,
    ca_file: Option<&'a Path>,
    /// A CA PEM file named through a value source (`ca: { file }`) instead of `ca_file`.
    ca_source: Option<&'a Path>,
    identity: Option<(&'a Path, &'a Path)>,
}

impl<'a> DbTlsYaml<'a> {
    fn mode(mode: &'a str, ca_file: Option<&'a Path>) -> Self {
        Self {
            mode,
            ca_file,
            ca_source: None,
            identity: None,
        }
    }

    fn render(&self) -> String {
        let mut out = format!("      mode: {}\n", self.mode);
        if let Some(ca) = self.ca_file {
            out.push_str(&format!("      ca_file: {}\n", q(path_str(ca))));
        }
        if let Some(ca) = self.ca_source {
            out.push_str(&format!("      ca: {{ file: {} }}\n", q(path_str(ca))));
        }
        if let Some((cert, key)) = self.identity {
            out.push_str(&format!("      cert_file: {}\n", q(path_str(cert))));
            out.push_str(&format!("      key_file: {}\n", q(path_str(key))));
        }
        out
    }
}

/// Builds one target through the config file path: YAML, validation, defaults.
fn target(
    engine: &str,
    host: &str,
    port: u16,
    user: &str,
    password_file: &str,
    tls: &DbTlsYaml<'_>,
) -> anyhow::Result<TargetSpec> {
    let yaml = format!(
        "version: 1\n\
         defaults:\n  interval: 10s\n  connect_timeout: 5s\n\
         targets:\n\
         \x20 - name: tls-{engine}-{user}\n\
         \x20   engine: {engine}\n\
         \x20   host: {}\n\
         \x20   port: {port}\n\
         \x20   user: {}\n\
         \x20   password: {{ file: {} }}\n\
         \x20   tls:\n{}\
         exporter:\n  endpoint: http://127.0.0.1:4317\n",
        q(host),
        q(user),
        q(password_file),
        tls.render(),
    );
    let config = Config::from_yaml(&yaml).with_context(|| format!("config:\n{yaml}"))?;
    let mut specs = TargetSpec::resolve(&config);
    ensure!(specs.len() == 1, "expected one target, got {}", specs.len());
    Ok(specs.remove(0))
}

/// [`target`] on 127.0.0.1, where both test servers listen and which their certificates
/// name.
fn loopback_target(
    engine: &str,
    port: u16,
    user: &str,
    password_file: &str,
    tls: &DbTlsYaml<'_>,
) -> TargetSpec {
    target(engine, "127.0.0.1", port, user, password_file, tls).unwrap()
}

/// TLS settings of `mode` verifying against `ca`; `require` verifies no certificate, so it
/// is given no CA, to show it needs none.
fn verifying<'a>(mode: &'a str, ca: &'a Path) -> DbTlsYaml<'a> {
    DbTlsYaml::mode(mode, (mode != "require").then_some(ca))
}

fn endpoints(metrics: &Arc<Metrics>) -> Endpoints {
    Endpoints::new(config::Connections::default(), metrics.clone())
}

/// Asserts that a scrape succeeded, showing the whole error chain when it did not.
#[track_caller]
fn assert_scraped<T>(result: Result<T, ScrapeError>, what: &str) {
    if let Err(e) = result {
        panic!("{what}: the scrape failed: {}", chain(&e));
    }
}

/// Asserts that a scrape failed to connect, and returns the error text.
fn connect_failure<T>(result: Result<T, ScrapeError>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: the scrape succeeded"),
        Err(e) => {
            let text = chain(&e);
            assert_eq!(e.kind, ErrorKind::Connect, "{what}: {text}");
            text
        }
    }
}

/// Whether an error text is a failed certificate verification (rustls' wording), as
/// opposed to, say, a refused login.
fn is_certificate_error(text: &str) -> bool {
    text.contains("invalid peer certificate")
}

/// Whether an error text is a server certificate signed by a CA the client does not trust.
fn is_unknown_issuer(text: &str) -> bool {
    is_certificate_error(text) && text.contains("UnknownIssuer")
}

/// Whether an error text is a certificate that does not name the host connected to.
fn is_name_mismatch(text: &str) -> bool {
    is_certificate_error(text) && text.contains("not valid for name")
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// A PostgreSQL server with TLS on, listening on 127.0.0.1 and 127.0.0.2, and the PKI
/// that made its certificate.
struct PgTls {
    pki: TestPki,
    server: PgServer,
}

static PG: OnceCell<PgTls> = OnceCell::const_new();

/// The shared TLS PostgreSQL server. Members of `tls_only` log in with a password over
/// TLS only; role [`CLIENT_NAME`] must also present a client certificate whose common
/// name is its name. Each test uses roles of its own.
async fn pg() -> &'static PgTls {
    PG.get_or_init(|| async {
        let pki = TestPki::temporary().expect("generating the test PKI");
        let mut extra_conf = pki.postgres_conf().expect("installing the server key");
        // 127.0.0.2 is not among the certificate's names: verify-full must refuse it.
        extra_conf.push("listen_addresses = '127.0.0.1,127.0.0.2'".to_owned());
        let extra_hba = vec![
            format!("hostssl all {CLIENT_NAME} 127.0.0.0/8 scram-sha-256 clientcert=verify-full"),
            format!("hostnossl all {CLIENT_NAME} 127.0.0.0/8 reject"),
            format!("hostssl all +{TLS_ONLY} 127.0.0.0/8 scram-sha-256"),
            format!("hostnossl all +{TLS_ONLY} 127.0.0.0/8 reject"),
        ];
        let server = PgServer::start(PgOptions {
            extra_conf,
            extra_hba,
            create_pg_stat_statements: false,
            ..PgOptions::default()
        })
        .await
        .expect("starting postgres with TLS");

        let admin = server.admin_pool().await.expect("admin pool");
        for statement in [
            format!("CREATE ROLE {TLS_ONLY} NOLOGIN"),
            format!("CREATE ROLE {CLIENT_NAME} LOGIN PASSWORD '{PASSWORD}'"),
        ] {
            admin.execute(statement.as_str()).await.expect(&statement);
        }
        admin.close().await;
        PgTls { pki, server }
    })
    .await
}

/// Creates login role `name` that may connect over TLS only.
async fn pg_role(server: &PgServer, name: &str) -> anyhow::Result<()> {
    let admin = server.admin_pool().await?;
    admin
        .execute(
            format!("CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}' IN ROLE {TLS_ONLY}").as_str(),
        )
        .await?;
    admin.close().await;
    Ok(())
}

/// What `pg_stat_ssl` says about the worker's sessions of `role`: (ssl, TLS version,
/// client certificate DN), one row per session.
async fn pg_sessions(
    server: &PgServer,
    role: &str,
) -> anyhow::Result<Vec<(bool, Option<String>, Option<String>)>> {
    let admin = server.admin_pool().await?;
    let rows = sqlx::query(
        "SELECT s.ssl, s.version, s.client_dn \
         FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
         WHERE a.application_name = $1 AND a.usename = $2",
    )
    .bind(postgres::APPLICATION_NAME)
    .bind(role)
    .fetch_all(&admin)
    .await?;
    admin.close().await;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// Asserts that `role` has sessions and that every one of them is encrypted with TLS 1.x.
async fn assert_pg_encrypted(server: &PgServer, role: &str, what: &str) {
    let sessions = pg_sessions(server, role).await.unwrap();
    assert!(!sessions.is_empty(), "{what}: no session of {role} found");
    for (ssl, version, _) in &sessions {
        assert!(*ssl, "{what}: the session of {role} is not encrypted");
        assert!(
            version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
            "{what}: TLS version {version:?}"
        );
    }
}

fn pg_collector(spec: TargetSpec) -> postgres::Collector {
    let metrics = Arc::new(Metrics::unregistered());
    postgres::Collector::new(spec, &endpoints(&metrics), metrics)
}

#[tokio::test]
async fn postgres_sessions_are_encrypted_in_require_verify_ca_and_verify_full() {
    init();
    let fx = pg().await;
    let (_dir, password) = password_file().unwrap();

    for (role, mode) in [
        ("tls_pg_require", "require"),
        ("tls_pg_verify_ca", "verify-ca"),
        ("tls_pg_verify_full", "verify-full"),
    ] {
        pg_role(&fx.server, role).await.unwrap();
        let tls = verifying(mode, &fx.pki.ca_pem_path);
        let port = fx.server.port();
        let mut collector =
            pg_collector(loopback_target("postgresql", port, role, &password, &tls));

        assert_scraped(collector.scrape().await, mode);
        assert_pg_encrypted(&fx.server, role, mode).await;
        collector.close().await;
    }
}

#[tokio::test]
async fn postgres_plaintext_is_refused_for_tls_only_roles() {
    // The guard that makes the tests above meaningful: the same kind of role without TLS
    // does not get in at all.
    init();
    let fx = pg().await;
    let (_dir, password) = password_file().unwrap();
    pg_role(&fx.server, "tls_pg_plain").await.unwrap();
    let tls = DbTlsYaml::mode("disable", None);
    let spec = loopback_target(
        "postgresql",
        fx.server.port(),
        "tls_pg_plain",
        &password,
        &tls,
    );
    let mut collector = pg_collector(spec);

    let text = connect_failure(collector.scrape().await, "disable");
    assert!(text.contains("no encryption"), "{text}");
    collector.close().await;
}

#[tokio::test]
async fn postgres_verify_full_refuses_a_host_the_certificate_does_not_name() {
    init();
    let fx = pg().await;
    let (_dir, password) = password_file().unwrap();
    pg_role(&fx.server, "tls_pg_name").await.unwrap();
    let ca = Some(fx.pki.ca_pem_path.as_path());
    let spec = |host, mode| {
        target(
            "postgresql",
            host,
            fx.server.port(),
            "tls_pg_name",
            &password,
            &DbTlsYaml::mode(mode, ca),
        )
        .unwrap()
    };

    // The same server and chain by an address the certificate names: accepted.
    let mut collector = pg_collector(spec("127.0.0.1", "verify-full"));
    assert_scraped(collector.scrape().await, "verify-full via 127.0.0.1");
    collector.close().await;

    let mut collector = pg_collector(spec("127.0.0.2", "verify-full"));
    let text = connect_failure(collector.scrape().await, "verify-full via 127.0.0.2");
    assert!(is_name_mismatch(&text), "{text}");
    collector.close().await;

    // verify-ca is documented to skip the name check, but sqlx 0.8 (with rustls 0.23.24
    // and later) checks it anyway: its name-ignoring verifier does not recognise the
    // error variant newer rustls returns for a name mismatch. Stricter than documented,
    // never weaker. This pins that behaviour: when the driver is upgraded to one that
    // ignores the name, this fails and should be flipped to expect success.
    let mut collector = pg_collector(spec("127.0.0.2", "verify-ca"));
    let text = connect_failure(collector.scrape().await, "verify-ca via 127.0.0.2");
    assert!(is_name_mismatch(&text), "{text}");
    collector.close().await;
}

#[tokio::test]
async fn postgres_verify_ca_refuses_a_server_signed_by_another_ca() {
    init();
    let fx = pg().await;
    let (_dir, password) = password_file().unwrap();
    pg_role(&fx.server, "tls_pg_wrong_ca").await.unwrap();

    for mode in ["verify-ca", "verify-full"] {
        let tls = DbTlsYaml::mode(mode, Some(&fx.pki.other_ca_pem_path));
        let spec = loopback_target(
            "postgresql",
            fx.server.port(),
            "tls_pg_wrong_ca",
            &password,
            &tls,
        );
        let mut collector = pg_collector(spec);
        let text = connect_failure(collector.scrape().await, mode);
        assert!(is_unknown_issuer(&text), "{mode}: {text}");
        collector.close().await;
    }
    assert!(pg_sessions(&fx.server, "tls_pg_wrong_ca")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn postgres_verify_full_with_the_ca_pem_from_a_value_source_is_encrypted() {
    init();
    let fx = pg().await;
    let (_dir, password) = password_file().unwrap();
    let role = "tls_pg_ca_source";
    pg_role(&fx.server, role).await.unwrap();
    let spec = |ca: &'static Path| {
        let tls = DbTlsYaml {
            ca_source: Some(ca),
            ..DbTlsYaml::mode("verify-full", None)
        };
        loopback_target("postgresql", fx.server.port(), role, &password, &tls)
    };

    // The PEM content is what verifies: another CA's is refused.
    let mut collector = pg_collector(spec(&fx.pki.other_ca_pem_path));
    let text = connect_failure(collector.scrape().await, "another CA");
    assert!(is_unknown_issuer(&text), "{text}");
    collector.close().await;
    assert!(pg_sessions(&fx.server, role).await.unwrap().is_empty());

    let mut collector = pg_collector(spec(&fx.pki.ca_pem_path));
    assert_scraped(collector.scrape().await, "the right CA");
    assert_pg_encrypted(&fx.server, role, "the right CA").await;
    collector.close().await;
}

#[tokio::test]
async fn postgres_client_certificate_is_presented_when_the_server_requires_one() {
    init();
    let fx = pg().await;
    let (_dir, password) = password_file().unwrap();
    let ca = Some(fx.pki.ca_pem_path.as_path());

    // Without a certificate the server refuses the role (hba clientcert=verify-full).
    let tls = DbTlsYaml::mode("verify-full", ca);
    let spec = loopback_target("postgresql", fx.server.port(), CLIENT_NAME, &password, &tls);
    let mut collector = pg_collector(spec);
    let text = connect_failure(collector.scrape().await, "no client certificate");
    assert!(text.contains("certificate"), "{text}");
    collector.close().await;

    let tls = DbTlsYaml {
        identity: Some((&fx.pki.client_cert_path, &fx.pki.client_key_path)),
        ..DbTlsYaml::mode("verify-full", ca)
    };
    let spec = loopback_target("postgresql", fx.server.port(), CLIENT_NAME, &password, &tls);
    let mut collector = pg_collector(spec);
    assert_scraped(collector.scrape().await, "with a client certificate");
    let sessions = pg_sessions(&fx.server, CLIENT_NAME).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let (ssl, _, client_dn) = &sessions[0];
    assert!(*ssl);
    assert_eq!(
        client_dn.as_deref(),
        Some(format!("/CN={CLIENT_NAME}").as_str())
    );
    collector.close().await;
}

#[tokio::test]
async fn postgres_ca_file_is_read_again_at_each_connect() {
    init();
    let fx = pg().await;
    let (dir, password) = password_file().unwrap();
    pg_role(&fx.server, "tls_pg_reread").await.unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::copy(&fx.pki.other_ca_pem_path, &ca_path).unwrap();
    let tls = DbTlsYaml::mode("verify-ca", Some(&ca_path));
    let spec = loopback_target(
        "postgresql",
        fx.server.port(),
        "tls_pg_reread",
        &password,
        &tls,
    );
    let mut collector = pg_collector(spec);

    // The file names the wrong CA: no connection.
    let text = connect_failure(collector.scrape().await, "wrong CA in the file");
    assert!(is_unknown_issuer(&text), "{text}");

    // The right CA written to the same path is used by the next connect of the same
    // collector.
    std::fs::copy(&fx.pki.ca_pem_path, &ca_path).unwrap();
    assert_scraped(collector.scrape().await, "right CA in the file");
    let sessions = pg_sessions(&fx.server, "tls_pg_reread").await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(sessions[0].0);

    // And back: an open connection keeps working, but once the server ends it, the
    // reconnect reads the file again and refuses the server.
    std::fs::copy(&fx.pki.other_ca_pem_path, &ca_path).unwrap();
    let admin = fx.server.admin_pool().await.unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
         WHERE application_name = $1 AND usename = $2",
    )
    .bind(postgres::APPLICATION_NAME)
    .bind("tls_pg_reread")
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(terminated, [true]);
    admin.close().await;

    let text = connect_failure(collector.scrape().await, "wrong CA after reconnect");
    assert!(is_unknown_issuer(&text), "{text}");
    collector.close().await;
}

// ---------------------------------------------------------------------------------------
// MariaDB
// ---------------------------------------------------------------------------------------

/// A MariaDB server with TLS on, and the PKI that made its certificate.
struct MariaTls {
    pki: TestPki,
    server: MariaDbServer,
}

static MARIADB: OnceCell<MariaTls> = OnceCell::const_new();

async fn mariadb() -> &'static MariaTls {
    MARIADB
        .get_or_init(|| async {
            let pki = TestPki::temporary().expect("generating the test PKI");
            let extra_args = pki.mariadb_args().expect("installing the server key");
            let server = MariaDbServer::start(MariaDbOptions {
                extra_args,
                ..MariaDbOptions::default()
            })
            .await
            .expect("starting mariadb with TLS");
            MariaTls { pki, server }
        })
        .await
}

/// Creates `name`@`%`, which must connect over TLS (`REQUIRE SSL`), with the grants of a
/// monitoring user.
async fn mariadb_user(server: &MariaDbServer, name: &str) -> anyhow::Result<()> {
    server.create_user(name, PASSWORD).await?;
    let admin = server.admin_pool().await?;
    for statement in [
        format!("ALTER USER '{name}'@'%' REQUIRE SSL"),
        format!("GRANT PROCESS ON *.* TO '{name}'@'%'"),
        format!("GRANT SELECT ON performance_schema.* TO '{name}'@'%'"),
    ] {
        admin.execute(statement.as_str()).await?;
    }
    admin.close().await;
    Ok(())
}

/// The `Ssl_cipher` of every session of `user`, from performance_schema (the session
/// status of another connection is not visible to `SHOW STATUS`).
async fn mariadb_ciphers(server: &MariaDbServer, user: &str) -> anyhow::Result<Vec<String>> {
    let admin = server.admin_pool().await?;
    let ciphers = sqlx::query_scalar(
        "SELECT s.VARIABLE_VALUE FROM performance_schema.status_by_thread s \
         JOIN performance_schema.threads t ON t.THREAD_ID = s.THREAD_ID \
         WHERE t.PROCESSLIST_USER = ? AND s.VARIABLE_NAME = 'Ssl_cipher'",
    )
    .bind(user)
    .fetch_all(&admin)
    .await?;
    admin.close().await;
    Ok(ciphers)
}

fn mysql_collector(spec: TargetSpec) -> mysql::Collector {
    let metrics = Arc::new(Metrics::unregistered());
    mysql::Collector::new(spec, &endpoints(&metrics), metrics)
}

#[tokio::test]
async fn mysql_sessions_are_encrypted_in_require_verify_ca_and_verify_full() {
    init();
    let fx = mariadb().await;
    let (_dir, password) = password_file().unwrap();

    for (user, mode) in [
        ("tls_my_require", "require"),
        ("tls_my_verify_ca", "verify-ca"),
        ("tls_my_verify_full", "verify-full"),
    ] {
        mariadb_user(&fx.server, user).await.unwrap();
        let tls = verifying(mode, &fx.pki.ca_pem_path);
        let port = fx.server.port();
        let mut collector = mysql_collector(loopback_target("mysql", port, user, &password, &tls));

        assert_scraped(collector.scrape().await, mode);
        let ciphers = mariadb_ciphers(&fx.server, user).await.unwrap();
        assert!(!ciphers.is_empty(), "{mode}: no session of {user} found");
        for cipher in &ciphers {
            assert!(
                !cipher.is_empty(),
                "{mode}: the session of {user} is not encrypted"
            );
        }
        collector.close().await;
    }
}

#[tokio::test]
async fn mysql_plaintext_is_refused_for_users_that_require_ssl() {
    init();
    let fx = mariadb().await;
    let (_dir, password) = password_file().unwrap();
    mariadb_user(&fx.server, "tls_my_plain").await.unwrap();
    let tls = DbTlsYaml::mode("disable", None);
    let spec = loopback_target("mysql", fx.server.port(), "tls_my_plain", &password, &tls);
    let mut collector = mysql_collector(spec);

    let text = connect_failure(collector.scrape().await, "disable");
    assert!(text.contains("Access denied"), "{text}");
    collector.close().await;
}

#[tokio::test]
async fn mysql_verify_ca_refuses_a_server_signed_by_another_ca() {
    init();
    let fx = mariadb().await;
    let (_dir, password) = password_file().unwrap();
    mariadb_user(&fx.server, "tls_my_wrong_ca").await.unwrap();
    let tls = DbTlsYaml::mode("verify-ca", Some(&fx.pki.other_ca_pem_path));
    let spec = loopback_target(
        "mysql",
        fx.server.port(),
        "tls_my_wrong_ca",
        &password,
        &tls,
    );
    let mut collector = mysql_collector(spec);

    let text = connect_failure(collector.scrape().await, "verify-ca with another CA");
    assert!(is_unknown_issuer(&text), "{text}");
    assert!(mariadb_ciphers(&fx.server, "tls_my_wrong_ca")
        .await
        .unwrap()
        .is_empty());
    collector.close().await;
}

// ---------------------------------------------------------------------------------------
// OTLP exporter
// ---------------------------------------------------------------------------------------

static GAUGE: Descriptor = Descriptor::gauge("dbcollector.test.tls", "1", "A test gauge.");

/// Points per test batch.
const POINTS: usize = 3;

/// A batch of [`POINTS`] gauge points tagged `tag`.
fn batch(tag: &str) -> Batch {
    let resource = Arc::new(Resource {
        attrs: attrs!("dbcollector.target" => "tls"),
    });
    let mut batch = Batch::new("tls".into(), resource);
    batch.points = (0..POINTS)
        .map(|i| Point {
            desc: &GAUGE,
            attrs: attrs!("tag" => tag, "i" => i as i64),
            value: Value::Int(1),
            start_unix_nanos: 0,
            time_unix_nanos: 1_700_000_000_000_000_000,
        })
        .collect();
    batch
}

/// Exporter TLS files as written in the config.
struct ExporterTlsYaml<'a> {
    ca_file: &'a Path,
    identity: Option<(&'a Path, &'a Path)>,
}

/// Builds `exporter` through the config file path, with fast retries that give a batch up
/// after 1 s.
fn exporter_config(
    endpoint: &str,
    protocol: Protocol,
    tls: &ExporterTlsYaml<'_>,
) -> anyhow::Result<config::Exporter> {
    let protocol = match protocol {
        Protocol::Grpc => "grpc",
        Protocol::Http => "http/protobuf",
    };
    let mut tls_yaml = format!("    ca_file: {}\n", q(path_str(tls.ca_file)));
    if let Some((cert, key)) = tls.identity {
        tls_yaml.push_str(&format!("    cert_file: {}\n", q(path_str(cert))));
        tls_yaml.push_str(&format!("    key_file: {}\n", q(path_str(key))));
    }
    let yaml = format!(
        "version: 1\n\
         exporter:\n\
         \x20 endpoint: {}\n\
         \x20 protocol: {}\n\
         \x20 timeout: 5s\n\
         \x20 tls:\n{tls_yaml}\
         \x20 retry: {{ initial_backoff: 10ms, max_backoff: 50ms, max_elapsed: 1s }}\n\
         \x20 queue: {{ concurrency: 1, shutdown_timeout: 10s }}\n",
        q(endpoint),
        q(protocol),
    );
    Ok(Config::from_yaml(&yaml)
        .with_context(|| format!("config:\n{yaml}"))?
        .exporter)
}

fn start_exporter(config: &config::Exporter) -> anyhow::Result<(ExporterHandle, Arc<Metrics>)> {
    let metrics = Arc::new(Metrics::unregistered());
    let exporter = Exporter::start(config, "worker-tls", metrics.clone())?;
    Ok((exporter, metrics))
}

fn endpoint(receiver: &OtlpReceiver, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => receiver.grpc_endpoint(),
        Protocol::Http => receiver.http_endpoint(),
    }
}

fn dropped(metrics: &Metrics, reason: DropReason) -> u64 {
    metrics
        .points_dropped
        .get_or_create(&DropLabel { reason })
        .get()
}

fn requests(metrics: &Metrics, result: &'static str) -> u64 {
    metrics
        .export_requests
        .get_or_create(&ResultLabel { result })
        .get()
}

/// Sends one batch over TLS and checks that the receiver got exactly its points.
async fn delivers(protocol: Protocol, mutual: bool) -> anyhow::Result<()> {
    init();
    let pki = TestPki::temporary()?;
    let receiver = OtlpReceiver::start(OtlpOptions {
        tls: Some(pki.receiver_tls(mutual)),
        ..OtlpOptions::default()
    })
    .await?;
    let endpoint = endpoint(&receiver, protocol);
    ensure!(endpoint.starts_with("https://"), "{endpoint}");
    let tls = ExporterTlsYaml {
        ca_file: &pki.ca_pem_path,
        identity: mutual.then_some((
            pki.client_cert_path.as_path(),
            pki.client_key_path.as_path(),
        )),
    };
    let (exporter, metrics) = start_exporter(&exporter_config(&endpoint, protocol, &tls)?)?;

    exporter.send(batch("delivered"));
    let points = receiver
        .wait_for_points(|p| p.len() >= POINTS, PATIENCE)
        .await?;
    exporter.shutdown().await;

    ensure!(points.len() == POINTS, "{}", receiver.summary());
    for p in &points {
        ensure!(p.protocol == protocol, "arrived over {:?}", p.protocol);
        ensure!(p.attr("tag") == Some("delivered"), "{:?}", p.attrs);
    }
    ensure!(metrics.points_exported.get() == POINTS as u64);
    ensure!(dropped(&metrics, DropReason::ExportFailed) == 0);
    Ok(())
}

/// Sends one batch to a receiver the exporter cannot complete a handshake with, and
/// checks that nothing arrives and the batch is retried, then dropped as failed.
async fn is_refused(
    protocol: Protocol,
    ca_file: &Path,
    receiver: &OtlpReceiver,
) -> anyhow::Result<()> {
    let tls = ExporterTlsYaml {
        ca_file,
        identity: None,
    };
    let endpoint = endpoint(receiver, protocol);
    let (exporter, metrics) = start_exporter(&exporter_config(&endpoint, protocol, &tls)?)?;

    exporter.send(batch("refused"));
    let deadline = Instant::now() + PATIENCE;
    while dropped(&metrics, DropReason::ExportFailed) < POINTS as u64 {
        ensure!(Instant::now() < deadline, "the batch was never given up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    exporter.shutdown().await;

    ensure!(dropped(&metrics, DropReason::ExportFailed) == POINTS as u64);
    ensure!(metrics.points_exported.get() == 0);
    ensure!(requests(&metrics, "success") == 0);
    // The receiver never answered, so the exporter retried (as for any connection
    // failure) until `retry.max_elapsed` and then gave the batch up.
    ensure!(
        requests(&metrics, "retryable") >= 1 && requests(&metrics, "permanent") == 0,
        "retryable {}, permanent {}",
        requests(&metrics, "retryable"),
        requests(&metrics, "permanent")
    );
    ensure!(receiver.requests().is_empty(), "{}", receiver.summary());
    Ok(())
}

#[tokio::test]
async fn exporter_delivers_over_grpc_tls_verified_with_the_configured_ca() {
    delivers(Protocol::Grpc, false).await.unwrap();
}

#[tokio::test]
async fn exporter_delivers_over_http_tls_verified_with_the_configured_ca() {
    delivers(Protocol::Http, false).await.unwrap();
}

#[tokio::test]
async fn exporter_presents_its_client_certificate_over_grpc() {
    delivers(Protocol::Grpc, true).await.unwrap();
}

#[tokio::test]
async fn exporter_presents_its_client_certificate_over_http() {
    delivers(Protocol::Http, true).await.unwrap();
}

async fn refused_without_client_certificate(protocol: Protocol) -> anyhow::Result<()> {
    init();
    let pki = TestPki::temporary()?;
    let receiver = OtlpReceiver::start(OtlpOptions {
        tls: Some(pki.receiver_tls(true)),
        ..OtlpOptions::default()
    })
    .await?;
    is_refused(protocol, &pki.ca_pem_path, &receiver).await
}

async fn refused_with_another_ca(protocol: Protocol) -> anyhow::Result<()> {
    init();
    let pki = TestPki::temporary()?;
    let receiver = OtlpReceiver::start(OtlpOptions {
        tls: Some(pki.receiver_tls(false)),
        ..OtlpOptions::default()
    })
    .await?;
    is_refused(protocol, &pki.other_ca_pem_path, &receiver).await
}

#[tokio::test]
async fn exporter_without_a_client_certificate_is_refused_by_a_mutual_tls_grpc_receiver() {
    refused_without_client_certificate(Protocol::Grpc)
        .await
        .unwrap();
}

#[tokio::test]
async fn exporter_without_a_client_certificate_is_refused_by_a_mutual_tls_http_receiver() {
    refused_without_client_certificate(Protocol::Http)
        .await
        .unwrap();
}

#[tokio::test]
async fn exporter_refuses_a_grpc_receiver_signed_by_another_ca() {
    refused_with_another_ca(Protocol::Grpc).await.unwrap();
}

#[tokio::test]
async fn exporter_refuses_an_http_receiver_signed_by_another_ca() {
    refused_with_another_ca(Protocol::Http).await.unwrap();
}
