//! Config parsing and validation tests: every error names its field.

use super::*;

const MINIMAL: &str = "
version: 1
exporter:
  endpoint: http://127.0.0.1:4317
targets:
  - name: pg-main
    engine: postgresql
    host: 127.0.0.1
    user: monitor
    password: { env: PGPASSWORD }
";

fn err(text: &str) -> String {
    Config::from_yaml(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.defaults.interval, Duration::from_secs(30));
    assert_eq!(c.targets[0].port(), 5432);
    assert_eq!(c.targets[0].tls.mode, TlsMode::Disable);
    assert_eq!(c.exporter.protocol, Protocol::Grpc);
    assert_eq!(c.exporter.compression, Compression::Gzip);
    assert_eq!(c.connections.max_per_server, 10);
    assert_eq!(
        c.targets[0].password,
        Some(ValueSource::Env("PGPASSWORD".into()))
    );
}

#[test]
fn unknown_field_is_an_error_naming_its_path_and_line() {
    let text = MINIMAL.replace("    user: monitor", "    user: monitor\n    passwrd: x");
    let e = err(&text);
    assert!(
        e.starts_with("targets[0].passwrd: unknown field `passwrd`"),
        "{e}"
    );
    assert!(e.contains("(line 10)"), "{e}");
}

#[test]
fn wrong_enum_value_names_the_nested_field() {
    let text = MINIMAL.replace(
        "    user: monitor",
        "    user: monitor\n    tls: { mode: verify }",
    );
    let e = err(&text);
    assert!(
        e.starts_with("targets[0].tls.mode: unknown variant `verify`"),
        "{e}"
    );
}

#[test]
fn bad_duration_names_the_field() {
    let text = MINIMAL.replace("version: 1", "version: 1\ndefaults: { interval: soon }");
    assert!(
        err(&text).starts_with("defaults.interval: "),
        "{}",
        err(&text)
    );
}

#[test]
fn yaml_syntax_error_reports_the_line() {
    let e = err("version: 1\nexporter:\n  endpoint: [unclosed\n");
    assert!(e.contains("line"), "{e}");
}

#[test]
fn newer_format_is_reported_as_such() {
    let text = MINIMAL.replace("version: 1", "version: 2\nfuture_field: true");
    assert_eq!(
        err(&text),
        "version: config format 2 is newer than this worker supports (1)"
    );
}

#[test]
fn missing_version_is_an_error() {
    let text = MINIMAL.replace("version: 1\n", "");
    assert!(err(&text).starts_with("version: missing"), "{}", err(&text));
}

#[test]
fn duplicate_target_names_are_refused() {
    let text =
        format!("{MINIMAL}  - name: pg-main\n    engine: mysql\n    host: db\n    user: u\n");
    assert_eq!(
        err(&text),
        "targets[1].name: duplicate target name \"pg-main\""
    );
}

#[test]
fn invalid_target_name_is_refused() {
    let text = MINIMAL.replace("name: pg-main", "name: PG Main");
    assert!(
        err(&text).starts_with("targets[0].name: must be 1 to 63"),
        "{}",
        err(&text)
    );
}

#[test]
fn databases_and_discover_are_exclusive() {
    let text = MINIMAL.replace(
        "    user: monitor",
        "    user: monitor\n    databases: [a]\n    discover: { include: ['*'] }",
    );
    assert_eq!(
        err(&text),
        "targets[0].databases: set either databases or discover, not both"
    );
}

#[test]
fn query_timeout_must_be_below_interval() {
    let text = MINIMAL.replace(
        "    user: monitor",
        "    user: monitor\n    interval: 2s\n    query_timeout: 2s",
    );
    assert!(
        err(&text).starts_with("targets[0].query_timeout:"),
        "{}",
        err(&text)
    );
}

#[test]
fn verify_modes_need_a_ca_file() {
    let text = MINIMAL.replace(
        "    user: monitor",
        "    user: monitor\n    tls: { mode: verify-full }",
    );
    assert_eq!(
        err(&text),
        "targets[0].tls.ca_file: (or tls.ca) is required by verify-ca and verify-full"
    );
    let text = MINIMAL.replace(
        "    user: monitor",
        "    user: monitor\n    tls: { mode: verify-full, ca: { secret: { name: pg-ca, key: ca.crt } } }",
    );
    assert!(
        Config::from_yaml(&text).is_ok(),
        "a CA from a Secret is enough"
    );
}

