//! Host-side numerics: exact decoders of the 8-bit scale types, the quantizers real tools use (to make test data),
//! an independent scalar reference of what a nibble kernel computes, and the repacking of checkpoint weights and
//! scales into the kernel layouts of the manifest.
//!
//! Everything here is plain Rust (no MLIR, no GPU). Values of 4-bit elements and 8-bit scales are exact in f32 and
//! f64; all conversions that round are round-to-nearest-even and say so.

pub mod compare;
pub mod fp8;
pub mod inputs;
pub mod quantize;
pub mod reference;
pub mod repack;
pub mod repack_mma;

pub use fp8::ScaleType;

/// The median of `v` (the upper one of an even count), as the timings report it; NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Block scales as a checkpoint stores them, row-major `[N, K / group]`.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleData {
    /// Raw 8-bit codes: E8M0 or E4M3FN (which one is the format's `scale` type).
    Bytes(Vec<u8>),
    /// IEEE binary16 bit patterns.
    F16(Vec<u16>),
    /// bfloat16 bit patterns.
    Bf16(Vec<u16>),
    F32(Vec<f32>),
}

impl ScaleData {
    pub fn len(&self) -> usize {
        match self {
            ScaleData::Bytes(v) => v.len(),
            ScaleData::F16(v) | ScaleData::Bf16(v) => v.len(),
            ScaleData::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Short name of the storage, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ScaleData::Bytes(_) => "8-bit codes",
            ScaleData::F16(_) => "f16",
            ScaleData::Bf16(_) => "bf16",
            ScaleData::F32(_) => "f32",
        }
    }

    /// Whether this storage holds values of scale type `t`.
    pub fn holds(&self, t: ScaleType) -> bool {
        matches!(
            (self, t),
            (ScaleData::Bytes(_), ScaleType::E8m0 | ScaleType::E4m3)
                | (ScaleData::F16(_), ScaleType::F16)
                | (ScaleData::Bf16(_), ScaleType::Bf16)
                | (ScaleData::F32(_), ScaleType::F32)
        )
    }

    /// The exact value of scale `i` read as type `t` (NaN for NaN codes), and its raw encoding for messages.
    /// `None` when `i` is out of range or the storage does not hold `t`.
    pub fn value(&self, t: ScaleType, i: usize) -> Option<(f64, String)> {
        match (self, t) {
            (ScaleData::Bytes(v), ScaleType::E8m0) => v
                .get(i)
                .map(|&c| (f64::from(fp8::e8m0_decode(c)), format!("e8m0 0x{c:02x}"))),
            (ScaleData::Bytes(v), ScaleType::E4m3) => v
                .get(i)
                .map(|&c| (f64::from(fp8::e4m3fn_decode(c)), format!("e4m3 0x{c:02x}"))),
            (ScaleData::F16(v), ScaleType::F16) => v
                .get(i)
                .map(|&b| (half::f16::from_bits(b).to_f64(), format!("f16 0x{b:04x}"))),
            (ScaleData::Bf16(v), ScaleType::Bf16) => v
                .get(i)
                .map(|&b| (half::bf16::from_bits(b).to_f64(), format!("bf16 0x{b:04x}"))),
            (ScaleData::F32(v), ScaleType::F32) => v
                .get(i)
                .map(|&x| (f64::from(x), format!("f32 0x{:08x}", x.to_bits()))),
            _ => None,
        }
    }
}

/// A 16-bit floating-point operand/output type of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    Bf16,
    F16,
}

impl DType {
    /// Parses the manifest's spelling (`bf16`, `f16`).
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "bf16" => Some(DType::Bf16),
            "f16" => Some(DType::F16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

/// `2^e` exactly, for `e` in the normal and subnormal range of f64; 0 below it and +inf above it.
pub(crate) fn pow2(e: i32) -> f64 {
    if e > 1023 {
        f64::INFINITY
    } else if e >= -1022 {
        // The biased exponent is in 1..=2046 here.
        f64::from_bits(((e + 1023) as u64) << 52)
    } else if e >= -1074 {
        f64::from_bits(1u64 << (e + 1074))
    } else {
        0.0
    }
}

/// `floor(log2(|x|))` for a finite, nonzero, normal f64 (every f32 is a normal f64).
pub(crate) fn ilog2_normal(x: f64) -> i32 {
    (((x.to_bits() >> 52) & 0x7FF) as i32) - 1023
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow2_is_exact_over_the_whole_range() {
        assert_eq!(pow2(0), 1.0);
        assert_eq!(pow2(-1), 0.5);
        assert_eq!(pow2(10), 1024.0);
        assert_eq!(pow2(1023), f64::MAX / (2.0 - f64::EPSILON));
        assert_eq!(pow2(-1022), f64::MIN_POSITIVE);
        assert_eq!(pow2(-1074), f64::from_bits(1));
        assert_eq!(pow2(-1075), 0.0);
        assert_eq!(pow2(1024), f64::INFINITY);
        for e in -1022..=1023 {
            assert_eq!(pow2(e), 2f64.powi(e), "2^{e}");
        }
        for e in -1074..-1022 {
            assert_eq!(pow2(e).to_bits(), 1u64 << (e + 1074), "2^{e}");
        }
    }

    #[test]
    fn ilog2_of_normals() {
        assert_eq!(ilog2_normal(1.0), 0);
        assert_eq!(ilog2_normal(6.0), 2);
        assert_eq!(ilog2_normal(7.999), 2);
        assert_eq!(ilog2_normal(8.0), 3);
        assert_eq!(ilog2_normal(0.75), -1);
        assert_eq!(ilog2_normal(-0.75), -1);
        assert_eq!(ilog2_normal(f64::from(f32::from_bits(1))), -149);
    }

    #[test]
    fn scale_data_reads_each_type() {
        let b = ScaleData::Bytes(vec![127, 0x38, 0xFF]);
        assert_eq!(b.value(ScaleType::E8m0, 0).map(|v| v.0), Some(1.0));
        assert_eq!(b.value(ScaleType::E4m3, 1).map(|v| v.0), Some(1.0));
        assert!(b.value(ScaleType::E8m0, 2).is_some_and(|v| v.0.is_nan()));
        assert!(b.value(ScaleType::E8m0, 3).is_none());
        assert!(b.value(ScaleType::F32, 0).is_none());
        assert!(b.holds(ScaleType::E4m3) && !b.holds(ScaleType::F16));
        let h = ScaleData::F16(vec![0x3C00]);
        assert_eq!(h.value(ScaleType::F16, 0).map(|v| v.0), Some(1.0));
        let bf = ScaleData::Bf16(vec![0x3F80]);
        assert_eq!(bf.value(ScaleType::Bf16, 0).map(|v| v.0), Some(1.0));
        let f = ScaleData::F32(vec![0.25]);
        assert_eq!(
            f.value(ScaleType::F32, 0),
            Some((0.25, "f32 0x3e800000".to_string()))
        );
        assert_eq!(DType::parse("bf16"), Some(DType::Bf16));
        assert_eq!(DType::parse("f32"), None);
    }

    #[test]
    fn median_takes_the_middle_value_after_sorting() {
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(super::median(&mut []).is_nan());
    }
}
