//! Self-tests of the harness: real servers start, fill the statistics the collector reads,
//! enforce passwords and come back after a crash; the OTLP receiver decodes both
//! transports and injects faults.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dbcollector_tests::{
    eventually, init_tracing, Blackhole, Fault, Kind, MariaDbOptions, MariaDbServer, OtlpOptions,
    OtlpReceiver, Outcome, PgOptions, PgServer, Protocol, Temporality,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions as _, Connection as _};
use tonic::codec::CompressionEncoding;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn postgres_tracks_statements_enforces_passwords_and_survives_crash_and_restart(
) -> anyhow::Result<()> {
    init_tracing();
    let started = Instant::now();
    let mut pg = PgServer::start(PgOptions::default()).await?;
    eprintln!("postgres start took {:?}", started.elapsed());

    let pool = pg.admin_pool().await?;
    sqlx::query("CREATE TABLE selftest_items (id int PRIMARY KEY, name text)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO selftest_items SELECT g, 'item ' || g FROM generate_series(1, 100) g")
        .execute(&pool)
        .await?;
    let above: i64 = sqlx::query_scalar("SELECT count(*) FROM selftest_items WHERE id > $1")
        .bind(10)
        .fetch_one(&pool)
        .await?;
    assert_eq!(above, 90);

    let statements: Vec<(String, i64)> = sqlx::query_as(
        "SELECT query, calls FROM pg_stat_statements WHERE query LIKE '%selftest_items%'",
    )
    .fetch_all(&pool)
    .await?;
    assert!(
        statements
            .iter()
            .any(|(query, calls)| query.contains("id > $1") && *calls >= 1),
        "pg_stat_statements lacks the count query: {statements:?}"
    );
    let max: String = sqlx::query_scalar("SHOW pg_stat_statements.max")
        .fetch_one(&pool)
        .await?;
    assert_eq!(max, "10000");
    let io_timing: String = sqlx::query_scalar("SHOW track_io_timing")
        .fetch_one(&pool)
        .await?;
    assert_eq!(io_timing, "on");
    pool.close().await;

    // Only the superuser is trusted; other roles must present their password.
    pg.create_login_role("monitor", "s3cr't pw").await?;
    let wrong = pg
        .connect_options("monitor", Some("wrong"), "postgres")
        .connect()
        .await;
    assert!(wrong.is_err(), "a wrong password was accepted");
    let no_password = pg
        .connect_options("monitor", None, "postgres")
        .connect()
        .await;
    assert!(no_password.is_err(), "a missing password was accepted");
    let mut monitor = pg
        .connect_options("monitor", Some("s3cr't pw"), "postgres")
        .connect()
        .await?;
    let user: String = sqlx::query_scalar("SELECT current_user")
        .fetch_one(&mut monitor)
        .await?;
    assert_eq!(user, "monitor");
    monitor.close().await?;
    let mut by_url =
        PgConnection::connect(&pg.url("monitor", Some("s3cr't pw"), "postgres")).await?;
    by_url.ping().await?;
    by_url.close().await?;

    // A crash, then a restart on the same port and data.
    let port = pg.port();
    pg.kill().await?;
    assert!(
        pg.admin_options().connect().await.is_err(),
        "killed server still answers"
    );
    let restarted = Instant::now();
    pg.start_again().await?;
    eprintln!("postgres restart after kill took {:?}", restarted.elapsed());
    assert_eq!(pg.port(), port);
    let mut conn = pg.admin_options().connect().await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM selftest_items")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(rows, 100);
    conn.close().await?;

    // A clean stop and start.
    pg.stop().await?;
    assert!(
        pg.admin_options().connect().await.is_err(),
        "stopped server still answers"
    );
    pg.start_again().await?;
    let pool = pg.admin_pool().await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM selftest_items")
        .fetch_one(&pool)
        .await?;
    assert_eq!(rows, 100);
    assert!(
        pg.log().contains("database system was interrupted"),
        "no crash recovery logged"
    );
    Ok(())
}