#[test]
fn tls_pem_sources_are_exclusive_with_their_files() {
    for (field, tls) in [
        ("ca", "ca_file: /ca.pem, ca: { file: /ca.pem }"),
        (
            "cert",
            "cert_file: /c.pem, cert: { env: CERT }, key: { env: KEY }",
        ),
        (
            "key",
            "cert: { env: CERT }, key_file: /k.pem, key: { env: KEY }",
        ),
    ] {
        let text = MINIMAL.replace(
            "    user: monitor",
            &format!("    user: monitor\n    tls: {{ mode: require, {tls} }}"),
        );
        assert_eq!(
            err(&text),
            format!("targets[0].tls.{field}: is exclusive with {field}_file")
        );
        let text = MINIMAL.replace(
            "http://127.0.0.1:4317",
            &format!("https://127.0.0.1:4317\n  tls: {{ {tls} }}"),
        );
        assert_eq!(
            err(&text),
            format!("exporter.tls.{field}: is exclusive with {field}_file")
        );
    }
}

#[test]
fn a_client_certificate_source_needs_a_key() {
    let text = MINIMAL.replace(
        "    user: monitor",
        "    user: monitor\n    tls: { mode: require, cert: { env: CERT } }",
    );
    assert!(
        err(&text).starts_with("targets[0].tls.key: a client certificate"),
        "{}",
        err(&text)
    );
}

#[test]
fn tls_pem_secrets_are_listed() {
    let text = MINIMAL
        .replace(
            "    user: monitor",
            "    user: monitor\n    tls:\n      mode: verify-full\n      \
             ca: { secret: { name: pg-ca, key: ca.crt } }\n      \
             cert: { secret: { name: pg-client, key: tls.crt } }\n      \
             key: { secret: { name: pg-client, key: tls.key } }",
        )
        .replace(
            "http://127.0.0.1:4317",
            "https://127.0.0.1:4317\n  tls: { ca: { secret: { name: otlp-ca, key: ca.crt } } }",
        );
    let c = Config::from_yaml(&text).unwrap();
    assert_eq!(
        c.secret_names().into_iter().collect::<Vec<_>>(),
        ["otlp-ca", "pg-ca", "pg-client"]
    );
}

#[test]
fn exporter_endpoint_must_be_http_or_https() {
    let text = MINIMAL.replace("http://127.0.0.1:4317", "127.0.0.1:4317");
    assert!(
        err(&text).starts_with("exporter.endpoint:"),
        "{}",
        err(&text)
    );
}

