//! Quantizers that make checkpoints the way real tools do (see `shared/reference/fp4-formats.md`).
//!
//! Output is in checkpoint packing: weight `[N, K/2]` bytes, `byte = element(2j) | element(2j+1) << 4` (the LOW
//! nibble is the even K element), scales row-major `[N, K/group]`.
//!
//! Choices where the recipes leave room, all deliberate:
//! - Element rounding is round-to-nearest-even with saturation to the largest magnitude (6 for E2M1).
//! - The sign is kept, IEEE style: `-0.0` and negative values that round to zero give the code `0x8` (-0). Real
//!   checkpoints contain such codes, so test data should too.
//! - MXFP4: an all-zero block (amax 0) gets shared exponent -127 (E8M0 code 0); its elements are all (±)0.
//! - NVFP4: arithmetic is in f32 like ModelOpt's. A weight whose amax is 0 (or whose tensor scale underflows to 0)
//!   gets tensor scale 1.0. A block scale that is 0 before or after rounding to E4M3 becomes 1.0 (code 0x38), so
//!   every stored block scale is positive; its elements then round to (±)0.
//! - NaN or infinite weights are rejected.

use thiserror::Error;

use super::fp8::{e4m3fn_decode, e4m3fn_encode, nearest_index};
use super::{ilog2_normal, pow2};
use crate::manifest::Element;

/// MXFP4 (OCP microscaling): E2M1 elements, one E8M0 scale per 32 elements along K.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mxfp4 {
    /// `[N, K/2]` packed E2M1 codes.
    pub weight: Vec<u8>,
    /// `[N, K/32]` E8M0 codes.
    pub scale: Vec<u8>,
}

/// NVFP4 (ModelOpt): E2M1 elements, one E4M3FN scale per 16 elements along K, one f32 tensor scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Nvfp4 {
    /// `[N, K/2]` packed E2M1 codes.
    pub weight: Vec<u8>,
    /// `[N, K/16]` E4M3FN codes.
    pub scale: Vec<u8>,
    /// `weight_scale_2`: value = e2m1 * e4m3 * tensor_scale.
    pub tensor_scale: f32,
}

#[derive(Debug, Error, PartialEq)]
pub enum QuantError {
    #[error("weight has {got} values, expected N*K = {n}*{k} = {expected}")]
    Length {
        n: usize,
        k: usize,
        expected: usize,
        got: usize,
    },
    #[error("K = {k} is not a positive multiple of the group size {group}")]
    Group { k: usize, group: usize },
    #[error("weight[{row}][{col}] = {value} is not finite")]
    NonFinite { row: usize, col: usize, value: f32 },
}

/// MXFP4 block size.
pub const MXFP4_GROUP: usize = 32;
/// NVFP4 block size.
pub const NVFP4_GROUP: usize = 16;

/// The E2M1 element (`f4E2M1FN`).
pub fn e2m1() -> Element {
    Element {
        name: "e2m1".into(),
        exp_bits: 2,
        man_bits: 1,
        bias: 1,
    }
}

/// Values of E2M1 codes 0..=7.
const E2M1_MAGS: [f64; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// Encodes `x` to the nearest code of a 4-bit sign-magnitude minifloat: round-to-nearest-even, saturating to the
/// largest magnitude, sign kept (so `-0.0` and small negatives give `0x8`). NaN encodes as `0x0` (callers that can
/// meet NaN must reject it first, as the quantizers here do).
pub fn encode_minifloat(x: f64, elem: &Element) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let mags: [f64; 8] = std::array::from_fn(|c| elem.value(c as u8));
    encode_with(x, &mags)
}

fn encode_with(x: f64, mags: &[f64; 8]) -> u8 {
    let sign = if x.is_sign_negative() { 8 } else { 0 };
    // The index is below 8.
    sign | nearest_index(x.abs(), mags) as u8
}

