//! Throughput of the log pipeline with 100 masked values (target: 500 MB/s on one core).
//! Run: `cargo bench -p podrunner-gitlab --bench log_pipeline`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podrunner_gitlab::log::{LogSettings, PhraseMasker, Stream, SystemClock, Trace};

const INPUT_BYTES: usize = 16 << 20;
const CHUNK: usize = 64 << 10;

fn masked_values() -> Vec<String> {
    (0..100)
        .map(|i| format!("secret-{i:03}-{}", "x".repeat(12 + i % 20)))
        .collect()
}

/// Typical CI output: compiler lines, URLs, paths, with a masked value now and then.
fn log_text(values: &[String]) -> Vec<u8> {
    let lines = [
        "   Compiling serde_derive v1.0.219 (/builds/group/project/vendor/serde_derive)\n",
        "$ curl -sSf https://gitlab.example.com/api/v4/projects/42/packages/generic/tool/1.2.3/tool.tar.gz -o /tmp/tool.tar.gz\n",
        "test tests::parses_every_suffix_exactly ... ok\n",
        "npm WARN deprecated inflight@1.0.6: This module is not supported, and leaks memory.\n",
        "Step 3/12 : RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates git\n",
    ];
    let mut text = Vec::with_capacity(INPUT_BYTES + 256);
    let mut i = 0;
    while text.len() < INPUT_BYTES {
        text.extend_from_slice(lines[i % lines.len()].as_bytes());
        if i % 50 == 0 {
            text.extend_from_slice(
                format!("using token {}\n", values[i % values.len()]).as_bytes(),
            );
        }
        i += 1;
    }
    text.truncate(INPUT_BYTES);
    text
}

fn bench(c: &mut Criterion) {
    let values = masked_values();
    let text = log_text(&values);
    let mut group = c.benchmark_group("log_pipeline");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(10);

    group.bench_function("phrase_masking_100_values", |b| {
        b.iter(|| {
            let mut masker = PhraseMasker::new(&values);
            let mut out = Vec::with_capacity(CHUNK * 2);
            for chunk in text.chunks(CHUNK) {
                masker.write(chunk, &mut out);
                black_box(&out);
                out.clear();
            }
            masker.flush(&mut out);
        })
    });

    for timestamps in [false, true] {
        let name = if timestamps {
            "full_pipeline_with_timestamps"
        } else {
            "full_pipeline"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let trace = Trace::new(&LogSettings {
                    masked_phrases: values.clone(),
                    token_prefixes: LogSettings::token_prefixes(true, &[]),
                    timestamps,
                    output_limit_bytes: usize::MAX,
                    spill_threshold: usize::MAX,
                    clock: Arc::new(SystemClock),
                });
                let mut writer = trace.writer(Stream::JOB);
                for chunk in text.chunks(CHUNK) {
                    writer.write_bytes(chunk).unwrap();
                }
                writer.flush_all().unwrap();
                black_box(trace.sink().bytesize())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
