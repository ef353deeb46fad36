//! Exact decoders of the 8-bit float types nibble meets, and the round-to-nearest-even encoder to E4M3FN.
//!
//! The decoders follow the definitions field by field (sign, exponent, mantissa, bias); no bit tricks that reuse
//! another format's encoding. Every value of these types is exact in f32.
//!
//! - E8M0 (OCP MX block scale, MLIR `f8E8M0FNU`): `2^(e - 127)` for `e` in 0..=254, 0xFF is NaN. No sign, no zero.
//! - E4M3FN (OCP, MLIR `f8E4M3FN`): bias 7, subnormals `m/8 * 2^-6`, max 448, `S.1111.111` is NaN, no Inf.
//! - E5M2 FNUZ ("bf8" of gfx942, MLIR `f8E5M2FNUZ`): bias 16, subnormals `m/4 * 2^-15`, max 57344, 0x80 is the only
//!   NaN, no Inf, no -0.

use std::fmt;
use std::sync::OnceLock;

use super::pow2;

/// The checkpoint's block-scale type, as the manifest's `format.scale` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleType {
    E8m0,
    E4m3,
    F16,
    Bf16,
    F32,
}

impl ScaleType {
    /// Parses `e8m0`, `e4m3`, `f16`, `bf16` or `f32`.
    pub fn parse(s: &str) -> Option<ScaleType> {
        match s {
            "e8m0" => Some(ScaleType::E8m0),
            "e4m3" => Some(ScaleType::E4m3),
            "f16" => Some(ScaleType::F16),
            "bf16" => Some(ScaleType::Bf16),
            "f32" => Some(ScaleType::F32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ScaleType::E8m0 => "e8m0",
            ScaleType::E4m3 => "e4m3",
            ScaleType::F16 => "f16",
            ScaleType::Bf16 => "bf16",
            ScaleType::F32 => "f32",
        }
    }

    /// Bytes per stored scale.
    pub fn bytes(self) -> usize {
        match self {
            ScaleType::E8m0 | ScaleType::E4m3 => 1,
            ScaleType::F16 | ScaleType::Bf16 => 2,
            ScaleType::F32 => 4,
        }
    }
}

impl fmt::Display for ScaleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// E8M0: `2^(code - 127)`; 0xFF is NaN. 2^-127 (code 0) is an f32 subnormal, still exact.
pub fn e8m0_decode(code: u8) -> f32 {
    if code == 0xFF {
        return f32::NAN;
    }
    pow2(i32::from(code) - 127) as f32
}

/// Value of a sign/exponent/mantissa byte with the given field widths and bias, IEEE-style subnormals, no specials.
fn minifloat8(code: u8, exp_bits: u32, man_bits: u32, bias: i32) -> f64 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = i32::from((code >> man_bits) & ((1u8 << exp_bits) - 1));
    let m = f64::from(code & ((1u8 << man_bits) - 1));
    let frac = m / f64::from(1u32 << man_bits);
    let mag = if e == 0 {
        frac * pow2(1 - bias)
    } else {
        (1.0 + frac) * pow2(e - bias)
    };
    sign * mag
}

/// OCP E4M3FN: bias 7, no Inf, `S.1111.111` (0x7F, 0xFF) is NaN. 0x80 is -0.
pub fn e4m3fn_decode(code: u8) -> f32 {
    if code & 0x7F == 0x7F {
        return f32::NAN;
    }
    minifloat8(code, 4, 3, 7) as f32
}

/// FNUZ E5M2 ("bf8" on gfx942): bias 16, no Inf, no -0; 0x80 is the only NaN.
pub fn bf8_fnuz_decode(code: u8) -> f32 {
    if code == 0x80 {
        return f32::NAN;
    }
    minifloat8(code, 5, 2, 16) as f32
}

/// Largest finite E4M3FN value.
pub const E4M3_MAX: f32 = 448.0;

/// Index of the value of the sorted, strictly increasing, non-negative `mags` nearest to `a >= 0`; ties go to the
/// even index, values above the last saturate to it. For sign-magnitude minifloats whose codes `0..mags.len()` are
/// the non-negative values in order, the index is the code and "even index" is "even significand" (IEEE
/// round-to-nearest-even, with saturation instead of overflow).
pub(crate) fn nearest_index(a: f64, mags: &[f64]) -> usize {
    debug_assert!(a >= 0.0 && !mags.is_empty());
    // First index whose value exceeds `a`.
    let hi = mags.partition_point(|&m| m <= a);
    if hi == 0 {
        return 0;
    }
    if hi == mags.len() {
        return mags.len() - 1;
    }
    let lo = hi - 1;
    // The midpoint of two adjacent minifloat values is exact in f64.
    let mid = (mags[lo] + mags[hi]) / 2.0;
    if a < mid {
        lo
    } else if a > mid {
        hi
    } else if lo % 2 == 0 {
        lo
    } else {
        hi
    }
}

