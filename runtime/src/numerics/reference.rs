//! The independent scalar reference of what a nibble kernel computes (docs/NUMERICS.md), from checkpoint data.
//!
//! 1. Dequantized weight, as the kernel defines it: `w[n][k] = round_T( f32( value(code) * value(scale) ) )`, the
//!    product formed in f32 (exact for E8M0/E4M3 scales), then one round-to-nearest-even to the activation type `T`
//!    (bf16 or f16). The tensor scale is NOT part of `w`: the kernel applies it to the f32 accumulator.
//! 2. `reference_gemm`: `Σ_k x[m][k] * w[n][k]` in f64.
//! 3. `reference_linear`: gemm, then `* tensor_scale + bias`, all in f64; `round_output` rounds the result to the
//!    output type (one rounding, from f64).
//!
//! The reference keeps the E2M1 code 0x8 as -0 (the repacking stores it as +0; only the sign of an all-zero dot
//! product can differ). It does not model gfx90a's flushing of bf16 denormals in the MFMA units.
//!
//! Plain scalar code with lookup tables; it shares nothing with the repacking but the fp8 decoders (which are tested
//! exhaustively against their definitions).

use thiserror::Error;

use super::fp8::ScaleType;
use super::{ilog2_normal, pow2, DType, ScaleData};
use crate::manifest::Format;

#[derive(Debug, Error, PartialEq)]
pub enum RefError {
    #[error("format {format}: {what}")]
    Format { format: String, what: String },
    #[error("shape N={n} K={k}: {what}")]
    Shape { n: usize, k: usize, what: String },
    #[error("{what} has {got} entries, expected {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("scales are stored as {got} but format {format} has {expected} scales")]
    ScaleStorage {
        format: String,
        expected: ScaleType,
        got: &'static str,
    },
    #[error("block scale at row {row}, group {group} ({raw}, value {value}) is {reason}")]
    Scale {
        row: usize,
        group: usize,
        raw: String,
        value: f64,
        reason: &'static str,
    },
    #[error("tensor scale: {what}")]
    TensorScale { what: String },
    #[error("dequantized weight[{row}][{col}] = {product} overflows {target}")]
    Overflow {
        row: usize,
        col: usize,
        product: f32,
        target: &'static str,
    },
}

/// Why a block-scale value cannot be used, if it cannot: NaN, infinite or negative (-0 counts as zero, accepted).
pub(crate) fn scale_problem(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v.is_infinite() {
        Some("infinite")
    } else if v < 0.0 {
        Some("negative")
    } else {
        None
    }
}

/// Rounds `x` to the nearest value of `dtype`, ties to even, overflowing to ±Inf, with gradual underflow and the
/// sign of zero kept. One rounding straight from f64 (no intermediate f32). NaN stays NaN.
pub fn round_to(x: f64, dtype: DType) -> f32 {
    // (mantissa bits, minimum normal exponent, largest finite value)
    let (man, emin, max) = match dtype {
        DType::Bf16 => (7, -126, (2.0 - pow2(-7)) * pow2(127)),
        DType::F16 => (10, -14, 65504.0),
    };
    if x.is_nan() || x.is_infinite() || x == 0.0 {
        return x as f32;
    }
    if x.abs() < f64::MIN_POSITIVE {
        // Far below half the smallest subnormal of either type.
        return (x * 0.0) as f32;
    }
    // ULP exponent of the target at |x|; scaling by powers of two is exact here.
    let q = ilog2_normal(x).max(emin) - man;
    let r = (x * pow2(-q)).round_ties_even() * pow2(q);
    if r.abs() > max {
        return if r > 0.0 {
            f32::INFINITY
        } else {
            f32::NEG_INFINITY
        };
    }
    // Every bf16/f16 value is exact in f32.
    r as f32
}

/// Rounds reference outputs to the kernel's output type; the values are returned as f32 (exactly).
pub fn round_output(y: &[f64], dtype: DType) -> Vec<f32> {
    y.iter().map(|&v| round_to(v, dtype)).collect()
}

