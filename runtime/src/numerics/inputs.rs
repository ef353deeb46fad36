//! Random and adversarial host inputs for one kernel, in checkpoint layout (docs/MANIFEST.md): the generator shared
//! by `nibble run --random`, `nibble bench`, `nibble tune` and `nibble-rt run/check/bench`.
//!
//! - [`random_inputs`]: made the way real checkpoints are: normal activations, and normal weights quantized by the
//!   format's quantizer (MXFP4, NVFP4); other formats get uniformly random element codes and block scales of
//!   moderate magnitude in their own scale type.
//! - [`adversarial_inputs`]: code `(3n + k) mod 16` at weight row n, column k (every code at every fragment
//!   position); E8M0 scales alternating by row between the smallest and the largest exponent the manifest's scale
//!   layout accepts; every accepted E4M3 code in turn. Needs an sm_80/sm_90 (`mma_sync_a`) scale layout.
//!
//! Both are deterministic in the seed ([`Rng`], xorshift64*).

use thiserror::Error;

use super::fp8::{e4m3fn_decode, e4m3fn_encode, e8m0_decode};
use super::quantize::{self, QuantError};
use super::repack_mma::{mma_scale_bits, MmaScaleGeometry};
use super::{DType, ScaleData, ScaleType};
use crate::manifest::Manifest;

/// Why inputs could not be made for a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InputsError {
    #[error("kernel {kernel}: {what} dtype {dtype:?} is not bf16 or f16")]
    DType {
        kernel: String,
        what: &'static str,
        dtype: String,
    },
    #[error("kernel {kernel}: unknown scale type {scale:?}")]
    ScaleType { kernel: String, scale: String },
    #[error("kernel {kernel}: quantizing the random weight: {message}")]
    Quantize { kernel: String, message: String },
    #[error("kernel {kernel}: adversarial inputs need an sm_80/sm_90 scale layout: {message}")]
    Layout { kernel: String, message: String },
    #[error("kernel {kernel}: the scale layout accepts no positive {scale} scale")]
    NoAcceptedScale { kernel: String, scale: String },
    #[error("kernel {kernel}: N={n} K={k} is not a whole number of {group}-element groups")]
    Shape {
        kernel: String,
        n: u32,
        k: u32,
        group: u32,
    },
}

/// A small deterministic generator (xorshift64*) for reproducible inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // A zero state would stay zero.
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal with unit variance (sum of 12 uniforms).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

/// One layer's inputs in checkpoint layout, for the manifest they were made for.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInputs {
    /// M.
    pub rows: u32,
    pub x_dtype: DType,
    /// Activations `[M, K]`, row-major bit patterns of `x_dtype`.
    pub x: Vec<u16>,
    /// Packed elements `[N, K/2]`, low nibble = even K.
    pub weight: Vec<u8>,
    /// Block scales `[N, K/group]` in the format's scale type.
    pub scales: ScaleData,
    pub tensor_scale: Option<f32>,
    /// Bias `[N]`: its dtype and bit patterns.
    pub bias: Option<(DType, Vec<u16>)>,
}

/// The bit pattern of `v` rounded (to nearest even) to `d`.
pub fn half_bits(v: f64, d: DType) -> u16 {
    match d {
        DType::Bf16 => half::bf16::from_f64(v).to_bits(),
        DType::F16 => half::f16::from_f64(v).to_bits(),
    }
}

fn dtype(m: &Manifest, what: &'static str, s: &str) -> Result<DType, InputsError> {
    DType::parse(s).ok_or_else(|| InputsError::DType {
        kernel: m.kernel.clone(),
        what,
        dtype: s.to_string(),
    })
}

fn scale_type(m: &Manifest) -> Result<ScaleType, InputsError> {
    ScaleType::parse(&m.format.scale).ok_or_else(|| InputsError::ScaleType {
        kernel: m.kernel.clone(),
        scale: m.format.scale.clone(),
    })
}