fn check_input(w: &[f32], n: usize, k: usize, group: usize) -> Result<(), QuantError> {
    if k == 0 || !k.is_multiple_of(group) {
        return Err(QuantError::Group { k, group });
    }
    let expected = n.saturating_mul(k);
    if w.len() != expected {
        return Err(QuantError::Length {
            n,
            k,
            expected,
            got: w.len(),
        });
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(QuantError::NonFinite {
            row: i / k,
            col: i % k,
            value: w[i],
        });
    }
    Ok(())
}

fn pack_pairs(codes: &[u8], out: &mut Vec<u8>) {
    out.extend(codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4)));
}

/// Quantizes `w` (`[N, K]`, row-major) to MXFP4 with the microxcaling recipe: per 32-block,
/// `shared_exp = floor(log2(amax)) - 2` clamped to [-127, 127] (-127 for an all-zero block), scale code
/// `shared_exp + 127`, elements `x / 2^shared_exp` rounded to nearest-even E2M1 and saturated to ±6.
pub fn quantize_mxfp4(w: &[f32], n: usize, k: usize) -> Result<Mxfp4, QuantError> {
    check_input(w, n, k, MXFP4_GROUP)?;
    let mut weight = Vec::with_capacity(n * k / 2);
    let mut scale = Vec::with_capacity(n * k / MXFP4_GROUP);
    let mut codes = [0u8; MXFP4_GROUP];
    for block in w.chunks_exact(MXFP4_GROUP) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let shared_exp = if amax == 0.0 {
            -127
        } else {
            (ilog2_normal(f64::from(amax)) - 2).clamp(-127, 127)
        };
        // Dividing by a power of two is exact in f64 (f32 values and 2^±127 are far inside its range).
        let inv = pow2(-shared_exp);
        for (c, &x) in codes.iter_mut().zip(block) {
            *c = encode_with(f64::from(x) * inv, &E2M1_MAGS);
        }
        // shared_exp + 127 is in 0..=254.
        scale.push((shared_exp + 127) as u8);
        pack_pairs(&codes, &mut weight);
    }
    Ok(Mxfp4 { weight, scale })
}

/// Quantizes `w` (`[N, K]`, row-major) to NVFP4 with the ModelOpt recipe, in f32:
/// `tensor_scale = amax(W) / (6 * 448)`, `block_scale = e4m3(block_amax / (6 * tensor_scale))` (0 -> 1.0),
/// `q = e2m1(x / (block_scale * tensor_scale))` rounded to nearest-even and saturated to ±6.
pub fn quantize_nvfp4(w: &[f32], n: usize, k: usize) -> Result<Nvfp4, QuantError> {
    check_input(w, n, k, NVFP4_GROUP)?;
    let amax = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut tensor_scale = amax / (6.0 * E4M3_MAX_F32);
    if tensor_scale == 0.0 {
        tensor_scale = 1.0;
    }
    let mut weight = Vec::with_capacity(n * k / 2);
    let mut scale = Vec::with_capacity(n * k / NVFP4_GROUP);
    let mut codes = [0u8; NVFP4_GROUP];
    for block in w.chunks_exact(NVFP4_GROUP) {
        let bamax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let per_block = bamax / (6.0 * tensor_scale);
        let mut code = e4m3fn_encode(per_block);
        if e4m3fn_decode(code) == 0.0 {
            code = ONE_E4M3;
        }
        let denom = e4m3fn_decode(code) * tensor_scale;
        for (c, &x) in codes.iter_mut().zip(block) {
            *c = encode_with(f64::from(x / denom), &E2M1_MAGS);
        }
        scale.push(code);
        pack_pairs(&codes, &mut weight);
    }
    Ok(Nvfp4 {
        weight,
        scale,
        tensor_scale,
    })
}

const E4M3_MAX_F32: f32 = super::fp8::E4M3_MAX;
/// E4M3FN code of 1.0.
const ONE_E4M3: u8 = 0x38;