/// The dequantized weight `[N, K]` the kernel multiplies with, from checkpoint data: `weight` `[N, K/2]` (low nibble
/// = even K), `scales` `[N, K/group]`. `tensor_scale` must be given exactly when the format has one; it is checked
/// (finite) but not applied (see the module doc). `target` is the activation type.
pub fn dequant_weight(
    fmt: &Format,
    weight: &[u8],
    scales: &ScaleData,
    tensor_scale: Option<f32>,
    n: usize,
    k: usize,
    target: DType,
) -> Result<Vec<f32>, RefError> {
    let format_err = |what: String| RefError::Format {
        format: fmt.name.clone(),
        what,
    };
    let elem = &fmt.element;
    if elem.exp_bits + elem.man_bits != 3 {
        return Err(format_err(format!(
            "element e{}m{} is not a 4-bit minifloat",
            elem.exp_bits, elem.man_bits
        )));
    }
    let st = ScaleType::parse(&fmt.scale)
        .ok_or_else(|| format_err(format!("unknown scale type {:?}", fmt.scale)))?;
    let group = fmt.group as usize;
    if group == 0 || k == 0 || !k.is_multiple_of(group) || !k.is_multiple_of(2) {
        return Err(RefError::Shape {
            n,
            k,
            what: format!("K must be a positive even multiple of the group size {group}"),
        });
    }
    let groups = k / group;
    let want_w = n * (k / 2);
    if weight.len() != want_w {
        return Err(RefError::Length {
            what: "weight",
            expected: want_w,
            got: weight.len(),
        });
    }
    if scales.len() != n * groups {
        return Err(RefError::Length {
            what: "scales",
            expected: n * groups,
            got: scales.len(),
        });
    }
    if !scales.holds(st) {
        return Err(RefError::ScaleStorage {
            format: fmt.name.clone(),
            expected: st,
            got: scales.kind(),
        });
    }
    match (fmt.tensor_scale, tensor_scale) {
        (true, None) => {
            return Err(RefError::TensorScale {
                what: format!("format {} needs one", fmt.name),
            })
        }
        (false, Some(_)) => {
            return Err(RefError::TensorScale {
                what: format!("format {} has none", fmt.name),
            })
        }
        (_, Some(t)) if !t.is_finite() => {
            return Err(RefError::TensorScale {
                what: format!("{t} is not finite"),
            })
        }
        _ => {}
    }

    // Element values, exactly (checked to be f32 values).
    let mut table = [0f32; 16];
    for (c, slot) in table.iter_mut().enumerate() {
        let v = elem.value(c as u8);
        let v32 = v as f32;
        if f64::from(v32) != v {
            return Err(format_err(format!(
                "element code {c} has value {v}, not an f32"
            )));
        }
        *slot = v32;
    }

    let mut out = vec![0f32; n * k];
    for row in 0..n {
        for g in 0..groups {
            let idx = row * groups + g;
            // `holds(st)` and the length check make `value` return Some.
            let Some((sv, raw)) = scales.value(st, idx) else {
                return Err(RefError::Length {
                    what: "scales",
                    expected: n * groups,
                    got: scales.len(),
                });
            };
            if let Some(reason) = scale_problem(sv) {
                return Err(RefError::Scale {
                    row,
                    group: g,
                    raw,
                    value: sv,
                    reason,
                });
            }
            // Every supported scale type is exact in f32.
            let s32 = sv as f32;
            for col in g * group..(g + 1) * group {
                let byte = weight[row * (k / 2) + col / 2];
                let code = if col % 2 == 0 { byte & 0xF } else { byte >> 4 };
                let product = table[usize::from(code)] * s32;
                let w = round_to(f64::from(product), target);
                if !w.is_finite() {
                    return Err(RefError::Overflow {
                        row,
                        col,
                        product,
                        target: target.name(),
                    });
                }
                out[row * k + col] = w;
            }
        }
    }
    Ok(out)
}

