//! The hand-written AVX2 kernels against the library's own portable loops
//! (`delta::undo_row_scalar`, `normalise::normalise_row_portable`, inlined
//! here) compiled for AVX2 by the compiler (what `multiversion`, or `pulp`
//! over scalar code, would give: the loop as written, vectorised where the
//! compiler can), and against the portable build the library falls back
//! to. One
//! process, one thread, the variants taking turns in each of 7 rounds;
//! the median per round is printed, as ns per row, and the ratios.
//!
//! - delta undo of a 256-pixel RGB row (the shard filter: a running sum
//!   with a stride of 3 bytes);
//! - the float32 hand-over of a 224-pixel row (split RGB into planes,
//!   subtract the mean, add the lighting).
//!
//! `cargo run --release -p pipeline --example autovec_vs_kernels` (on a
//! CPU with AVX2).

use std::hint::black_box;
use std::time::Instant;

use pipeline::cpu::SimdLevel;
use pipeline::format::delta;
use pipeline::loader::normalise::{normalise_row_portable, normalise_row_with};
use pipeline::rng::SplitMix64;

// Elsewhere (aarch64) the attribute does not exist, and `main` stops
// before any call: no AVX2 there.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
unsafe fn undo_loop_avx2(row: &mut [u8]) {
    delta::undo_row_scalar(row, 3, 3)
}

#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
unsafe fn normalise_loop_avx2(
    px: &[u8],
    mean: [&[f32]; 3],
    light: [f32; 3],
    planes: [&mut [f32]; 3],
) {
    normalise_row_portable(px, mean, light, planes, 0)
}

/// ns per call of each of `variants` (`run(k)` runs variant k once), the
/// median of `rounds`, the variants taking turns within each round.
fn race(rounds: usize, calls: usize, variants: usize, mut run: impl FnMut(usize)) -> Vec<f64> {
    let mut times = vec![Vec::new(); variants];
    for _ in 0..rounds {
        for (k, t) in times.iter_mut().enumerate() {
            let started = Instant::now();
            for _ in 0..calls {
                run(k);
            }
            t.push(started.elapsed().as_nanos() as f64 / calls as f64);
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

fn report(what: &str, names: &[&str], ns: &[f64]) {
    println!("{what}");
    for (name, t) in names.iter().zip(ns) {
        println!(
            "  {name:<34} {t:8.1} ns/row  {:5.2}x the hand-written kernel",
            t / ns[2]
        );
    }
}

fn main() {
    if !SimdLevel::Avx2.supported() {
        eprintln!("this CPU has no AVX2: nothing to compare");
        return;
    }
    let mut rng = SplitMix64::new(1);
    let filtered: Vec<u8> = (0..256 * 3).map(|_| rng.next_u64() as u8).collect();
    let mut row = filtered.clone();
    let names = [
        "portable (the library's fallback)",
        "portable loop compiled for AVX2",
        "hand-written AVX2",
    ];
    let ns = race(7, 200_000, 3, |k| {
        row.copy_from_slice(&filtered);
        let row = black_box(&mut row);
        match k {
            0 => delta::undo_with(SimdLevel::Portable, row, 768, 3),
            // SAFETY: AVX2 checked above.
            1 => unsafe { undo_loop_avx2(row) },
            _ => delta::undo_with(SimdLevel::Avx2, row, 768, 3),
        }
    });
    report(
        "delta undo, 256 RGB pixels (copy of the row included)",
        &names,
        &ns,
    );

    let px: Vec<u8> = (0..224 * 3).map(|_| rng.next_u64() as u8).collect();
    let mean: Vec<Vec<f32>> = (0..3)
        .map(|_| (0..224).map(|_| rng.uniform() as f32 * 255.0).collect())
        .collect();
    let means = [0, 1, 2].map(|c| mean[c].as_slice());
    let light = [1.5, -2.0, 0.25];
    let mut out = vec![vec![0f32; 224]; 3];
    let ns = race(7, 200_000, 3, |k| {
        let [r, g, b] = &mut out[..] else {
            unreachable!()
        };
        let planes = [r.as_mut_slice(), g.as_mut_slice(), b.as_mut_slice()];
        let px = black_box(&px);
        match k {
            0 => normalise_row_with(SimdLevel::Portable, px, means, light, planes),
            // SAFETY: AVX2 checked above.
            1 => unsafe { normalise_loop_avx2(px, means, light, planes) },
            _ => normalise_row_with(SimdLevel::Avx2, px, means, light, planes),
        }
    });
    report("float32 hand-over, 224 RGB pixels", &names, &ns);
}