/// `(N, K, groups)`, checked so that every later index is in range.
fn geometry(m: &Manifest) -> Result<(usize, usize, usize), InputsError> {
    let (n, k, g) = (m.shapes.n, m.shapes.k, m.format.group);
    if g == 0 || k % g != 0 || k % 2 != 0 {
        return Err(InputsError::Shape {
            kernel: m.kernel.clone(),
            n,
            k,
            group: g,
        });
    }
    let (n, k) = (n as usize, k as usize);
    Ok((n, k, n * (k / g as usize)))
}

/// The positive 8-bit scale codes (E8M0 or E4M3, the format's scale type) that the manifest's sm_80/sm_90 scale
/// layout applies exactly, ascending. Empty for 16/32-bit scale types.
pub fn accepted_scale_codes(m: &Manifest) -> Result<Vec<u8>, InputsError> {
    let decode8 = match scale_type(m)? {
        ScaleType::E8m0 => e8m0_decode,
        ScaleType::E4m3 => e4m3fn_decode,
        _ => return Ok(vec![]),
    };
    let g = MmaScaleGeometry::new(&m.weight_layout, &m.scale_layout, &m.format).map_err(|e| {
        InputsError::Layout {
            kernel: m.kernel.clone(),
            message: e.to_string(),
        }
    })?;
    Ok((1u8..=0xFE)
        .filter(|&c| {
            let v = f64::from(decode8(c));
            v > 0.0 && v.is_finite() && mma_scale_bits(v, &m.format.element, &g).is_ok()
        })
        .collect())
}

/// The inputs with `weight`, `scales` and `tensor_scale`, and normal activations and bias drawn from `rng` (after
/// the weight and scales).
fn with_activations(
    m: &Manifest,
    rng: &mut Rng,
    rows: u32,
    weight: Vec<u8>,
    scales: ScaleData,
    tensor_scale: Option<f32>,
) -> Result<HostInputs, InputsError> {
    let k = m.shapes.k as usize;
    let x_dtype = dtype(m, "x", &m.shapes.x_dtype)?;
    let x = (0..rows as usize * k)
        .map(|_| half_bits(rng.normal(), x_dtype))
        .collect();
    let bias = match &m.shapes.bias_dtype {
        Some(d) => {
            let d = dtype(m, "bias", d)?;
            let n = m.shapes.n as usize;
            Some((d, (0..n).map(|_| half_bits(rng.normal(), d)).collect()))
        }
        None => None,
    };
    Ok(HostInputs {
        rows,
        x_dtype,
        x,
        weight,
        scales,
        tensor_scale,
        bias,
    })
}

/// Random inputs with `rows` rows for the kernel of `m` (see the module doc).
pub fn random_inputs(m: &Manifest, rows: u32, seed: u64) -> Result<HostInputs, InputsError> {
    let mut rng = Rng::new(seed);
    let (n, k, groups) = geometry(m)?;
    let f = &m.format;
    let st = scale_type(m)?;
    // Validate the dtypes before the (possibly large) weight is made.
    dtype(m, "x", &m.shapes.x_dtype)?;
    let e2m1 = f.element.exp_bits == 2 && f.element.man_bits == 1 && f.element.bias == 1;
    let quant_err = |e: QuantError| InputsError::Quantize {
        kernel: m.kernel.clone(),
        message: e.to_string(),
    };
    let (weight, scales, tensor_scale) = match (e2m1, st, f.group, f.tensor_scale) {
        (true, ScaleType::E8m0, 32, false) => {
            let w: Vec<f32> = (0..n * k).map(|_| (rng.normal() * 0.02) as f32).collect();
            let q = quantize::quantize_mxfp4(&w, n, k).map_err(quant_err)?;
            (q.weight, ScaleData::Bytes(q.scale), None)
        }
        (true, ScaleType::E4m3, 16, true) => {
            let w: Vec<f32> = (0..n * k).map(|_| (rng.normal() * 0.02) as f32).collect();
            let q = quantize::quantize_nvfp4(&w, n, k).map_err(quant_err)?;
            (q.weight, ScaleData::Bytes(q.scale), Some(q.tensor_scale))
        }
        _ => random_codes(m, &mut rng, n, k, groups, st),
    };
    with_activations(m, &mut rng, rows, weight, scales, tensor_scale)
}

