//! Interpreter types: element types, value shapes, memref views, and the bit-exact float encodings.
//!
//! Every value is held as raw bits in `u64` words, one word per vector element, zero-extended from the element's
//! width. The type of each SSA value is known when the IR is translated, so no tag travels with the bits.

use super::InterpError;

/// Element type of a scalar or of a vector's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// Signless integer of the given width (i1 .. i64).
    Int(u32),
    /// `index`: 32 bits, matching the GPU lowering's index-bitwidth=32.
    Index,
    Bf16,
    F16,
    F32,
    F64,
    F4E2M1FN,
    F8E5M2,
    F8E5M2FNUZ,
    F8E4M3FNUZ,
    F8E4M3FN,
    F8E8M0FNU,
}

impl ElemType {
    /// Width in bits (index is 32).
    pub fn bits(self) -> u32 {
        match self {
            ElemType::Int(b) => b,
            ElemType::Index => 32,
            ElemType::Bf16 | ElemType::F16 => 16,
            ElemType::F32 => 32,
            ElemType::F64 => 64,
            ElemType::F4E2M1FN => 4,
            ElemType::F8E5M2
            | ElemType::F8E5M2FNUZ
            | ElemType::F8E4M3FNUZ
            | ElemType::F8E4M3FN
            | ElemType::F8E8M0FNU => 8,
        }
    }

    pub fn is_int(self) -> bool {
        matches!(self, ElemType::Int(_) | ElemType::Index)
    }

    pub fn is_float(self) -> bool {
        !self.is_int()
    }

    /// Mask of the element's bits within a `u64` word.
    pub fn mask(self) -> u64 {
        mask(self.bits())
    }

    pub fn name(self) -> String {
        match self {
            ElemType::Int(b) => format!("i{b}"),
            ElemType::Index => "index".into(),
            ElemType::Bf16 => "bf16".into(),
            ElemType::F16 => "f16".into(),
            ElemType::F32 => "f32".into(),
            ElemType::F64 => "f64".into(),
            ElemType::F4E2M1FN => "f4E2M1FN".into(),
            ElemType::F8E5M2 => "f8E5M2".into(),
            ElemType::F8E5M2FNUZ => "f8E5M2FNUZ".into(),
            ElemType::F8E4M3FNUZ => "f8E4M3FNUZ".into(),
            ElemType::F8E4M3FN => "f8E4M3FN".into(),
            ElemType::F8E8M0FNU => "f8E8M0FNU".into(),
        }
    }

    fn parse(s: &str) -> Option<ElemType> {
        Some(match s {
            "index" => ElemType::Index,
            "bf16" => ElemType::Bf16,
            "f16" => ElemType::F16,
            "f32" => ElemType::F32,
            "f64" => ElemType::F64,
            "f4E2M1FN" => ElemType::F4E2M1FN,
            "f8E5M2" => ElemType::F8E5M2,
            "f8E5M2FNUZ" => ElemType::F8E5M2FNUZ,
            "f8E4M3FNUZ" => ElemType::F8E4M3FNUZ,
            "f8E4M3FN" => ElemType::F8E4M3FN,
            "f8E8M0FNU" => ElemType::F8E8M0FNU,
            _ => {
                let b: u32 = s.strip_prefix('i')?.parse().ok()?;
                if (1..=64).contains(&b) {
                    ElemType::Int(b)
                } else {
                    return None;
                }
            }
        })
    }
}

pub(crate) fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Sign-extends the low `bits` of `v` to 64 bits.
pub(crate) fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let sh = 64 - bits;
        ((v << sh) as i64) >> sh
    }
}

/// Address space of a memref.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Default / global memory: a kernel argument buffer.
    Global,
    /// `#gpu.address_space<workgroup>`: LDS.
    Workgroup,
    /// `#amdgpu.address_space<fat_raw_buffer>`: a buffer-descriptor view with hardware bounds checks.
    Fat,
}

/// A 1-D memref type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemTy {
    pub elem: ElemType,
    /// Static element count, `None` when dynamic.
    pub len: Option<u64>,
    pub space: Space,
}

/// Shape of an SSA value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Scalar(ElemType),
    Vector(ElemType, u32),
    MemRef(MemTy),
}

/// Words of a memref view value: buffer id, byte offset of element 0 in the buffer, byte limit of a fat view
/// relative to its element 0 (`u64::MAX` when none).
pub(crate) const VIEW_WORDS: u32 = 3;