#[tokio::test]
async fn mariadb_fills_performance_schema_and_survives_crash_and_restart() -> anyhow::Result<()> {
    init_tracing();
    let started = Instant::now();
    let mut db = MariaDbServer::start(MariaDbOptions::default()).await?;
    eprintln!("mariadb start took {:?}", started.elapsed());

    // Digests only cover the text protocol: `sqlx::query` (a prepared statement, binary
    // protocol) never shows up in events_statements_summary_by_digest on MariaDB. One
    // statement per call: a multi-statement text gets the first statement's digest for all.
    let pool = db.admin_pool().await?;
    for statement in [
        "CREATE DATABASE selftest",
        "CREATE TABLE selftest.items (id INT PRIMARY KEY, label VARCHAR(40), KEY by_label (label))",
        "INSERT INTO selftest.items VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        "UPDATE selftest.items SET label = 'z' WHERE id = 3",
    ] {
        sqlx::raw_sql(statement).execute(&pool).await?;
    }
    let labelled = sqlx::raw_sql("SELECT id FROM selftest.items WHERE label = 'a'")
        .fetch_all(&pool)
        .await?;
    assert_eq!(labelled.len(), 1);

    // MariaDB aggregates these summaries only after answering the client.
    let digest_query = "SELECT digest_text, count_star \
                        FROM performance_schema.events_statements_summary_by_digest \
                        WHERE digest_text LIKE '%selftest%'";
    let digests = eventually("a digest of the select", WAIT, || async {
        let digests: Vec<(Option<String>, u64)> =
            sqlx::query_as(digest_query).fetch_all(&pool).await?;
        let found = digests.iter().any(|(text, count)| {
            text.as_deref()
                .is_some_and(|t| t.contains("WHERE `label` = ?"))
                && *count >= 1
        });
        Ok(found.then_some(digests))
    })
    .await?;
    assert!(digests
        .iter()
        .any(|(text, _)| text.as_deref().is_some_and(|t| t.starts_with("UPDATE"))));

    let table_io = eventually("table I/O of selftest.items", WAIT, || async {
        let count: Option<u64> = sqlx::query_scalar(
            "SELECT count_star FROM performance_schema.table_io_waits_summary_by_table \
             WHERE object_schema = 'selftest' AND object_name = 'items'",
        )
        .fetch_optional(&pool)
        .await?;
        Ok(count.filter(|count| *count > 0))
    })
    .await?;
    assert!(table_io > 0);
    eventually("index I/O of selftest.items.by_label", WAIT, || async {
        let count: Option<u64> = sqlx::query_scalar(
            "SELECT count_star FROM performance_schema.table_io_waits_summary_by_index_usage \
             WHERE object_schema = 'selftest' AND object_name = 'items' \
             AND index_name = 'by_label'",
        )
        .fetch_optional(&pool)
        .await?;
        Ok(count.filter(|count| *count > 0))
    })
    .await?;
    pool.close().await;

    db.create_user("monitor", "s3cr't pw").await?;
    let wrong = db
        .connect_options("monitor", Some("wrong"), None)
        .connect()
        .await;
    assert!(wrong.is_err(), "a wrong password was accepted");
    let mut by_url = MySqlConnection::connect(&db.url("monitor", Some("s3cr't pw"), None)).await?;
    let user: String = sqlx::query_scalar("SELECT current_user()")
        .fetch_one(&mut by_url)
        .await?;
    assert_eq!(user, "monitor@%");
    by_url.close().await?;

    let port = db.port();
    db.kill().await?;
    assert!(
        db.admin_options().connect().await.is_err(),
        "killed server still answers"
    );
    let restarted = Instant::now();
    db.start_again().await?;
    eprintln!("mariadb restart after kill took {:?}", restarted.elapsed());
    assert_eq!(db.port(), port);
    let mut conn = db.admin_options().connect().await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM selftest.items")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(rows, 3);
    conn.close().await?;

    db.stop().await?;
    assert!(
        db.admin_options().connect().await.is_err(),
        "stopped server still answers"
    );
    db.start_again().await?;
    let pool = db.admin_pool().await?;
    let renamed: String = sqlx::query_scalar("SELECT label FROM selftest.items WHERE id = 3")
        .fetch_one(&pool)
        .await?;
    assert_eq!(renamed, "z");
    Ok(())
}

