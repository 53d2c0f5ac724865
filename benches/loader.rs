//! Criterion benchmarks of the loader's parts and whole, on a synthetic
//! shard set (textured 256x256 images, made once per run in a temp folder).
//!
//! `cargo bench --bench loader`. The `pipeline bench` command measures the
//! same loader on real shards against the zstd ceiling in one run; these
//! benches show where a change moves the time.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pipeline::format::shard::{RecordDecoder, ShardReader};
use pipeline::ingest::make_shards::{make_shards, ShardsConfig};
use pipeline::ingest::Split;
use pipeline::loader::augment::{self, Mode};
use pipeline::loader::normalise;
use pipeline::loader::{BufferPool, Dataset, Loader, LoaderConfig, Output};
use pipeline::rng::SplitMix64;

const IMAGES: u32 = 256;

/// A shard folder with stats: photo-like noise (a smooth gradient plus
/// pseudo-random texture) so that zstd works as hard as on photos.
fn shard_set() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = SplitMix64::new(1);
    for k in 0..IMAGES {
        let class = dir.path().join("tree/train").join(format!("n{:02}", k % 8));
        std::fs::create_dir_all(&class).expect("mkdir");
        let img = image::RgbImage::from_fn(300, 256, |x, y| {
            let t = (rng.next_u64() % 24) as u32;
            image::Rgb([
                (x / 2 + t) as u8,
                (y / 2 + k + t) as u8,
                ((x + y) / 3 + t) as u8,
            ])
        });
        img.save(class.join(format!("{k}.png"))).expect("png");
    }
    let mut config = ShardsConfig::new(dir.path().join("tree"), dir.path().join("shards"));
    config.shard_size = 64;
    make_shards(&config, &pipeline::progress::Silent).expect("shards");
    let (stats, mean) =
        pipeline::stats::compute(&config.out, &pipeline::progress::Silent).expect("stats");
    pipeline::stats::write(&config.out, &stats, &mean).expect("write stats");
    dir
}

fn benches(c: &mut Criterion) {
    let dir = shard_set();
    let shards = dir.path().join("shards");
    let data = Arc::new(Dataset::open(&shards, Split::Train).expect("dataset"));

    let shard = ShardReader::open(&shards.join("train-00000.shard")).expect("shard");
    let mut decoder = RecordDecoder::new().expect("decoder");
    let mut image = vec![0u8; 256 * 256 * 3];
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode (zstd + delta undo)", |b| {
        let mut i = 0;
        b.iter(|| {
            decoder
                .decode(&shard, i % shard.len(), &mut image, false)
                .expect("decode");
            i += 1;
        })
    });
    let mut rng = SplitMix64::new(3);
    let lighting = augment::Lighting {
        eigenvalues: [10.0, 3.0, 1.0],
        eigenvectors: [[0.58, 0.58, 0.58], [0.7, 0.0, -0.7], [-0.4, 0.8, -0.4]],
        std: 0.1,
    };
    let mean = data.mean_planes().expect("mean").clone();
    let mut crop = vec![0u8; 224 * 224 * 3];
    let mut floats = vec![0f32; 224 * 224 * 3];
    group.bench_function("crop u8", |b| {
        b.iter(|| {
            let v = augment::views(Mode::Train, 256, 224, Some(&lighting), &mut rng)[0];
            augment::crop_u8(&image, 256, &v, 224, &mut crop);
        })
    });
    group.bench_function("crop f32 (mean + lighting)", |b| {
        b.iter(|| {
            let v = augment::views(Mode::Train, 256, 224, Some(&lighting), &mut rng)[0];
            normalise::to_f32_chw(&image, &mean, &v, 224, &mut floats);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("loader epoch");
    group.throughput(Throughput::Elements(IMAGES as u64));
    group.sample_size(10);
    for output in [Output::U8, Output::F32] {
        let config = LoaderConfig {
            batch_size: 64,
            output,
            ..LoaderConfig::default()
        };
        let pool = BufferPool::for_config(&config);
        let mut epoch = 0;
        group.bench_function(format!("{output:?}, {} threads", config.threads), |b| {
            b.iter_batched(
                || {
                    epoch += 1;
                    epoch
                },
                |epoch| {
                    let loader =
                        Loader::with_pool(data.clone(), config.clone(), pool.clone(), epoch, 0)
                            .expect("loader");
                    for batch in loader {
                        batch.expect("batch");
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(loader_benches, benches);
criterion_main!(loader_benches);