impl Ty {
    /// `u64` words one lane needs for this value.
    pub fn width(self) -> u32 {
        match self {
            Ty::Scalar(_) => 1,
            Ty::Vector(_, n) => n,
            Ty::MemRef(_) => VIEW_WORDS,
        }
    }

    pub fn elem(self) -> Option<ElemType> {
        match self {
            Ty::Scalar(e) | Ty::Vector(e, _) => Some(e),
            Ty::MemRef(_) => None,
        }
    }

    pub fn name(self) -> String {
        match self {
            Ty::Scalar(e) => e.name(),
            Ty::Vector(e, n) => format!("vector<{n}x{}>", e.name()),
            Ty::MemRef(m) => format!(
                "memref<{}x{}, {:?}>",
                m.len.map_or("?".to_string(), |l| l.to_string()),
                m.elem.name(),
                m.space
            ),
        }
    }

    /// Parses MLIR's printed form of the types the interpreter supports.
    pub fn parse(s: &str) -> Result<Ty, InterpError> {
        let unsupported = || InterpError::UnsupportedType(s.to_string());
        if let Some(e) = ElemType::parse(s) {
            return Ok(Ty::Scalar(e));
        }
        if let Some(inner) = s.strip_prefix("vector<").and_then(|r| r.strip_suffix('>')) {
            // Only 1-D fixed-length vectors: `NxT`.
            let (n, e) = inner.split_once('x').ok_or_else(unsupported)?;
            let n: u32 = n.parse().map_err(|_| unsupported())?;
            let e = ElemType::parse(e).ok_or_else(unsupported)?;
            if n == 0 {
                return Err(unsupported());
            }
            return Ok(Ty::Vector(e, n));
        }
        if let Some(inner) = s.strip_prefix("memref<").and_then(|r| r.strip_suffix('>')) {
            let (shape, rest) = match inner.split_once(", ") {
                Some((a, b)) => (a, Some(b)),
                None => (inner, None),
            };
            let (n, e) = shape.split_once('x').ok_or_else(unsupported)?;
            let len = if n == "?" {
                None
            } else {
                Some(n.parse::<u64>().map_err(|_| unsupported())?)
            };
            let elem = ElemType::parse(e).ok_or_else(unsupported)?;
            let mut space = Space::Global;
            if let Some(rest) = rest {
                // Layout (`strided<[1]...>`) and memory space, in either order; a unit stride is the only layout
                // a 1-D view may have here.
                for part in split_top(rest) {
                    let part = part.trim();
                    if part.starts_with("strided<[1]") {
                        continue;
                    } else if part == "#gpu.address_space<workgroup>" || part == "3" {
                        space = Space::Workgroup;
                    } else if part == "#amdgpu.address_space<fat_raw_buffer>" || part == "7" {
                        space = Space::Fat;
                    } else if part == "#gpu.address_space<global>" || part == "1" {
                        space = Space::Global;
                    } else {
                        return Err(unsupported());
                    }
                }
            }
            if elem.bits() % 8 != 0 || elem == ElemType::Index {
                // Memory is byte addressed; index has no defined in-memory width here.
                return Err(unsupported());
            }
            return Ok(Ty::MemRef(MemTy { elem, len, space }));
        }
        Err(unsupported())
    }
}

/// Splits at commas that are not nested in `<>` / `[]`.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '<' | '[' | '(' => depth += 1,
            '>' | ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Splits a minifloat with `e` exponent bits and `m` mantissa bits into sign, biased exponent and mantissa.
fn minifloat(bits: u64, e: u32, m: u32, sign: bool) -> (bool, i32, u64) {
    let mant = bits & mask(m);
    let exp = ((bits >> m) & mask(e)) as i32;
    let neg = sign && (bits >> (e + m)) & 1 == 1;
    (neg, exp, mant)
}

fn scaled(neg: bool, exp: i32, mant: u64, m: u32, bias: i32) -> f64 {
    // Subnormals (exp == 0) have no implicit one and the exponent of the smallest normal.
    let v = if exp == 0 {
        mant as f64 * 2f64.powi(1 - bias - m as i32)
    } else {
        (1.0 + mant as f64 / (1u64 << m) as f64) * 2f64.powi(exp - bias)
    };
    if neg {
        -v
    } else {
        v
    }
}