#[tokio::test]
async fn dropping_servers_ends_their_processes_and_removes_their_directories() -> anyhow::Result<()>
{
    let pg = PgServer::start(PgOptions::default()).await?;
    let pg_dir = pg.data_dir();
    let pg_pid = pid_file_line(&pg_dir.join("postmaster.pid"), 0)?;
    let db = MariaDbServer::start(MariaDbOptions::default()).await?;
    let db_dir = db.data_dir();
    let db_pid = pid_file_line(&db_dir.with_file_name("mariadbd.pid"), 0)?;
    assert!(process_exists(&pg_pid) && process_exists(&db_pid));

    drop(pg);
    drop(db);
    assert!(!process_exists(&pg_pid), "postgres {pg_pid} still runs");
    assert!(!process_exists(&db_pid), "mariadbd {db_pid} still runs");
    assert!(
        !pg_dir.exists() && !db_dir.exists(),
        "directories left behind"
    );
    Ok(())
}

#[tokio::test]
async fn dropping_a_killed_postgres_releases_its_shared_memory() -> anyhow::Result<()> {
    let mut pg = PgServer::start(PgOptions::default()).await?;
    let line = pid_file_line(&pg.data_dir().join("postmaster.pid"), 6)?;
    let shmid: i32 = line
        .split_whitespace()
        .nth(1)
        .context("no shmid")?
        .parse()?;

    // Like a real crash, a kill leaves the segment for the next start to clean up.
    pg.kill().await?;
    assert!(segment_exists(shmid), "the segment vanished with the kill");
    drop(pg);
    assert!(!segment_exists(shmid), "the segment outlived the server");
    Ok(())
}

#[tokio::test]
async fn failed_starts_report_the_server_log() -> anyhow::Result<()> {
    let pg = PgServer::start(PgOptions {
        extra_conf: vec!["shared_buffers = 'plenty'".into()],
        ..PgOptions::default()
    })
    .await;
    let message = format!(
        "{:#}",
        pg.expect_err("postgres started with a broken setting")
    );
    assert!(message.contains("shared_buffers"), "{message}");

    let db = MariaDbServer::start(MariaDbOptions {
        extra_args: vec!["--no-such-option=1".into()],
        ..MariaDbOptions::default()
    })
    .await;
    let message = format!(
        "{:#}",
        db.expect_err("mariadb started with an unknown option")
    );
    assert!(message.contains("no-such-option"), "{message}");
    Ok(())
}

#[tokio::test]
async fn otlp_receiver_decodes_gzipped_grpc_exports_with_their_metadata() -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    let mut client = MetricsServiceClient::connect(receiver.grpc_endpoint())
        .await?
        .send_compressed(CompressionEncoding::Gzip);

    let mut request = tonic::Request::new(sample_export());
    request.metadata_mut().insert("x-tenant", "team-a".parse()?);
    client.export(request).await?;

    let points = receiver
        .wait_for_points(|points| points.len() == 2, WAIT)
        .await?;
    let up = points
        .iter()
        .find(|p| p.metric == "db.up")
        .expect("db.up point");
    assert_eq!(up.protocol, Protocol::Grpc);
    assert_eq!(up.kind, Kind::Gauge);
    assert_eq!(up.value, 1.0);
    assert_eq!(up.resource_attr("service.name"), Some("selftest"));
    assert_eq!(up.scope, "selftest-scope");
    assert_eq!(up.header("x-tenant"), Some("team-a"));
    assert_eq!(up.header("grpc-encoding"), Some("gzip"));

    let calls = points
        .iter()
        .find(|p| p.metric == "db.calls")
        .expect("db.calls point");
    assert_eq!(
        calls.kind,
        Kind::Sum {
            temporality: Temporality::Cumulative,
            monotonic: true
        }
    );
    assert_eq!(calls.value, 42.5);
    assert_eq!(calls.unit, "{call}");
    assert_eq!(calls.attr("db"), Some("app"));
    assert_eq!(calls.attr("shard"), Some("7"));
    assert_eq!(
        (calls.start_time_unix_nano, calls.time_unix_nano),
        (1_000, 2_000)
    );
    Ok(())
}