/// Inputs for timing the kernel of `m` with `rows` rows: uniformly random element codes and block scales of moderate
/// magnitude drawn directly for every format, with random activations. Timing does not depend on the values, and
/// quantizing a random layer (what [`random_inputs`] does for MXFP4 and NVFP4) takes minutes on the largest layers.
pub fn timing_inputs(m: &Manifest, rows: u32, seed: u64) -> Result<HostInputs, InputsError> {
    let mut rng = Rng::new(seed);
    let (n, k, groups) = geometry(m)?;
    let st = scale_type(m)?;
    dtype(m, "x", &m.shapes.x_dtype)?;
    let (weight, scales, tensor_scale) = random_codes(m, &mut rng, n, k, groups, st);
    with_activations(m, &mut rng, rows, weight, scales, tensor_scale)
}

/// Uniformly random element codes `[N, K/2]`, block scales in [2^-6, 2^2) in the scale type `st`, and a tensor
/// scale of 0.5 where the format has one.
fn random_codes(
    m: &Manifest,
    rng: &mut Rng,
    n: usize,
    k: usize,
    groups: usize,
    st: ScaleType,
) -> (Vec<u8>, ScaleData, Option<f32>) {
    let mut value = || 2f64.powi((rng.next_u64() % 8) as i32 - 6) * (1.0 + rng.unit());
    let scales = match st {
        // value() is in [2^-6, 2^2), so the code is in 115..=122.
        ScaleType::E8m0 => ScaleData::Bytes(
            (0..groups)
                .map(|_| (121 + value().log2() as i32) as u8)
                .collect(),
        ),
        ScaleType::E4m3 => {
            ScaleData::Bytes((0..groups).map(|_| e4m3fn_encode(value() as f32)).collect())
        }
        ScaleType::F16 => ScaleData::F16(
            (0..groups)
                .map(|_| half_bits(value(), DType::F16))
                .collect(),
        ),
        ScaleType::Bf16 => ScaleData::Bf16(
            (0..groups)
                .map(|_| half_bits(value(), DType::Bf16))
                .collect(),
        ),
        ScaleType::F32 => ScaleData::F32((0..groups).map(|_| value() as f32).collect()),
    };
    let weight = (0..n * k / 2).map(|_| rng.next_u64() as u8).collect();
    (weight, scales, m.format.tensor_scale.then_some(0.5))
}

