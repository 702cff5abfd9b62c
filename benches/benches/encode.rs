//! OTLP encoding of export batches: `exporter::encode_bytes` straight into protobuf bytes
//! (the payload of both protocols, what the exporter sends), `exporter::encode` into the
//! request message and prost's bytes for it (the reference the direct bytes equal), gzip,
//! and what each protocol does per request.

use criterion::{Criterion, Throughput};
use dbcollector_benches::alloc::CountingAlloc;
use dbcollector_benches::fixtures::{self, Engine};
use dbcollector_benches::harness;
use dbcollector_benches::report::Report;
use dbcollector_worker::exporter::{encode, encode_bytes};
use dbcollector_worker::metrics::Batch;
use prost::Message;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() {
    let mut c = harness::criterion();
    let mut report = Report::new("encode");
    otlp(&mut c, &mut report);
    c.final_summary();
    report.print();
}

/// Adds a bench of `run` to `group`, with its allocation pass, counting `points` per run.
fn bench<O>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    report: &mut Report,
    name: &str,
    points: u64,
    run: impl Fn() -> O,
) {
    let id = format!("otlp/{name}");
    group.throughput(Throughput::Elements(points));
    group.bench_function(name, |b| {
        report.measure(&id, "point", points, 20, || (), |()| run());
        b.iter(&run);
    });
}

fn otlp(c: &mut Criterion, report: &mut Report) {
    let pg = vec![fixtures::batch(Engine::Postgres, 1_000)];
    let mysql = vec![fixtures::batch(Engine::MySql, 1_000)];
    // What the exporter coalesces into one request: four 1k batches of one target.
    let coalesced: Vec<Batch> = (0..4).map(|_| pg[0].clone()).collect();

    for (name, batches) in [
        ("pg_1k", &pg),
        ("mysql_1k", &mysql),
        ("pg_4x1k", &coalesced),
    ] {
        let plain = encode(batches).encode_to_vec();
        let gzipped = harness::gzip(&plain);
        let level_6 = harness::gzip_grpc(&plain);
        let points = batches.iter().map(|b| b.points.len()).sum::<usize>() as f64;
        let size = plain.len() as f64;
        report.note(format!(
            "{name}: {size} B protobuf ({:.1} B/point); gzip {} B ({:.1} B/point, ratio {:.1}), \
             level 6 {} B (ratio {:.1})",
            size / points,
            gzipped.len(),
            gzipped.len() as f64 / points,
            size / gzipped.len() as f64,
            level_6.len(),
            size / level_6.len() as f64,
        ));
    }

    let mut group = c.benchmark_group("otlp");
    let request = encode(&pg);
    let bytes = request.encode_to_vec();

    // Straight into bytes, as the exporter does.
    bench(&mut group, report, "bytes/pg_1k", 1_000, || {
        encode_bytes(&pg)
    });
    bench(&mut group, report, "bytes/mysql_1k", 1_000, || {
        encode_bytes(&mysql)
    });
    bench(&mut group, report, "bytes/pg_4x1k_coalesced", 4_000, || {
        encode_bytes(&coalesced)
    });

    // The request message alone, and prost's bytes for it: the way through the message
    // that the direct bytes replace.
    bench(&mut group, report, "encode/pg_1k", 1_000, || encode(&pg));
    bench(&mut group, report, "encode/mysql_1k", 1_000, || {
        encode(&mysql)
    });
    bench(
        &mut group,
        report,
        "encode/pg_4x1k_coalesced",
        4_000,
        || encode(&coalesced),
    );

    // Its bytes, and their compression.
    bench(&mut group, report, "prost_bytes/pg_1k", 1_000, || {
        request.encode_to_vec()
    });
    bench(&mut group, report, "gzip/pg_1k", 1_000, || {
        harness::gzip(&bytes)
    });
    // The default level 6, for comparison (tonic's level for gRPC).
    bench(&mut group, report, "gzip/pg_1k_level_6", 1_000, || {
        harness::gzip_grpc(&bytes)
    });

    bench(
        &mut group,
        report,
        "message_then_prost/pg_1k",
        1_000,
        || encode(&pg).encode_to_vec(),
    );

    // Per request, as the HTTP transport prepares a body once for every attempt.
    bench(&mut group, report, "http_body/pg_1k_plain", 1_000, || {
        encode_bytes(&pg)
    });
    bench(&mut group, report, "http_body/pg_1k_gzip", 1_000, || {
        harness::gzip(&encode_bytes(&pg))
    });
    bench(&mut group, report, "http_body/pg_4x1k_gzip", 4_000, || {
        harness::gzip(&encode_bytes(&coalesced))
    });

    // gRPC encodes once per request and shares the bytes between attempts; tonic
    // compresses them at level 6 on every attempt.
    bench(&mut group, report, "grpc_attempt/pg_1k_gzip", 1_000, || {
        harness::gzip_grpc(&bytes)
    });
    group.finish();
}
