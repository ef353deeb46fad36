//! Throughput of `repack_weight` on an 8192x8192 MXFP4 weight (32 MiB of checkpoint bytes in, 32 MiB of words out).
//! Run with `cargo bench -p nibble-runtime --bench repack`.

use std::time::Instant;

use nibble_runtime::manifest::{Element, WeightLayout};
use nibble_runtime::numerics::repack::{repack_weight, WEIGHT_LAYOUT_ID};

fn main() {
    let (n, k) = (8192usize, 8192usize);
    let elem = Element {
        name: "e2m1".into(),
        exp_bits: 2,
        man_bits: 1,
        bias: 1,
    };
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let weight: Vec<u8> = (0..n * k / 2)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect();
    for (atom_n, atom_k) in [(16u32, 16u32), (32, 8)] {
        let layout = WeightLayout {
            id: WEIGHT_LAYOUT_ID.into(),
            atom_n,
            atom_k,
            words_per_lane: 4,
            mag_shift: 1,
            second_half: "bitreverse".into(),
            mask: 0x8E8E_8E8E,
            fragment: None,
        };
        let mut best = f64::INFINITY;
        let mut checksum = 0u32;
        for _ in 0..5 {
            let t = Instant::now();
            let words = match repack_weight(&layout, &elem, &weight, n, k) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("repack failed: {e}");
                    std::process::exit(1);
                }
            };
            best = best.min(t.elapsed().as_secs_f64());
            checksum ^= words.iter().fold(0, |a, &w| a ^ w);
        }
        let bytes = weight.len() as f64;
        println!(
            "repack_weight {n}x{k} mxfp4 atom {atom_n}x{atom_k}: {:.2} ms, {:.2} GB/s read ({:.2} GB/s read+write), {} threads [{checksum:08x}]",
            best * 1e3,
            bytes / best / 1e9,
            2.0 * bytes / best / 1e9,
            rayon::current_num_threads(),
        );
    }
}