/// Adversarial inputs with `rows` rows for the kernel of `m` (see the module doc); activations and bias are random
/// from `seed`.
pub fn adversarial_inputs(m: &Manifest, rows: u32, seed: u64) -> Result<HostInputs, InputsError> {
    let mut rng = Rng::new(seed);
    let (n, k, groups) = geometry(m)?;
    let f = &m.format;
    let st = scale_type(m)?;
    let per_row = k / f.group as usize;
    // Every code at every fragment position: code (3n + k) mod 16.
    let weight = (0..n * k / 2)
        .map(|i| {
            let (r, c) = (i / (k / 2), 2 * (i % (k / 2)));
            let code = |c: usize| ((3 * r + c) % 16) as u8;
            code(c) | code(c + 1) << 4
        })
        .collect();
    let accepted = accepted_scale_codes(m)?;
    let none = || InputsError::NoAcceptedScale {
        kernel: m.kernel.clone(),
        scale: f.scale.clone(),
    };
    let scales = match st {
        // The smallest and the largest accepted exponent, alternating by row.
        ScaleType::E8m0 => {
            let (lo, hi) = (
                *accepted.first().ok_or_else(none)?,
                *accepted.last().ok_or_else(none)?,
            );
            ScaleData::Bytes(
                (0..groups)
                    .map(|i| {
                        if (i / per_row).is_multiple_of(2) {
                            lo
                        } else {
                            hi
                        }
                    })
                    .collect(),
            )
        }
        // Every accepted E4M3 code.
        ScaleType::E4m3 => {
            if accepted.is_empty() {
                return Err(none());
            }
            ScaleData::Bytes((0..groups).map(|i| accepted[i % accepted.len()]).collect())
        }
        ScaleType::Bf16 => ScaleData::Bf16(
            (0..groups)
                .map(|i| half_bits(2f64.powi((i % 9) as i32 - 4), DType::Bf16))
                .collect(),
        ),
        ScaleType::F16 => ScaleData::F16(
            (0..groups)
                .map(|i| half_bits(2f64.powi((i % 9) as i32 - 4), DType::F16))
                .collect(),
        ),
        ScaleType::F32 => {
            ScaleData::F32((0..groups).map(|i| 2f32.powi((i % 9) as i32 - 4)).collect())
        }
    };
    with_activations(
        m,
        &mut rng,
        rows,
        weight,
        scales,
        f.tensor_scale.then_some(0.5),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::testutil::{manifest, sm90_manifest};
    use crate::checkpoint::QuantScheme;
    use crate::numerics::reference::dequant_weight;
    use crate::numerics::repack::repack_scales_for;

    fn gfx(scheme: QuantScheme, bias: Option<&str>) -> Manifest {
        manifest("k", "gfx942", 64, 256, scheme, 16, (1, 64), bias, (16, 16))
    }

    /// The scales of a 64 x 256 layer ([`gfx`]'s shape) repacked into `m`'s layout.
    fn repack_64x256(
        m: &Manifest,
        scales: &ScaleData,
    ) -> Result<crate::numerics::repack::RepackedScales, crate::numerics::repack::RepackError> {
        repack_scales_for(
            &m.weight_layout,
            &m.scale_layout,
            &m.format,
            scales,
            64,
            256,
        )
    }

    #[test]
    fn the_generator_is_the_published_xorshift64_star() {
        // First outputs for seed 1, computed by hand from the recurrence (state = 1 ^ 0x9E37_79B9_7F4A_7C15 | 1).
        let mut r = Rng::new(1);
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15 ^ 1 | 1;
        for _ in 0..4 {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            assert_eq!(r.next_u64(), s.wrapping_mul(0x2545_F491_4F6C_DD1D));
        }
        // A zero seed does not get stuck.
        let mut z = Rng::new(0x9E37_79B9_7F4A_7C15);
        assert_ne!(z.next_u64(), 0);
        let u: Vec<f64> = (0..1000).map(|_| r.unit()).collect();
        assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
        let mean = u.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }

    #[test]
    fn random_inputs_are_deterministic_shaped_and_dequantize() {
        for (scheme, bias) in [
            (QuantScheme::Mxfp4, Some("bf16")),
            (QuantScheme::Nvfp4, None),
        ] {
            let m = gfx(scheme, bias);
            let a = random_inputs(&m, 5, 7).expect("inputs");
            assert_eq!(a, random_inputs(&m, 5, 7).expect("inputs"));
            assert_ne!(a.x, random_inputs(&m, 5, 8).expect("inputs").x);
            assert_eq!(a.rows, 5);
            assert_eq!(a.x.len(), 5 * 256);
            assert_eq!(a.weight.len(), 64 * 128);
            assert_eq!(a.scales.len(), 64 * 256 / m.format.group as usize);
            assert_eq!(a.bias.as_ref().map(|b| b.1.len()), bias.map(|_| 64));
            assert_eq!(a.tensor_scale.is_some(), m.format.tensor_scale);
            // The quantizer's output is a valid checkpoint layer: it dequantizes to finite values, not all zero.
            let w = dequant_weight(
                &m.format,
                &a.weight,
                &a.scales,
                a.tensor_scale,
                64,
                256,
                a.x_dtype,
            )
            .expect("dequantizes");
            assert!(w.iter().all(|v| v.is_finite()) && w.iter().any(|&v| v != 0.0));
        }
    }

    #[test]
    fn timing_inputs_have_the_layer_shapes_and_repack_for_the_sm90_layouts() {
        for (scheme, bias) in [
            (QuantScheme::Mxfp4, Some("bf16")),
            (QuantScheme::Nvfp4, None),
        ] {
            let (m, _) = sm90_manifest(&gfx(scheme, bias));
            let a = timing_inputs(&m, 3, 7).expect("inputs");
            assert_eq!(a, timing_inputs(&m, 3, 7).expect("inputs"));
            assert_eq!((a.rows, a.x.len(), a.weight.len()), (3, 3 * 256, 64 * 128));
            assert_eq!(a.scales.len(), 64 * 256 / m.format.group as usize);
            assert_eq!(a.bias.as_ref().map(|b| b.1.len()), bias.map(|_| 64));
            assert_eq!(a.tensor_scale.is_some(), m.format.tensor_scale);
            // Drawn, not quantized: every code turns up, and the scales are ones the kernel's layout accepts.
            let mut seen = [false; 16];
            for b in &a.weight {
                seen[usize::from(b & 15)] = true;
                seen[usize::from(b >> 4)] = true;
            }
            assert!(seen.iter().all(|&s| s));
            repack_64x256(&m, &a.scales).expect("the layout accepts the drawn scales");
        }
    }

    #[test]
    fn adversarial_inputs_cover_every_code_and_the_scale_extremes() {
        let (m, _) = sm90_manifest(&gfx(QuantScheme::Mxfp4, None));
        let a = adversarial_inputs(&m, 3, 1).expect("inputs");
        // Every code at every position of a 16-wide fragment row.
        for col in 0..16usize {
            let mut seen = [false; 16];
            for row in 0..16usize {
                let byte = a.weight[row * 128 + col / 2];
                let code = if col % 2 == 0 { byte & 15 } else { byte >> 4 };
                seen[code as usize] = true;
            }
            assert!(seen.iter().all(|&s| s), "column {col}");
        }
        let acc = accepted_scale_codes(&m).expect("codes");
        let (lo, hi) = (acc[0], acc[acc.len() - 1]);
        assert!(lo < hi);
        let ScaleData::Bytes(s) = &a.scales else {
            panic!("E8M0 scales are bytes")
        };
        // Rows alternate between the extremes; the layout accepts both.
        assert!(s[..8].iter().all(|&c| c == lo) && s[8..16].iter().all(|&c| c == hi));
        repack_64x256(&m, &a.scales).expect("the repacker accepts every adversarial scale");
        // One code beyond the accepted range is refused by the repacker: the extremes are the real ones.
        let mut over = s.clone();
        over[8] = hi + 1;
        assert!(repack_64x256(&m, &ScaleData::Bytes(over)).is_err());

        // NVFP4: every accepted E4M3 code appears.
        let (m, _) = sm90_manifest(&gfx(QuantScheme::Nvfp4, None));
        let a = adversarial_inputs(&m, 3, 1).expect("inputs");
        let acc = accepted_scale_codes(&m).expect("codes");
        let ScaleData::Bytes(s) = &a.scales else {
            panic!("E4M3 scales are bytes")
        };
        assert!(acc.iter().all(|c| s.contains(c)));
        assert_eq!(a.tensor_scale, Some(0.5));
    }

    #[test]
    fn bad_manifests_are_typed_errors() {
        let mut m = gfx(QuantScheme::Mxfp4, None);
        // An AMD scale layout has no mma scale geometry.
        let e = adversarial_inputs(&m, 1, 1).expect_err("gfx942 layout");
        assert!(matches!(e, InputsError::Layout { .. }), "{e}");
        m.shapes.x_dtype = "f8".into();
        let e = random_inputs(&m, 1, 1).expect_err("x dtype");
        assert!(e.to_string().contains("x dtype \"f8\""), "{e}");
        let mut m = gfx(QuantScheme::Mxfp4, None);
        m.format.scale = "e9m9".into();
        let e = random_inputs(&m, 1, 1).expect_err("scale");
        assert!(matches!(e, InputsError::ScaleType { .. }), "{e}");
        let mut m = gfx(QuantScheme::Mxfp4, None);
        m.shapes.k = 250;
        let e = random_inputs(&m, 1, 1).expect_err("k");
        assert!(matches!(e, InputsError::Shape { .. }), "{e}");
    }
}