/// Unpacks checkpoint bytes `[N, K/2]` to one code per element `[N, K]` (low nibble first).
pub fn unpack_codes(weight: &[u8]) -> Vec<u8> {
    weight.iter().flat_map(|&b| [b & 0xF, b >> 4]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    /// Uniform-ish in [-r, r).
    fn uniform(next: &mut impl FnMut() -> u64, r: f32) -> f32 {
        ((next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * r
    }

    fn ev(code: u8) -> f64 {
        e2m1().value(code)
    }

    #[test]
    fn encode_minifloat_e2m1_exact_ties_and_saturation() {
        let e = e2m1();
        for c in 0u8..16 {
            if c == 8 {
                continue;
            }
            assert_eq!(encode_minifloat(e.value(c), &e), c, "code {c}");
        }
        // Ties go to the even code (even significand).
        let ties = [
            (0.25, 0), // 0 | 0.5
            (0.75, 2), // 0.5 | 1.0
            (1.25, 2), // 1.0 | 1.5
            (1.75, 4), // 1.5 | 2.0
            (2.5, 4),  // 2 | 3
            (3.5, 6),  // 3 | 4
            (5.0, 6),  // 4 | 6
        ];
        for (x, c) in ties {
            assert_eq!(encode_minifloat(x, &e), c, "tie {x}");
            assert_eq!(encode_minifloat(-x, &e), c | 8, "tie -{x}");
        }
        assert_eq!(encode_minifloat(0.2500001, &e), 1);
        assert_eq!(encode_minifloat(4.9999, &e), 6);
        assert_eq!(encode_minifloat(5.0001, &e), 7);
        // Saturation.
        for x in [6.0, 7.0, 8.0, 1e30, f64::INFINITY] {
            assert_eq!(encode_minifloat(x, &e), 7);
            assert_eq!(encode_minifloat(-x, &e), 15);
        }
        // Signed zeros.
        assert_eq!(encode_minifloat(0.0, &e), 0);
        assert_eq!(encode_minifloat(-0.0, &e), 8);
        assert_eq!(encode_minifloat(-0.1, &e), 8);
        assert_eq!(encode_minifloat(f64::NAN, &e), 0);
    }

    #[test]
    fn encode_minifloat_user_formats() {
        // e1m2, bias 1: 0, .25, .5, .75, 1, 1.25, 1.5, 1.75.
        let e = Element {
            name: "e1m2".into(),
            exp_bits: 1,
            man_bits: 2,
            bias: 1,
        };
        assert_eq!(encode_minifloat(1.75, &e), 7);
        assert_eq!(encode_minifloat(9.0, &e), 7);
        assert_eq!(encode_minifloat(0.125, &e), 0);
        assert_eq!(encode_minifloat(0.375, &e), 2);
        assert_eq!(encode_minifloat(-1.125, &e), 12);
        assert_eq!(encode_minifloat(-1.126, &e), 13);
        // e3m0, bias 3: 0, 0.25, .5, 1, 2, 4, 8, 16; ties go to the even code (even exponent field here).
        let e = Element {
            name: "e3m0".into(),
            exp_bits: 3,
            man_bits: 0,
            bias: 3,
        };
        assert_eq!(encode_minifloat(3.0, &e), 4); // 2 (code 4) | 4 (code 5)
        assert_eq!(encode_minifloat(6.0, &e), 6); // 4 (code 5) | 8 (code 6)
        assert_eq!(encode_minifloat(100.0, &e), 7);
        // Exhaustively: the encoding of every value is the nearest value.
        for e in [e2m1(), e] {
            for i in 0..2000 {
                let x = f64::from(i) / 97.0 - 10.0;
                let c = encode_minifloat(x, &e);
                let d = (e.value(c) - x).abs();
                for other in 0u8..16 {
                    assert!(d <= (e.value(other) - x).abs(), "{x} -> {c}");
                }
            }
        }
    }

    #[test]
    fn mxfp4_hand_made_blocks() {
        let n = 4;
        let k = 32;
        let mut w = vec![0f32; n * k];
        // Row 0: amax 6 -> floor(log2 6) = 2, shared_exp 0, code 127; elements unscaled.
        w[0] = 6.0;
        w[1] = -0.5;
        w[2] = 2.5; // tie -> 2
        w[3] = 5.0; // tie -> 4
        w[4] = -0.0;
        // Row 1: amax 1 -> shared_exp -2 (code 125): elements times 4.
        w[32] = 1.0;
        w[33] = 0.125;
        w[34] = -0.375; // 1.5 exactly
        w[35] = 0.0625; // 0.25: tie between 0 and 0.5 -> 0
                        // Row 2: amax 7 -> shared_exp 0, 7 saturates to 6.
        w[64] = 7.0;
        w[65] = -7.9;
        // Row 3: all zero -> code 0.
        let q = quantize_mxfp4(&w, n, k).expect("quantizes");
        assert_eq!(q.scale, vec![127, 125, 127, 0]);
        assert_eq!(q.weight.len(), n * k / 2);
        let c = unpack_codes(&q.weight);
        assert_eq!(&c[0..5], &[7, 9, 4, 6, 8]);
        assert!(c[5..32].iter().all(|&x| x == 0));
        assert_eq!(&c[32..36], &[6, 1, 11, 0]);
        assert_eq!(&c[64..66], &[7, 15]);
        assert!(c[96..128].iter().all(|&x| x == 0));
        // Packing: low nibble is the even element.
        assert_eq!(q.weight[0], 7 | (9 << 4));
        assert_eq!(q.weight[1], 4 | (6 << 4));
    }

    #[test]
    fn mxfp4_scale_exponent_extremes() {
        let k = 32;
        let mut w = vec![0f32; 3 * k];
        w[0] = f32::MAX; // floor(log2) = 127 -> 125 -> code 252
        w[k] = f32::from_bits(1); // 2^-149 -> -151 clamped to -127 -> code 0, element rounds to 0
        w[2 * k] = 2f32.powi(-125); // -127 -> code 0; element 2^-125 / 2^-127 = 4
        let q = quantize_mxfp4(&w, 3, k).expect("quantizes");
        assert_eq!(q.scale, vec![252, 0, 0]);
        let c = unpack_codes(&q.weight);
        assert_eq!(c[0], 7); // 2^128 - 2^104 over 2^125 is just under 8: saturates
        assert_eq!(c[k], 0);
        assert_eq!(c[2 * k], 6);
    }

    #[test]
    fn mxfp4_round_trip_is_nearest() {
        let (n, k) = (8, 256);
        let mut next = rng(1);
        let w: Vec<f32> = (0..n * k)
            .map(|i| uniform(&mut next, if i % 64 < 32 { 1.0 } else { 300.0 }))
            .collect();
        let q = quantize_mxfp4(&w, n, k).expect("quantizes");
        let c = unpack_codes(&q.weight);
        for (i, &x) in w.iter().enumerate() {
            let s = f64::from(e8m0_value(q.scale[i / 32]));
            let y = f64::from(x) / s;
            let d = (ev(c[i]) - y).abs();
            // Nearest among all codes (independent of the tie rule), so bounded by half an ULP or by saturation.
            for other in 0u8..16 {
                assert!(d <= (ev(other) - y).abs(), "element {i}");
            }
            let half_ulp: f64 = if y.abs() < 2.0 {
                0.25
            } else if y.abs() < 4.0 {
                0.5
            } else {
                1.0
            };
            assert!(d <= half_ulp.max(y.abs() - 6.0), "element {i}: {y}");
            // The block amax lies in [4, 8) after scaling.
        }
        for (b, block) in w.chunks(32).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let r = f64::from(amax) / f64::from(e8m0_value(q.scale[b]));
            assert!((4.0..8.0).contains(&r), "block {b}: {r}");
        }
    }

    fn e8m0_value(c: u8) -> f32 {
        super::super::fp8::e8m0_decode(c)
    }

    #[test]
    fn nvfp4_hand_made_blocks() {
        let (n, k) = (1, 64);
        let mut w = vec![0f32; n * k];
        // amax 2688 = 6 * 448: tensor scale exactly 1.
        w[0] = 2688.0;
        w[1] = -896.0; // 2 * 448
                       // Block 1: amax 6 -> block scale 1.0 (0x38).
        w[16] = 6.0;
        w[17] = -2.5; // tie -> 2
                      // Block 2: amax 3 -> block scale 0.5 (0x30); elements doubled.
        w[32] = 3.0;
        w[33] = 0.25;
        // Block 3 zero: scale 1.0.
        let q = quantize_nvfp4(&w, n, k).expect("quantizes");
        assert_eq!(q.tensor_scale, 1.0);
        assert_eq!(q.scale, vec![0x7E, 0x38, 0x30, 0x38]);
        let c = unpack_codes(&q.weight);
        assert_eq!(&c[0..2], &[7, 12]);
        assert_eq!(&c[16..18], &[7, 12]);
        assert_eq!(&c[32..34], &[7, 1]);
        assert!(c[48..64].iter().all(|&x| x == 0));
    }

    #[test]
    fn nvfp4_zero_weight_and_underflowing_blocks() {
        let q = quantize_nvfp4(&[0.0; 32], 2, 16).expect("quantizes");
        assert_eq!(q.tensor_scale, 1.0);
        assert_eq!(q.scale, vec![0x38, 0x38]);
        assert!(q.weight.iter().all(|&b| b == 0));
        // One huge block and one tiny block whose e4m3 scale underflows: scale 1.0, elements 0 (sign kept).
        let mut w = vec![0f32; 32];
        w[0] = 1000.0;
        w[16] = -1e-6;
        let q = quantize_nvfp4(&w, 1, 32).expect("quantizes");
        assert_eq!(q.scale[1], 0x38);
        assert_eq!(unpack_codes(&q.weight)[16], 8);
    }

    #[test]
    fn nvfp4_round_trip_error_is_bounded() {
        let (n, k) = (16, 128);
        let mut next = rng(7);
        let w: Vec<f32> = (0..n * k)
            .map(|i| uniform(&mut next, if (i / 16) % 3 == 0 { 0.01 } else { 2.0 }))
            .collect();
        let q = quantize_nvfp4(&w, n, k).expect("quantizes");
        let c = unpack_codes(&q.weight);
        let ts = f64::from(q.tensor_scale);
        for (i, &x) in w.iter().enumerate() {
            let bs = f64::from(e4m3fn_decode(q.scale[i / 16]));
            assert!(bs > 0.0);
            let s = bs * ts;
            let deq = ev(c[i]) * s;
            // Block scales are rounded to e4m3 (3 mantissa bits), so an element may exceed 6 by up to 1/16
            // relative and saturate; otherwise the error is half an E2M1 ULP (at most 1) of the scaled value.
            let err = (deq - f64::from(x)).abs() / s;
            let y = f64::from(x).abs() / s;
            assert!(
                err <= 1.0 + 1e-6 || (y > 6.0 && err <= y - 6.0 + 1e-6),
                "{i}"
            );
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            quantize_mxfp4(&[0.0; 48], 1, 48),
            Err(QuantError::Group { k: 48, group: 32 })
        );
        assert!(matches!(
            quantize_mxfp4(&[0.0; 64], 3, 32),
            Err(QuantError::Length { got: 64, .. })
        ));
        let mut w = vec![0f32; 64];
        w[37] = f32::NAN;
        assert!(matches!(
            quantize_mxfp4(&w, 2, 32),
            Err(QuantError::NonFinite { row: 1, col: 5, .. })
        ));
        w[37] = f32::INFINITY;
        assert!(matches!(
            quantize_nvfp4(&w, 2, 32),
            Err(QuantError::NonFinite { row: 1, col: 5, .. })
        ));
        assert!(quantize_nvfp4(&[0.0; 8], 1, 8).is_err());
    }
}