#[tokio::test]
async fn otlp_receiver_decodes_gzipped_http_exports() -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    let response = post_http(&receiver, &sample_export().encode_to_vec(), true).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let body = ExportMetricsServiceResponse::decode(response.bytes().await?)?;
    assert_eq!(body.partial_success, None);

    let received = receiver
        .wait_for(|received| !received.is_empty(), WAIT)
        .await?;
    assert_eq!(received[0].protocol, Protocol::Http);
    assert_eq!(received[0].header("Content-Encoding"), Some("gzip"));
    assert_eq!(received[0].request, sample_export());
    assert_eq!(receiver.points().len(), 2);

    // A JSON body is refused and kept aside, not recorded as an export.
    let json = reqwest::Client::new()
        .post(format!("{}/v1/metrics", receiver.http_endpoint()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await?;
    assert_eq!(json.status(), 415);
    assert_eq!(receiver.undecodable().len(), 1);
    assert_eq!(receiver.requests().len(), 1);
    Ok(())
}

#[tokio::test]
async fn otlp_receiver_injects_refusals_partial_success_and_delays() -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    let mut client = MetricsServiceClient::connect(receiver.grpc_endpoint()).await?;
    let body = sample_export().encode_to_vec();

    // gRPC: UNAVAILABLE with a RetryInfo detail, once.
    receiver.inject(Fault::unavailable(Some(Duration::from_millis(1500))), 1);
    let status = client
        .export(sample_export())
        .await
        .expect_err("fault not applied");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let details = String::from_utf8_lossy(status.details()).into_owned();
    assert!(
        details.contains("google.rpc.RetryInfo"),
        "no RetryInfo: {details:?}"
    );
    client.export(sample_export()).await?;

    // HTTP: 503 with Retry-After, then 400, then a partial success.
    receiver.inject(Fault::unavailable(Some(Duration::from_millis(1500))), 1);
    receiver.inject(Fault::bad_request(), 1);
    receiver.inject(Fault::partial_success(3), 1);
    let unavailable = post_http(&receiver, &body, false).await?;
    assert_eq!(unavailable.status(), 503);
    assert_eq!(unavailable.headers()["retry-after"], "2");
    assert_eq!(post_http(&receiver, &body, false).await?.status(), 400);
    let partial = post_http(&receiver, &body, false).await?;
    assert_eq!(partial.status(), 200);
    let partial = ExportMetricsServiceResponse::decode(partial.bytes().await?)?;
    assert_eq!(
        partial.partial_success.map(|p| p.rejected_data_points),
        Some(3)
    );

    // A delayed answer.
    receiver.inject(Fault::delay(Duration::from_millis(300)), 1);
    let sent = Instant::now();
    client.export(sample_export()).await?;
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "answer was not delayed"
    );

    let outcomes: Vec<Outcome> = receiver.requests().into_iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Rejected {
                code: tonic::Code::Unavailable,
                http_status: 503
            },
            Outcome::Accepted,
            Outcome::Rejected {
                code: tonic::Code::Unavailable,
                http_status: 503
            },
            Outcome::Rejected {
                code: tonic::Code::InvalidArgument,
                http_status: 400
            },
            Outcome::PartialSuccess {
                rejected_data_points: 3
            },
            Outcome::Accepted,
        ]
    );
    // Points come only from accepted exports: three of them, two points each.
    assert_eq!(receiver.points().len(), 6);

    let timeout = receiver
        .wait_for(|r| r.len() > 100, Duration::from_millis(100))
        .await;
    let message = format!("{:#}", timeout.expect_err("predicate cannot hold"));
    assert!(
        message.contains("timed out") && message.contains("db.calls"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn otlp_receiver_comes_back_on_the_ports_of_a_dropped_one() -> anyhow::Result<()> {
    let first = OtlpReceiver::start(OtlpOptions::default()).await?;
    let (grpc, http) = (first.grpc_addr().port(), first.http_addr().port());
    drop(first);

    let options = OtlpOptions {
        grpc_port: Some(grpc),
        http_port: Some(http),
        ..OtlpOptions::default()
    };
    let second = OtlpReceiver::start(options).await?;
    assert_eq!(second.grpc_endpoint(), format!("http://127.0.0.1:{grpc}"));
    let mut client = MetricsServiceClient::connect(second.grpc_endpoint()).await?;
    client.export(sample_export()).await?;
    assert_eq!(
        post_http(&second, &sample_export().encode_to_vec(), false)
            .await?
            .status(),
        200
    );
    assert_eq!(second.requests().len(), 2);
    Ok(())
}

#[tokio::test]
async fn blackhole_accepts_connections_but_never_answers() -> anyhow::Result<()> {
    let blackhole = Blackhole::start()?;
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(blackhole.port())
        .username("postgres");
    let attempt = tokio::time::timeout(Duration::from_millis(300), options.connect()).await;
    assert!(
        attempt.is_err(),
        "the connection attempt ended before the deadline"
    );

    let deadline = Instant::now() + WAIT;
    while blackhole.accepted() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(blackhole.accepted(), 1);
    Ok(())
}

/// Posts an OTLP/HTTP protobuf body, gzipped or not.
async fn post_http(
    receiver: &OtlpReceiver,
    body: &[u8],
    gzip: bool,
) -> anyhow::Result<reqwest::Response> {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/metrics", receiver.http_endpoint()))
        .header("content-type", "application/x-protobuf");
    let body = if gzip {
        request = request.header("content-encoding", "gzip");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(body)?;
        encoder.finish()?
    } else {
        body.to_vec()
    };
    Ok(request.body(body).send().await?)
}

/// An export with a gauge and a cumulative monotonic sum.
fn sample_export() -> ExportMetricsServiceRequest {
    let up = Metric {
        name: "db.up".into(),
        unit: "1".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                time_unix_nano: 2_000,
                value: Some(number_data_point::Value::AsInt(1)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let calls = Metric {
        name: "db.calls".into(),
        unit: "{call}".into(),
        data: Some(metric::Data::Sum(Sum {
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
            data_points: vec![NumberDataPoint {
                attributes: vec![
                    attribute("db", any_value::Value::StringValue("app".into())),
                    attribute("shard", any_value::Value::IntValue(7)),
                ],
                start_time_unix_nano: 1_000,
                time_unix_nano: 2_000,
                value: Some(number_data_point::Value::AsDouble(42.5)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![attribute(
                    "service.name",
                    any_value::Value::StringValue("selftest".into()),
                )],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "selftest-scope".into(),
                    ..Default::default()
                }),
                metrics: vec![up, calls],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

/// Line `index` (0-based) of a pid file.
fn pid_file_line(path: &std::path::Path, index: usize) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let line = text.lines().nth(index).context("pid file too short")?;
    Ok(line.trim().to_owned())
}

fn process_exists(pid: &str) -> bool {
    std::path::Path::new("/proc").join(pid).exists()
}

fn segment_exists(shmid: i32) -> bool {
    // SAFETY: shmid_ds is plain data that IPC_STAT only writes into.
    let mut stat: libc::shmid_ds = unsafe { std::mem::zeroed() };
    unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut stat) == 0 }
}