/// `y[m][n] = Σ_k x[m][k] * w[n][k]` in f64 (each product is exact in f64), `x` `[M, K]`, `w` `[N, K]`.
///
/// # Panics
/// If the buffer lengths are not `M*K` and `N*K`.
pub fn reference_gemm(x: &[f32], w_deq: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    assert_eq!(x.len(), m * k, "x must be [M, K]");
    assert_eq!(w_deq.len(), n * k, "w must be [N, K]");
    let mut y = vec![0f64; m * n];
    for (i, yrow) in y.chunks_exact_mut(n.max(1)).enumerate().take(m) {
        let xrow = &x[i * k..(i + 1) * k];
        for (j, yv) in yrow.iter_mut().enumerate() {
            let wrow = &w_deq[j * k..(j + 1) * k];
            *yv = xrow
                .iter()
                .zip(wrow)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
        }
    }
    y
}

/// `y = (x w^T) * tensor_scale + bias`, all in f64 (tensor scale 1 when absent). Round with `round_output`.
///
/// # Panics
/// If the buffer lengths are not `M*K`, `N*K` and `N`.
pub fn reference_linear(
    x: &[f32],
    w_deq: &[f32],
    m: usize,
    n: usize,
    k: usize,
    tensor_scale: Option<f32>,
    bias: Option<&[f32]>,
) -> Vec<f64> {
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias must be [N]");
    }
    let t = f64::from(tensor_scale.unwrap_or(1.0));
    let mut y = reference_gemm(x, w_deq, m, n, k);
    for (i, v) in y.iter_mut().enumerate() {
        let b = bias.map_or(0.0, |b| f64::from(b[i % n]));
        *v = *v * t + b;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::super::fp8::{e4m3fn_decode, e8m0_decode};
    use super::super::quantize::{e2m1, quantize_mxfp4, quantize_nvfp4, unpack_codes};
    use super::*;
    use crate::manifest::Element;

    fn fmt(name: &str, elem: Element, scale: &str, group: u32, ts: bool) -> Format {
        Format {
            name: name.into(),
            element: elem,
            scale: scale.into(),
            group,
            tensor_scale: ts,
        }
    }

    fn mxfp4() -> Format {
        fmt("mxfp4", e2m1(), "e8m0", 32, false)
    }

    fn nvfp4() -> Format {
        fmt("nvfp4", e2m1(), "e4m3", 16, true)
    }

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    #[test]
    fn round_to_matches_half_on_f32_inputs() {
        let mut next = rng(3);
        let mut cases: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            2f32.powi(-24),
            2f32.powi(-25),
            1.5 * 2f32.powi(-25),
            2f32.powi(-133),
            2f32.powi(-134),
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        cases.extend((0..200_000).map(|_| f32::from_bits(next() as u32)));
        for x in cases {
            if x.is_nan() {
                assert!(round_to(f64::from(x), DType::Bf16).is_nan());
                continue;
            }
            let b = round_to(f64::from(x), DType::Bf16);
            let hb = half::bf16::from_f32(x).to_f32();
            assert_eq!(
                b.to_bits(),
                hb.to_bits(),
                "bf16 of {x:e} ({:#x})",
                x.to_bits()
            );
            let h = round_to(f64::from(x), DType::F16);
            let hh = half::f16::from_f32(x).to_f32();
            assert_eq!(
                h.to_bits(),
                hh.to_bits(),
                "f16 of {x:e} ({:#x})",
                x.to_bits()
            );
        }
    }

    #[test]
    fn round_to_rounds_once_from_f64() {
        // 1 + 2^-8 + 2^-30: just above the bf16 midpoint; rounding through f32 first would tie to 1.0.
        let x = 1.0 + pow2(-8) + pow2(-30);
        assert_eq!(round_to(x, DType::Bf16), 1.0 + 2f32.powi(-7));
        assert_eq!(round_to(1.0 + pow2(-8), DType::Bf16), 1.0);
        assert_eq!(
            round_to(1.0 + 3.0 * pow2(-8), DType::Bf16),
            1.0 + 2f32.powi(-6)
        );
        let x = 1.0 + pow2(-11) + pow2(-40);
        assert_eq!(round_to(x, DType::F16), 1.0 + 2f32.powi(-10));
        assert_eq!(round_to(1e300, DType::Bf16), f32::INFINITY);
        assert_eq!(round_to(-1e-300, DType::F16).to_bits(), (-0f32).to_bits());
        assert_eq!(round_to(-1e-320, DType::F16).to_bits(), (-0f32).to_bits());
        assert_eq!(round_output(&[1.0, 3.0], DType::F16), vec![1.0, 3.0]);
    }

    #[test]
    fn every_code_times_every_e8m0_scale() {
        // Row r has scale code r; its 32 elements are codes 0..16 twice. 6 * 2^126 overflows f32 and bf16: the
        // largest scale code every element survives is 252 (codes 253 and 254 are tested for overflow below).
        let (n, k) = (253, 32);
        let weight: Vec<u8> = (0..n)
            .flat_map(|_| (0..16u8).map(|j| (2 * j % 16) | ((2 * j + 1) % 16) << 4))
            .collect();
        let scales: Vec<u8> = (0..=252).collect();
        let w = dequant_weight(
            &mxfp4(),
            &weight,
            &ScaleData::Bytes(scales),
            None,
            n,
            k,
            DType::Bf16,
        )
        .expect("dequantizes");
        let e = e2m1();
        for r in 0..n {
            for c in 0..k {
                let want = e.value((c % 16) as u8) * pow2(r as i32 - 127);
                let got = f64::from(w[r * k + c]);
                // Exact in bf16, even at 2^-127 (all products are multiples of 2^-128, a bf16 subnormal); -0 kept.
                assert_eq!(got.to_bits(), want.to_bits(), "row {r} col {c}");
            }
        }
        assert!(w[8].is_sign_negative() && w[8] == 0.0);
        assert_eq!(w[1], f32::from_bits(1 << 21)); // 2^-128
        assert_eq!(w[252 * k + 7], 6.0 * 2f32.powi(125));
        // 4 * 2^126 = 2^128 overflows f32 (and so bf16); 1.5 * 2^127 is fine.
        let w1 = vec![0x03u8; 16];
        let ok = dequant_weight(
            &mxfp4(),
            &w1,
            &ScaleData::Bytes(vec![254]),
            None,
            1,
            32,
            DType::Bf16,
        );
        assert_eq!(ok.map(|v| v[0]), Ok(1.5 * 2f32.powi(127)));
        let w4 = vec![0x60u8; 16];
        let err = dequant_weight(
            &mxfp4(),
            &w4,
            &ScaleData::Bytes(vec![253]),
            None,
            1,
            32,
            DType::Bf16,
        );
        assert!(matches!(
            err,
            Err(RefError::Overflow { row: 0, col: 1, .. })
        ));
    }

    #[test]
    fn quantized_checkpoints_dequantize_to_their_definition() {
        let (n, k) = (8, 128);
        let mut next = rng(11);
        let w: Vec<f32> = (0..n * k)
            .map(|_| ((next() >> 40) as f32 / 16_777_216.0 - 0.5) * 10.0)
            .collect();
        let e = e2m1();
        let q = quantize_mxfp4(&w, n, k).expect("quantizes");
        let d = dequant_weight(
            &mxfp4(),
            &q.weight,
            &ScaleData::Bytes(q.scale.clone()),
            None,
            n,
            k,
            DType::Bf16,
        )
        .expect("dequantizes");
        let codes = unpack_codes(&q.weight);
        for i in 0..n * k {
            let want = e.value(codes[i]) * f64::from(e8m0_decode(q.scale[i / 32]));
            assert_eq!(f64::from(d[i]), want);
        }
        let q = quantize_nvfp4(&w, n, k).expect("quantizes");
        let d = dequant_weight(
            &nvfp4(),
            &q.weight,
            &ScaleData::Bytes(q.scale.clone()),
            Some(q.tensor_scale),
            n,
            k,
            DType::F16,
        )
        .expect("dequantizes");
        let codes = unpack_codes(&q.weight);
        for i in 0..n * k {
            let want = e.value(codes[i]) * f64::from(e4m3fn_decode(q.scale[i / 16]));
            // e2m1 x e4m3 has at most 6 significant bits: exact in f16 within its range.
            assert_eq!(f64::from(d[i]), want);
        }
    }

    #[test]
    fn float_scales_round_once_to_the_target() {
        let f = fmt("f32s", e2m1(), "f32", 32, false);
        let weight = vec![0x73u8; 16]; // codes 3 (1.5) and 7 (6)
        let s = 0.1f32;
        let d = dequant_weight(
            &f,
            &weight,
            &ScaleData::F32(vec![s]),
            None,
            1,
            32,
            DType::Bf16,
        )
        .expect("dequantizes");
        let p = 1.5f32 * s;
        assert_eq!(d[0], half::bf16::from_f32(p).to_f32());
        assert_eq!(d[1], half::bf16::from_f32(6.0 * s).to_f32());
        let f = fmt("bf16s", e2m1(), "bf16", 32, false);
        let d = dequant_weight(
            &f,
            &weight,
            &ScaleData::Bf16(vec![half::bf16::from_f32(0.1).to_bits()]),
            None,
            1,
            32,
            DType::F16,
        )
        .expect("dequantizes");
        let p = 1.5f32 * half::bf16::from_f32(0.1).to_f32();
        assert_eq!(d[0], half::f16::from_f32(p).to_f32());
    }

    #[test]
    fn rejects_bad_scales_with_their_position() {
        let weight = vec![0x11u8; 2 * 32];
        let mut scales = vec![127u8; 4];
        scales[3] = 0xFF;
        let err = dequant_weight(
            &mxfp4(),
            &weight,
            &ScaleData::Bytes(scales),
            None,
            2,
            64,
            DType::Bf16,
        )
        .expect_err("NaN scale");
        assert!(matches!(
            err,
            RefError::Scale {
                row: 1,
                group: 1,
                reason: "NaN",
                ..
            }
        ));
        assert!(err.to_string().contains("row 1, group 1"), "{err}");
        assert!(err.to_string().contains("0xff"), "{err}");

        let weight = vec![0x11u8; 16];
        for (code, reason) in [(0x7Fu8, "NaN"), (0xFF, "NaN"), (0xB8, "negative")] {
            let mut s = vec![0x38u8; 2];
            s[1] = code;
            let err = dequant_weight(
                &nvfp4(),
                &weight,
                &ScaleData::Bytes(s),
                Some(1.0),
                1,
                32,
                DType::Bf16,
            )
            .expect_err("bad e4m3");
            assert!(
                matches!(err, RefError::Scale { row: 0, group: 1, reason: r, .. } if r == reason),
                "{err}"
            );
        }
        // -0 (0x80) is a zero scale: accepted.
        let d = dequant_weight(
            &nvfp4(),
            &weight,
            &ScaleData::Bytes(vec![0x80, 0x38]),
            Some(1.0),
            1,
            32,
            DType::Bf16,
        )
        .expect("zero scale");
        assert_eq!(d[0], 0.0);
        let f = fmt("f32s", e2m1(), "f32", 16, false);
        for (v, reason) in [
            (f32::NAN, "NaN"),
            (f32::INFINITY, "infinite"),
            (-1.0, "negative"),
        ] {
            let err = dequant_weight(
                &f,
                &weight,
                &ScaleData::F32(vec![1.0, v]),
                None,
                1,
                32,
                DType::Bf16,
            )
            .expect_err("bad f32");
            assert!(
                matches!(err, RefError::Scale { row: 0, group: 1, reason: r, .. } if r == reason)
            );
        }
        let f = fmt("f16s", e2m1(), "f16", 16, false);
        let err = dequant_weight(
            &f,
            &weight,
            &ScaleData::F16(vec![0x3C00, 0xFC00]),
            None,
            1,
            32,
            DType::Bf16,
        )
        .expect_err("-inf");
        assert!(matches!(
            err,
            RefError::Scale {
                reason: "infinite",
                ..
            }
        ));
    }

    #[test]
    fn rejects_bad_shapes_storage_tensor_scales_and_overflow() {
        let w = vec![0u8; 16];
        let s = ScaleData::Bytes(vec![127]);
        let ok = dequant_weight(&mxfp4(), &w, &s, None, 1, 32, DType::Bf16);
        assert!(ok.is_ok());
        assert!(matches!(
            dequant_weight(&mxfp4(), &w, &s, None, 1, 48, DType::Bf16),
            Err(RefError::Shape { .. })
        ));
        assert!(matches!(
            dequant_weight(&mxfp4(), &w[..15], &s, None, 1, 32, DType::Bf16),
            Err(RefError::Length { what: "weight", .. })
        ));
        assert!(matches!(
            dequant_weight(
                &mxfp4(),
                &w,
                &ScaleData::Bytes(vec![127, 127]),
                None,
                1,
                32,
                DType::Bf16
            ),
            Err(RefError::Length { what: "scales", .. })
        ));
        assert!(matches!(
            dequant_weight(
                &mxfp4(),
                &w,
                &ScaleData::F32(vec![1.0]),
                None,
                1,
                32,
                DType::Bf16
            ),
            Err(RefError::ScaleStorage { .. })
        ));
        assert!(matches!(
            dequant_weight(&mxfp4(), &w, &s, Some(1.0), 1, 32, DType::Bf16),
            Err(RefError::TensorScale { .. })
        ));
        let s2 = ScaleData::Bytes(vec![0x38, 0x38]);
        assert!(matches!(
            dequant_weight(&nvfp4(), &w, &s2, None, 1, 32, DType::Bf16),
            Err(RefError::TensorScale { .. })
        ));
        assert!(matches!(
            dequant_weight(&nvfp4(), &w, &s2, Some(f32::NAN), 1, 32, DType::Bf16),
            Err(RefError::TensorScale { .. })
        ));
        let mut bad = mxfp4();
        bad.scale = "fp8".into();
        assert!(matches!(
            dequant_weight(&bad, &w, &s, None, 1, 32, DType::Bf16),
            Err(RefError::Format { .. })
        ));
        // 6 * 2^14 = 98304 overflows f16 (but not bf16).
        let w6 = vec![0x70u8; 16]; // codes 0, 7
        let big = ScaleData::Bytes(vec![127 + 14]);
        let err =
            dequant_weight(&mxfp4(), &w6, &big, None, 1, 32, DType::F16).expect_err("overflow");
        assert!(
            matches!(err, RefError::Overflow { row: 0, col: 1, .. }),
            "{err}"
        );
        assert!(dequant_weight(&mxfp4(), &w6, &big, None, 1, 32, DType::Bf16).is_ok());
    }

    #[test]
    fn gemm_and_linear_by_hand() {
        // x [2, 3], w [2, 3].
        let x = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.25];
        let w = [1.0f32, 0.0, -1.0, 2.0, 2.0, 2.0];
        let y = reference_gemm(&x, &w, 2, 2, 3);
        assert_eq!(y, vec![-2.0, 12.0, -1.25, -0.5]);
        let y = reference_linear(&x, &w, 2, 2, 3, Some(0.5), Some(&[1.0, -1.0]));
        assert_eq!(y, vec![0.0, 5.0, 0.375, -1.25]);
        let y = reference_linear(&x, &w, 2, 2, 3, None, None);
        assert_eq!(y, vec![-2.0, 12.0, -1.25, -0.5]);
        // Products of f32 values are exact in f64: no cancellation error.
        let x = [1.0f32 + f32::EPSILON, -1.0];
        let w = [1.0f32 + f32::EPSILON, 1.0];
        let y = reference_gemm(&x, &w, 1, 1, 2);
        assert_eq!(
            y[0],
            2.0 * f64::from(f32::EPSILON) + f64::from(f32::EPSILON).powi(2)
        );
        assert!(reference_gemm(&[], &[], 0, 0, 4).is_empty());
    }
}