/// The exact value of a float element's bits (every supported type is exact in f64).
pub fn float_value(t: ElemType, bits: u64) -> f64 {
    match t {
        ElemType::F32 => f32::from_bits(bits as u32) as f64,
        ElemType::F64 => f64::from_bits(bits),
        ElemType::Bf16 => half::bf16::from_bits(bits as u16).to_f64(),
        ElemType::F16 => half::f16::from_bits(bits as u16).to_f64(),
        ElemType::F4E2M1FN => {
            // No infinities or NaN: codes 0..7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6.
            let (neg, exp, mant) = minifloat(bits & 0xF, 2, 1, true);
            scaled(neg, exp, mant, 1, 1)
        }
        ElemType::F8E5M2FNUZ | ElemType::F8E4M3FNUZ => {
            // FNUZ: 0x80 (negative zero's encoding) is the only NaN; no infinities.
            let b = bits & 0xFF;
            if b == 0x80 {
                return f64::NAN;
            }
            let (e, m, bias) = if t == ElemType::F8E5M2FNUZ {
                (5, 2, 16)
            } else {
                (4, 3, 8)
            };
            let (neg, exp, mant) = minifloat(b, e, m, true);
            scaled(neg, exp, mant, m, bias)
        }
        ElemType::F8E4M3FN => {
            // FN: S.1111.111 is NaN, no infinities, the rest of the top binade is finite.
            let b = bits & 0xFF;
            if b & 0x7F == 0x7F {
                return f64::NAN;
            }
            let (neg, exp, mant) = minifloat(b, 4, 3, true);
            scaled(neg, exp, mant, 3, 7)
        }
        ElemType::F8E5M2 => {
            // IEEE-like: all-ones exponent is infinity / NaN.
            let b = bits & 0xFF;
            let (neg, exp, mant) = minifloat(b, 5, 2, true);
            if exp == 31 {
                let v = if mant == 0 { f64::INFINITY } else { f64::NAN };
                return if neg { -v } else { v };
            }
            scaled(neg, exp, mant, 2, 15)
        }
        ElemType::F8E8M0FNU => {
            // Unsigned exponent-only scale: 2^(e - 127), 0xFF is NaN.
            let b = bits & 0xFF;
            if b == 0xFF {
                f64::NAN
            } else {
                2f64.powi(b as i32 - 127)
            }
        }
        ElemType::Int(_) | ElemType::Index => f64::NAN,
    }
}

/// Rounds `v` to the nearest-even value of `t` (bf16, f16, f32 and f64 only).
pub fn float_bits(t: ElemType, v: f64) -> Option<u64> {
    Some(match t {
        ElemType::F32 => u64::from((v as f32).to_bits()),
        ElemType::F64 => v.to_bits(),
        // half's f64 conversions drop the low mantissa word before rounding (a double rounding), so round here to
        // the target precision first; the result is exact in f32 and converts exactly.
        ElemType::Bf16 => {
            u64::from(half::bf16::from_f32(round_to(v, 7, -126, BF16_MAX) as f32).to_bits())
        }
        ElemType::F16 => {
            u64::from(half::f16::from_f32(round_to(v, 10, -14, 65504.0) as f32).to_bits())
        }
        _ => return None,
    })
}

const BF16_MAX: f64 = 3.3895313892515355e38;

/// Round-to-nearest-even of `v` to a binary float with `m` fraction bits, minimum normal exponent `emin` (gradual
/// underflow below it) and largest finite value `max` (beyond which it overflows to infinity).
fn round_to(v: f64, m: i32, emin: i32, max: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    let e = (((v.to_bits() >> 52) & 0x7FF) as i32 - 1023).max(emin);
    let ulp = 2f64.powi(e - m);
    let r = (v / ulp).round_ties_even() * ulp;
    if r.abs() > max {
        f64::INFINITY.copysign(v)
    } else {
        r
    }
}

/// Rounds an f32 to `t` with a single rounding (f32 -> f64 is exact, so going through f64 would double-round
/// for bf16 / f16; half converts from f32 directly with round-to-nearest-even).
pub fn float_bits_from_f32(t: ElemType, v: f32) -> Option<u64> {
    Some(match t {
        ElemType::F32 => u64::from(v.to_bits()),
        ElemType::F64 => (v as f64).to_bits(),
        ElemType::Bf16 => u64::from(half::bf16::from_f32(v).to_bits()),
        ElemType::F16 => u64::from(half::f16::from_f32(v).to_bits()),
        _ => return None,
    })
}
