//! End to end through the library: a synthetic ILSVRC tree becomes shards
//! that read back with the right labels and pixels, and a re-run after losing
//! a shard rebuilds exactly the same bytes.

use std::fs;
use std::path::Path;

use pipeline::format::manifest::Manifest;
use pipeline::format::shard::{RecordDecoder, ShardReader};
use pipeline::ingest::make_shards::{make_shards, ShardsConfig};

/// A flat-colour JPEG: after resampling, every stored pixel is that colour
/// (up to JPEG's rounding), which makes records easy to recognise.
fn write_jpeg(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .expect("write jpeg");
}

fn colour_of(label: u32, k: u32) -> [u8; 3] {
    [(label * 60) as u8 + 20, (k * 30) as u8 + 10, 128]
}

fn make_tree(root: &Path) {
    for label in 0..3u32 {
        let dir = root.join("train").join(format!("n0{label}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for k in 0..4u32 {
            write_jpeg(
                &dir.join(format!("{k}.JPEG")),
                300 + 17 * k,
                200,
                colour_of(label, k),
            );
        }
        fs::write(dir.join("broken.JPEG"), b"\xFF\xD8\xFF\xE0 nothing more").expect("write");
    }
}

#[test]
fn tree_to_shards_and_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_tree(&tmp.path().join("tree"));
    let mut config = ShardsConfig::new(tmp.path().join("tree"), tmp.path().join("out"));
    config.shard_size = 5;
    config.jobs = 2;
    let (manifest, summary) =
        make_shards(&config, &pipeline::progress::Silent).expect("make shards");
    assert_eq!(summary.written, 12);
    assert_eq!(summary.skipped, 3);
    assert_eq!(manifest, Manifest::load(&config.out).expect("load"));
    let train = manifest
        .split(pipeline::ingest::Split::Train)
        .expect("train");
    assert_eq!(train.shards.len(), 3, "15 files planned, 5 per shard");

    let mut decoder = RecordDecoder::new().expect("decoder");
    let mut pixels = vec![0; manifest.image_len()];
    let mut seen = 0;
    for info in &train.shards {
        let shard = ShardReader::open(&config.out.join(&info.file)).expect("open");
        for (i, record) in shard.records().iter().enumerate() {
            decoder
                .decode(&shard, i, &mut pixels, true)
                .expect("decode");
            let k: u32 = record.name[4..5].parse().expect("k from name");
            let want = colour_of(record.label, k);
            assert_eq!(record.name[..3], format!("n0{}", record.label));
            for px in pixels.chunks(3) {
                for c in 0..3 {
                    assert!(
                        px[c].abs_diff(want[c]) <= 2,
                        "{} {px:?} {want:?}",
                        record.name
                    );
                }
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 12);

    // Lose a shard; the re-run keeps the others and rebuilds this one.
    let lost = config.out.join(&train.shards[1].file);
    let before = fs::read(&lost).expect("read");
    fs::remove_file(&lost).expect("rm");
    let (_, again) = make_shards(&config, &pipeline::progress::Silent).expect("re-run");
    assert_eq!(again.written + again.kept, 12);
    assert!(again.kept >= 7 && again.written <= 5, "{again:?}");
    assert_eq!(fs::read(&lost).expect("read"), before);
}