fn e4m3_magnitudes() -> &'static [f64] {
    static MAGS: OnceLock<Vec<f64>> = OnceLock::new();
    MAGS.get_or_init(|| (0u8..0x7F).map(|c| f64::from(e4m3fn_decode(c))).collect())
}

/// f32 to E4M3FN, round-to-nearest-even, saturating: finite values beyond the range and ±Inf become ±448
/// (0x7E/0xFE). NaN becomes 0x7F. The sign of zero (and of values rounding to zero) is kept.
pub fn e4m3fn_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = f64::from(x.abs());
    // `nearest_index` returns an index < 0x7F.
    sign | nearest_index(a, e4m3_magnitudes()) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition written differently: integer significand times a power of two.
    fn by_definition(code: u8, exp_bits: u32, man_bits: u32, bias: i32) -> f64 {
        let s = code >> 7;
        let e = (u32::from(code) >> man_bits) & ((1 << exp_bits) - 1);
        let m = u32::from(code) & ((1 << man_bits) - 1);
        let (sig, exp) = if e == 0 {
            (f64::from(m), 1 - bias - man_bits as i32)
        } else {
            (
                f64::from(m + (1 << man_bits)),
                e as i32 - bias - man_bits as i32,
            )
        };
        let v = sig * 2f64.powi(exp);
        if s == 1 {
            -v
        } else {
            v
        }
    }

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn e8m0_all_codes() {
        for c in 0u8..=255 {
            let v = f64::from(e8m0_decode(c));
            if c == 255 {
                assert!(v.is_nan());
            } else {
                assert_eq!(v, 2f64.powi(i32::from(c) - 127), "code {c}");
                assert!(v > 0.0);
            }
        }
        assert_eq!(e8m0_decode(127), 1.0);
        assert_eq!(e8m0_decode(0), f32::from_bits(1 << 22)); // 2^-127, subnormal
        assert_eq!(e8m0_decode(254), 2f32.powi(127));
    }

    #[test]
    fn e4m3fn_all_codes() {
        let mut finite = 0;
        for c in 0u8..=255 {
            let v = f64::from(e4m3fn_decode(c));
            if c & 0x7F == 0x7F {
                assert!(v.is_nan(), "code {c:#x}");
                continue;
            }
            finite += 1;
            assert!(same(v, by_definition(c, 4, 3, 7)), "code {c:#x}: {v}");
            assert!(v.is_finite());
        }
        assert_eq!(finite, 254);
        assert_eq!(e4m3fn_decode(0x7E), 448.0);
        assert_eq!(e4m3fn_decode(0xFE), -448.0);
        assert_eq!(e4m3fn_decode(0x01), 2f32.powi(-9));
        assert_eq!(e4m3fn_decode(0x08), 2f32.powi(-6));
        assert_eq!(e4m3fn_decode(0x38), 1.0);
        assert!(e4m3fn_decode(0x80).is_sign_negative() && e4m3fn_decode(0x80) == 0.0);
        // Positive codes are strictly increasing.
        for c in 0u8..0x7E {
            assert!(e4m3fn_decode(c) < e4m3fn_decode(c + 1));
        }
    }

    #[test]
    fn bf8_fnuz_all_codes() {
        for c in 0u8..=255 {
            let v = f64::from(bf8_fnuz_decode(c));
            if c == 0x80 {
                assert!(v.is_nan());
                continue;
            }
            assert!(same(v, by_definition(c, 5, 2, 16)), "code {c:#x}: {v}");
            assert!(v.is_finite());
            // Cross-check with the OCP E5M2 byte (the top byte of an f16, bias 15): FNUZ is half of it where the
            // f16 is finite.
            let h = half::f16::from_bits(u16::from(c) << 8);
            if h.is_finite() {
                assert_eq!(v, h.to_f64() / 2.0, "code {c:#x}");
            }
        }
        assert_eq!(bf8_fnuz_decode(0x7F), 57344.0);
        assert_eq!(bf8_fnuz_decode(0xFF), -57344.0);
        assert_eq!(bf8_fnuz_decode(0x01), 2f32.powi(-17));
        assert_eq!(bf8_fnuz_decode(0x04), 2f32.powi(-15));
        assert_eq!(bf8_fnuz_decode(0x40), 1.0);
        assert_eq!(bf8_fnuz_decode(0x00).to_bits(), 0);
    }

    #[test]
    fn e4m3_encoder_round_trips_every_code() {
        for c in 0u8..=255 {
            let v = e4m3fn_decode(c);
            if v.is_nan() {
                assert_eq!(e4m3fn_encode(v), 0x7F);
            } else {
                assert_eq!(e4m3fn_encode(v), c, "code {c:#x} value {v}");
            }
        }
    }

    #[test]
    fn e4m3_encoder_rounds_to_nearest_even_and_saturates() {
        // Every midpoint between adjacent codes goes to the even code; just off the midpoint goes to the nearer.
        for c in 0u8..0x7E {
            let lo = e4m3fn_decode(c);
            let hi = e4m3fn_decode(c + 1);
            let mid = (f64::from(lo) + f64::from(hi)) / 2.0;
            let mid32 = mid as f32;
            assert_eq!(f64::from(mid32), mid, "midpoints are exact in f32");
            let even = if c % 2 == 0 { c } else { c + 1 };
            assert_eq!(e4m3fn_encode(mid32), even, "midpoint of {c:#x}");
            assert_eq!(e4m3fn_encode(-mid32), even | 0x80);
            let below = f32::from_bits(mid32.to_bits() - 1);
            let above = f32::from_bits(mid32.to_bits() + 1);
            assert_eq!(e4m3fn_encode(below), c);
            assert_eq!(e4m3fn_encode(above), c + 1);
        }
        assert_eq!(e4m3fn_encode(464.0), 0x7E);
        assert_eq!(e4m3fn_encode(500.0), 0x7E);
        assert_eq!(e4m3fn_encode(1e30), 0x7E);
        assert_eq!(e4m3fn_encode(f32::INFINITY), 0x7E);
        assert_eq!(e4m3fn_encode(f32::NEG_INFINITY), 0xFE);
        assert_eq!(e4m3fn_encode(-1e30), 0xFE);
        assert_eq!(e4m3fn_encode(f32::NAN), 0x7F);
        // Half the smallest subnormal ties to zero; a bit above it rounds up.
        assert_eq!(e4m3fn_encode(2f32.powi(-10)), 0x00);
        assert_eq!(e4m3fn_encode(1.5 * 2f32.powi(-10)), 0x01);
        assert_eq!(e4m3fn_encode(-2f32.powi(-11)), 0x80);
        assert_eq!(e4m3fn_encode(0.0), 0x00);
        assert_eq!(e4m3fn_encode(-0.0), 0x80);
        assert_eq!(e4m3fn_encode(1.0), 0x38);
        // 1 + 1/16 is the midpoint of 1 and 1.125: even (1.0).
        assert_eq!(e4m3fn_encode(1.0625), 0x38);
        // 1.125 + 1/16 is the midpoint of 1.125 (odd) and 1.25 (even).
        assert_eq!(e4m3fn_encode(1.1875), 0x3A);
    }

    proptest::proptest! {
        /// For any finite f32 below the saturation range, the encoding is a nearest E4M3 value, and on a tie
        /// the even code.
        #[test]
        fn e4m3_encoder_is_nearest(bits in proptest::prelude::any::<u32>()) {
            let x = f32::from_bits(bits);
            proptest::prop_assume!(x.is_finite());
            let c = e4m3fn_encode(x);
            let d = (f64::from(e4m3fn_decode(c)) - f64::from(x)).abs();
            for other in (0u8..=255).filter(|&o| o & 0x7F != 0x7F) {
                let e = (f64::from(e4m3fn_decode(other)) - f64::from(x)).abs();
                proptest::prop_assert!(d <= e, "{x:e} -> {c:#x}, but {other:#x} is nearer");
                if d == e && f64::from(x.abs()) <= 448.0 && e4m3fn_decode(other) != e4m3fn_decode(c) {
                    proptest::prop_assert!(c & 1 == 0, "{x:e} ties to odd {c:#x}");
                }
            }
            proptest::prop_assert_eq!(c & 0x80 != 0, x.is_sign_negative());
        }
    }

    #[test]
    fn scale_type_names() {
        for t in [
            ScaleType::E8m0,
            ScaleType::E4m3,
            ScaleType::F16,
            ScaleType::Bf16,
            ScaleType::F32,
        ] {
            assert_eq!(ScaleType::parse(t.name()), Some(t));
            assert_eq!(t.to_string(), t.name());
        }
        assert_eq!(ScaleType::parse("fp8"), None);
        assert_eq!(ScaleType::F32.bytes(), 4);
    }
}