#[test]
fn exporter_endpoint_must_not_carry_credentials() {
    let text = MINIMAL.replace("http://127.0.0.1:4317", "http://user:secret@127.0.0.1:4317");
    let e = err(&text);
    assert!(
        e.starts_with("exporter.endpoint: must not carry credentials"),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
}

#[test]
fn two_explicit_carriers_on_one_endpoint_are_refused() {
    let text = format!(
        "{MINIMAL}    server_wide: carrier\n  - name: pg-b\n    engine: postgresql\n    host: 127.0.0.1\n    user: u\n    server_wide: carrier\n"
    );
    assert!(
        err(&text).starts_with("targets[1].server_wide:"),
        "{}",
        err(&text)
    );
}

#[test]
fn inline_password_is_refused_without_being_repeated() {
    for inline in ["hunter2", "'p@ss:w%rd#1;x=y?&'", "12345", "[a, b]"] {
        let text = MINIMAL.replace(
            "password: { env: PGPASSWORD }",
            &format!("password: {inline}"),
        );
        let e = err(&text);
        assert!(
            e.starts_with("targets[0].password: inline values are not accepted"),
            "{e}"
        );
        let bare = inline.trim_matches(|c| c == '\'' || c == '[' || c == ']');
        assert!(!e.contains(bare), "the value leaked: {e}");
    }
    let text = MINIMAL.replace(
        "  endpoint: http://127.0.0.1:4317",
        "  endpoint: http://127.0.0.1:4317\n  headers: { x-api-key: s3cr3t-k3y }",
    );
    let e = err(&text);
    assert!(
        e.starts_with("exporter.headers.x-api-key: inline values"),
        "{e}"
    );
    assert!(!e.contains("s3cr3t"), "{e}");
}

#[test]
fn secret_sources_parse_and_are_listed() {
    let text = MINIMAL.replace(
        "password: { env: PGPASSWORD }",
        "password: { secret: { name: pg-monitor, key: password } }",
    );
    let c = Config::from_yaml(&text).unwrap();
    assert_eq!(
        c.targets[0].password,
        Some(ValueSource::Secret {
            name: "pg-monitor".into(),
            key: "password".into()
        })
    );
    assert_eq!(
        c.secret_names().into_iter().collect::<Vec<_>>(),
        ["pg-monitor"]
    );
    let text = MINIMAL.replace(
        "password: { env: PGPASSWORD }",
        "password: { env: A, file: /b }",
    );
    assert!(err(&text).contains("set exactly one of"), "{}", err(&text));
}

#[test]
fn lowest_auto_name_carries_unless_a_carrier_is_named() {
    let text = format!(
        "{MINIMAL}  - name: pg-a\n    engine: postgresql\n    host: 127.0.0.1\n    user: u\n  - name: pg-other\n    engine: postgresql\n    host: 127.0.0.2\n    user: u\n"
    );
    let c = Config::from_yaml(&text).unwrap();
    let specs = crate::receivers::TargetSpec::resolve(&c);
    let carriers: Vec<_> = specs
        .iter()
        .filter(|s| s.carrier)
        .map(|s| &*s.name)
        .collect();
    assert_eq!(carriers, ["pg-a", "pg-other"]);

    let text = text.replace(
        "    password: { env: PGPASSWORD }",
        "    password: { env: PGPASSWORD }\n    server_wide: carrier",
    );
    let c = Config::from_yaml(&text).unwrap();
    let specs = crate::receivers::TargetSpec::resolve(&c);
    let carriers: Vec<_> = specs
        .iter()
        .filter(|s| s.carrier)
        .map(|s| &*s.name)
        .collect();
    assert_eq!(carriers, ["pg-main", "pg-other"]);
}

#[test]
fn documented_example_config_is_valid() {
    let text = include_str!("../../../docs/example-config.yaml");
    let c = Config::from_yaml(text).unwrap();
    assert_eq!(c.targets.len(), 3);
    let specs = crate::receivers::TargetSpec::resolve(&c);
    let carriers: Vec<_> = specs
        .iter()
        .filter(|s| s.carrier)
        .map(|s| &*s.name)
        .collect();
    assert_eq!(carriers, ["orders-pg", "shop-mariadb"]);
}

#[test]
fn default_query_timeout_follows_a_short_interval() {
    let text = MINIMAL.replace("    user: monitor", "    user: monitor\n    interval: 2s");
    let c = Config::from_yaml(&text).unwrap();
    let specs = crate::receivers::TargetSpec::resolve(&c);
    assert_eq!(specs[0].query_timeout, Duration::from_secs(1));
}

#[test]
fn zero_and_inverted_durations_are_refused() {
    let cases = [
        (
            "connections: { acquire_timeout: 0s }",
            "connections.acquire_timeout: must be above 0",
        ),
        (
            "pipeline: { sampler: { key_ttl: 0s } }",
            "pipeline.sampler.key_ttl: must be above 0",
        ),
        (
            "pipeline: { breaker: { base_open: 10m, max_open: 1s } }",
            "pipeline.breaker.base_open: must be at most pipeline.breaker.max_open",
        ),
        (
            "pipeline: { workers: 100000000 }",
            "pipeline.workers: must be at most 1024",
        ),
        (
            "telemetry: { log_level: 'verbose[[[' }",
            "telemetry.log_level: is not a valid filter",
        ),
    ];
    for (extra, expected) in cases {
        let text = format!("{MINIMAL}{extra}\n");
        assert!(err(&text).starts_with(expected), "{extra}: {}", err(&text));
    }
}

#[test]
fn a_byte_order_mark_is_ignored() {
    assert!(Config::from_yaml(&format!("\u{feff}{MINIMAL}")).is_ok());
}
