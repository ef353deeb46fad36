//! Host-side repacking of checkpoint weights and scales into the kernel layouts of the manifest
//! (`manifest::WeightLayout`, `nibble.mfma_pairs.v1`, and `manifest::ScaleLayout`, `nibble.scales_f32.v1`).
//!
//! Reading of the layout contract (the doc comments of `WeightLayout`/`ScaleLayout` and docs/MANIFEST.md), where
//! it leaves room:
//! - `T` (applied here) is the inverse of the kernel's `second_half` transform: `bitreverse` is its own inverse;
//!   for `rotl4` the kernel rotates left by 4, so the repacking rotates right by 4. The kernel reads the first four
//!   elements as `word & mask` and the last four as `kernel_transform(word) & mask`.
//! - The layout is only meaningful when one wave (64 lanes) covers one MFMA pair exactly:
//!   `64 % atom_n == 0` and `8 * (64 / atom_n) == 2 * atom_k` (16x16x16 and 32x32x8 both satisfy it). Otherwise the
//!   word-index formula would not be a bijection onto `[N, K]`; such layouts are rejected.
//! - `mag_shift` must be `2 - man_bits` of the element (only then do the masked bytes read as FNUZ bf8 values
//!   `element * 2^(bias - 16)`, which the contract states), and `mask` must select exactly the bits of the first
//!   half (`0x80808080 | 0x07070707 << mag_shift`, no bit of the transformed second half under it in either read).
//!   Anything else is rejected as an inconsistent manifest rather than repacked into words the kernel misreads.
//! - Scales: a zero block scale (+0 or -0; E4M3 0x00/0x80, float zeros) is accepted and stored as +0.0: the kernel
//!   multiplies by the f32 scale, so a zero scale gives zero weights, as in the reference. Negative, NaN and
//!   infinite scales are rejected, and so are nonzero scales whose product with `2^exp_offset` is not a finite
//!   normal f32 (for MXFP4 on gfx942, `exp_offset` 15: E8M0 codes above 239).
//! - `ScaleLayout::group` must equal `Format::group`.

use rayon::prelude::*;
use thiserror::Error;

use super::fp8::ScaleType;
use super::reference::scale_problem;
pub use super::repack_mma::{
    repack_scales_mma, repack_weight_mma, unpack_weight_mma, MMA_SCALE_EXP_LAYOUT_ID,
    MMA_SCALE_LAYOUT_ID, MMA_WEIGHT_LAYOUT_ID,
};
use super::{pow2, DType, ScaleData};
use crate::manifest::{Element, Format, ScaleLayout, WeightLayout};

/// The weight layout this module implements.
pub const WEIGHT_LAYOUT_ID: &str = "nibble.mfma_pairs.v1";
/// The scale layout this module implements.
pub const SCALE_LAYOUT_ID: &str = "nibble.scales_f32.v1";
/// Lanes of a wave.
const LANES: usize = 64;

#[derive(Debug, Error, PartialEq)]
pub enum RepackError {
    #[error("weight layout {id:?}: {what}")]
    WeightLayout { id: String, what: String },
    #[error("scale layout {id:?}: {what}")]
    ScaleLayout { id: String, what: String },
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
    #[error("scales are stored as {got}, but format {format} has {expected} scales")]
    ScaleStorage {
        format: String,
        expected: ScaleType,
        got: &'static str,
    },
    #[error("block scale at row {row}, group {group} ({raw}, value {value:e}) {reason}")]
    Scale {
        row: usize,
        group: usize,
        raw: String,
        value: f64,
        reason: String,
    },
    #[error("repacked word {index} ({word:#010x}) is not a word this layout produces")]
    NonCanonical { index: usize, word: u32 },
}

/// How the kernel brings the second four elements of a word under the mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecondHalf {
    Bitreverse,
    Rotl4,
}

impl SecondHalf {
    /// Parses the manifest's `second_half` (`bitreverse`, `rotl4`).
    pub fn parse(s: &str) -> Option<SecondHalf> {
        match s {
            "bitreverse" => Some(SecondHalf::Bitreverse),
            "rotl4" => Some(SecondHalf::Rotl4),
            _ => None,
        }
    }

    /// The kernel's transform.
    pub fn kernel(self, word: u32) -> u32 {
        match self {
            SecondHalf::Bitreverse => word.reverse_bits(),
            SecondHalf::Rotl4 => word.rotate_left(4),
        }
    }

    /// `T`, the inverse of the kernel's transform, applied when repacking.
    pub fn repack(self, word: u32) -> u32 {
        match self {
            SecondHalf::Bitreverse => word.reverse_bits(),
            SecondHalf::Rotl4 => word.rotate_right(4),
        }
    }
}

/// The bit layout of one repacked word, validated against the element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordCodec {
    mag_shift: u32,
    second_half: SecondHalf,
    mask: u32,
}

impl WordCodec {
    /// Validates the bit-level part of `layout` for `elem` (see the module doc).
    pub fn new(layout: &WeightLayout, elem: &Element) -> Result<WordCodec, RepackError> {
        let err = |what: String| RepackError::WeightLayout {
            id: layout.id.clone(),
            what,
        };
        if elem.exp_bits + elem.man_bits != 3 {
            return Err(err(format!(
                "element {} (e{}m{}) is not a 4-bit minifloat",
                elem.name, elem.exp_bits, elem.man_bits
            )));
        }
        let want_shift = 2 - u32::from(elem.man_bits.min(2));
        if elem.man_bits > 2 || layout.mag_shift != want_shift {
            return Err(err(format!(
                "mag_shift {} does not put the mantissa of {} (e{}m{}) at the top of a bf8 mantissa (want {})",
                layout.mag_shift, elem.name, elem.exp_bits, elem.man_bits, want_shift
            )));
        }
        let second_half = SecondHalf::parse(&layout.second_half)
            .ok_or_else(|| err(format!("unknown second_half {:?}", layout.second_half)))?;
        let codec = WordCodec {
            mag_shift: layout.mag_shift,
            second_half,
            mask: layout.mask,
        };
        let used = codec.half([0xF; 4]);
        let second = second_half.repack(used);
        if used & second != 0 {
            return Err(err(format!(
                "with mag_shift {} the halves overlap under {:?}",
                layout.mag_shift, layout.second_half
            )));
        }
        if layout.mask & used != used
            || layout.mask & second != 0
            || layout.mask & second_half.kernel(used) != 0
        {
            return Err(err(format!(
                "mask {:#010x} does not select the first half {used:#010x} alone",
                layout.mask
            )));
        }
        Ok(codec)
    }

    /// No checks: for tests that build deliberately wrong layouts.
    #[cfg(test)]
    fn unchecked(mag_shift: u32, second_half: SecondHalf, mask: u32) -> WordCodec {
        WordCodec {
            mag_shift,
            second_half,
            mask,
        }
    }

    pub fn mask(&self) -> u32 {
        self.mask
    }

    pub fn second_half(&self) -> SecondHalf {
        self.second_half
    }

    /// `byte(c) = ((c & 8) << 4) | ((c & 7) << mag_shift)`, with -0 (0x8) stored as +0.
    pub fn byte(&self, code: u8) -> u8 {
        let c = if code & 0xF == 0x8 { 0 } else { code & 0xF };
        ((c & 8) << 4) | ((c & 7) << self.mag_shift)
    }

    /// `A(a0..a3) = Σ byte(a_t) << 8t`.
    fn half(&self, codes: [u8; 4]) -> u32 {
        codes
            .iter()
            .enumerate()
            .fold(0, |w, (t, &c)| w | u32::from(self.byte(c)) << (8 * t))
    }

    /// The word of eight codes: `A(c0..c3) | T(A(c4..c7))`.
    pub fn pack(&self, codes: [u8; 8]) -> u32 {
        let lo = self.half([codes[0], codes[1], codes[2], codes[3]]);
        let hi = self.half([codes[4], codes[5], codes[6], codes[7]]);
        lo | self.second_half.repack(hi)
    }

    /// The eight codes of a word as the kernel reads them (`word & mask`, `kernel(word) & mask`), or `None` when
    /// the word is not one `pack` produces.
    pub fn unpack(&self, word: u32) -> Option<[u8; 8]> {
        let lo = word & self.mask;
        let hi = self.second_half.kernel(word) & self.mask;
        let code = |b: u8| ((b >> 7) << 3) | ((b >> self.mag_shift) & 7);
        let mut codes = [0u8; 8];
        for t in 0..4 {
            codes[t] = code((lo >> (8 * t)) as u8);
            codes[t + 4] = code((hi >> (8 * t)) as u8);
        }
        (self.pack(codes) == word).then_some(codes)
    }

    /// Lookup tables: `word = T[0][b0] | T[1][b1] | T[2][b2] | T[3][b3]` for the four checkpoint bytes holding
    /// `c0..c7` (every transform here is a bit permutation, so it distributes over `|`).
    fn tables(&self) -> [[u32; 256]; 4] {
        let mut t = [[0u32; 256]; 4];
        for b in 0..=255u8 {
            let pair = u32::from(self.byte(b & 0xF)) | u32::from(self.byte(b >> 4)) << 8;
            let i = usize::from(b);
            t[0][i] = pair;
            t[1][i] = pair << 16;
            t[2][i] = self.second_half.repack(pair);
            t[3][i] = self.second_half.repack(pair << 16);
        }
        t
    }
}

/// The validated geometry of `nibble.mfma_pairs.v1` for one `[N, K]` weight.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    atom_n: usize,
    atom_k: usize,
    wpl: usize,
    n: usize,
    k: usize,
}

impl Geometry {
    fn new(layout: &WeightLayout, n: usize, k: usize) -> Result<Geometry, RepackError> {
        let err = |what: String| RepackError::WeightLayout {
            id: layout.id.clone(),
            what,
        };
        if layout.id != WEIGHT_LAYOUT_ID {
            return Err(err(format!("this runtime implements {WEIGHT_LAYOUT_ID}")));
        }
        let (atom_n, atom_k, wpl) = (
            layout.atom_n as usize,
            layout.atom_k as usize,
            layout.words_per_lane as usize,
        );
        if atom_n == 0
            || !LANES.is_multiple_of(atom_n)
            || 8 * (LANES / atom_n) != 2 * atom_k
            || wpl == 0
        {
            return Err(err(format!(
                "atom {atom_n}x{atom_k} with {wpl} words per lane does not map 64 lanes onto one MFMA pair"
            )));
        }
        let kc = wpl * 2 * atom_k;
        if n == 0 || !n.is_multiple_of(atom_n) {
            return Err(RepackError::Shape {
                n,
                k,
                what: format!("N must be a positive multiple of atom_n = {atom_n}"),
            });
        }
        if k == 0 || !k.is_multiple_of(kc) {
            return Err(RepackError::Shape {
                n,
                k,
                what: format!(
                    "K must be a positive multiple of words_per_lane * 2 * atom_k = {kc}"
                ),
            });
        }
        Ok(Geometry {
            atom_n,
            atom_k,
            wpl,
            n,
            k,
        })
    }

    /// Words per n-tile of `atom_n` rows (contiguous in the repacked buffer).
    fn tile_words(&self) -> usize {
        self.atom_n * self.k / 8
    }

    fn words(&self) -> usize {
        self.n * self.k / 8
    }

    /// For the word at `local` (index within its n-tile): (row within the tile, first K of its 8 elements).
    fn coords(&self, local: usize) -> (usize, usize) {
        let j = local % self.wpl;
        let lane = (local / self.wpl) % LANES;
        let c = local / (self.wpl * LANES);
        let row = lane % self.atom_n;
        let k0 = (c * self.wpl + j) * 2 * self.atom_k + 8 * (lane / self.atom_n);
        (row, k0)
    }
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), RepackError> {
    if got == expected {
        Ok(())
    } else {
        Err(RepackError::Length {
            what,
            expected,
            got,
        })
    }
}

/// Repacks checkpoint weight bytes `[N, K/2]` (low nibble = even K) into the u32 words of `layout`
/// (`N*K/8` words). Multi-threaded over n-tiles. The code 0x8 (-0) is stored as +0.
///
/// Layouts with id [`MMA_WEIGHT_LAYOUT_ID`] are repacked by [`repack_weight_mma`].
pub fn repack_weight(
    layout: &WeightLayout,
    elem: &Element,
    weight: &[u8],
    n: usize,
    k: usize,
) -> Result<Vec<u32>, RepackError> {
    if layout.id == MMA_WEIGHT_LAYOUT_ID {
        return repack_weight_mma(layout, elem, weight, n, k);
    }
    let g = Geometry::new(layout, n, k)?;
    let codec = WordCodec::new(layout, elem)?;
    check_len("weight", weight.len(), n * k / 2)?;
    let t = codec.tables();
    let row_bytes = k / 2;
    let tile_bytes = g.atom_n * row_bytes;
    let mut out = vec![0u32; g.words()];
    out.par_chunks_mut(g.tile_words())
        .zip(weight.par_chunks(tile_bytes))
        .for_each(|(words, src)| {
            // The loops enumerate `words` in order: chunk c, lane, word j (see `Geometry::coords`).
            let mut out = words.chunks_exact_mut(g.wpl);
            for c in 0..k / (g.wpl * 2 * g.atom_k) {
                for lane in 0..LANES {
                    let Some(lane_words) = out.next() else { return };
                    let row = lane % g.atom_n;
                    let k_lane = c * g.wpl * 2 * g.atom_k + 8 * (lane / g.atom_n);
                    for (j, w) in lane_words.iter_mut().enumerate() {
                        let at = row * row_bytes + (k_lane + j * 2 * g.atom_k) / 2;
                        let b = &src[at..at + 4];
                        *w = t[0][usize::from(b[0])]
                            | t[1][usize::from(b[1])]
                            | t[2][usize::from(b[2])]
                            | t[3][usize::from(b[3])];
                    }
                }
            }
        });
    Ok(out)
}

/// Inverts `repack_weight`: checkpoint bytes `[N, K/2]` from the repacked words. Every code comes back except -0,
/// which comes back as +0. Words that `repack_weight` cannot produce are an error.
///
/// Layouts with id [`MMA_WEIGHT_LAYOUT_ID`] are unpacked by [`unpack_weight_mma`] (exactly, -0 included).
pub fn unpack_weight(
    layout: &WeightLayout,
    elem: &Element,
    words: &[u32],
    n: usize,
    k: usize,
) -> Result<Vec<u8>, RepackError> {
    if layout.id == MMA_WEIGHT_LAYOUT_ID {
        return unpack_weight_mma(layout, elem, words, n, k);
    }
    let g = Geometry::new(layout, n, k)?;
    let codec = WordCodec::new(layout, elem)?;
    check_len("repacked weight", words.len(), g.words())?;
    let row_bytes = k / 2;
    let tile_bytes = g.atom_n * row_bytes;
    let tile_words = g.tile_words();
    let mut out = vec![0u8; n * row_bytes];
    out.par_chunks_mut(tile_bytes)
        .zip(words.par_chunks(tile_words))
        .enumerate()
        .try_for_each(|(nt, (dst, src))| {
            for (local, &w) in src.iter().enumerate() {
                let codes = codec.unpack(w).ok_or(RepackError::NonCanonical {
                    index: nt * tile_words + local,
                    word: w,
                })?;
                let (row, k0) = g.coords(local);
                let at = row * row_bytes + k0 / 2;
                for (i, b) in dst[at..at + 4].iter_mut().enumerate() {
                    *b = codes[2 * i] | (codes[2 * i + 1] << 4);
                }
            }
            Ok(())
        })?;
    Ok(out)
}

/// Repacks checkpoint block scales `[N, K/group]` into f32 `[N, K/group]`, each `scale * 2^exp_offset` exactly.
/// Rejects NaN, negative and infinite scales, and nonzero scales whose product is not a finite normal f32, naming
/// the row, the group and the stored code. Zero scales are stored as +0.0.
pub fn repack_scales(
    layout: &ScaleLayout,
    fmt: &Format,
    scales: &ScaleData,
    n: usize,
    k: usize,
) -> Result<Vec<f32>, RepackError> {
    let lerr = |what: String| RepackError::ScaleLayout {
        id: layout.id.clone(),
        what,
    };
    if layout.id != SCALE_LAYOUT_ID {
        return Err(lerr(format!("this runtime implements {SCALE_LAYOUT_ID}")));
    }
    if layout.group != fmt.group {
        return Err(lerr(format!(
            "group {} differs from the format's group {}",
            layout.group, fmt.group
        )));
    }
    // Far beyond any arch's offset; keeps the f64 arithmetic below exact.
    if layout.exp_offset.abs() > 512 {
        return Err(lerr(format!(
            "exp_offset {} is out of range",
            layout.exp_offset
        )));
    }
    let st = ScaleType::parse(&fmt.scale).ok_or_else(|| RepackError::Format {
        format: fmt.name.clone(),
        what: format!("unknown scale type {:?}", fmt.scale),
    })?;
    let group = fmt.group as usize;
    if group == 0 || k == 0 || !k.is_multiple_of(group) {
        return Err(RepackError::Shape {
            n,
            k,
            what: format!("K must be a positive multiple of the group size {group}"),
        });
    }
    let groups = k / group;
    check_len("scales", scales.len(), n * groups)?;
    if !scales.holds(st) {
        return Err(RepackError::ScaleStorage {
            format: fmt.name.clone(),
            expected: st,
            got: scales.kind(),
        });
    }
    let factor = pow2(layout.exp_offset);
    let mut out = Vec::with_capacity(n * groups);
    for i in 0..n * groups {
        let (row, g) = (i / groups, i % groups);
        // The length and storage checks above make `value` return Some.
        let Some((v, raw)) = scales.value(st, i) else {
            return Err(RepackError::Length {
                what: "scales",
                expected: n * groups,
                got: scales.len(),
            });
        };
        let bad = |reason: String| RepackError::Scale {
            row,
            group: g,
            raw: raw.clone(),
            value: v,
            reason,
        };
        if let Some(reason) = scale_problem(v) {
            return Err(bad(format!("is {reason}")));
        }
        if v == 0.0 {
            out.push(0.0);
            continue;
        }
        // Exact in f64: v is an f32 value and |exp_offset| <= 512.
        let p = v * factor;
        let p32 = p as f32;
        if !p32.is_normal() || f64::from(p32) != p {
            return Err(bad(format!(
                "times 2^{} = {p:e} is not a finite normal f32",
                layout.exp_offset
            )));
        }
        out.push(p32);
    }
    Ok(out)
}

/// Repacked scales, in the element type of their layout.
#[derive(Debug, Clone, PartialEq)]
pub enum RepackedScales {
    /// `nibble.scales_f32.v1`.
    F32(Vec<f32>),
    /// `nibble.scales_mma_sync_a.v1`: bit patterns of `dtype`.
    Half16 { dtype: DType, bits: Vec<u16> },
    /// `nibble.scales_mma_sync_a_exp.v1`: exponent fields of `dtype` powers of two.
    Exp8 { dtype: DType, bytes: Vec<u8> },
}

impl RepackedScales {
    /// The element type name as the manifest's `scales` argument spells it.
    pub fn elem(&self) -> &'static str {
        match self {
            RepackedScales::F32(_) => "f32",
            RepackedScales::Half16 { dtype, .. } => dtype.name(),
            RepackedScales::Exp8 { .. } => "u8",
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RepackedScales::F32(v) => v.len(),
            RepackedScales::Half16 { bits, .. } => bits.len(),
            RepackedScales::Exp8 { bytes, .. } => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> usize {
        match self {
            RepackedScales::F32(v) => 4 * v.len(),
            RepackedScales::Half16 { bits, .. } => 2 * bits.len(),
            RepackedScales::Exp8 { bytes, .. } => bytes.len(),
        }
    }

    /// The f32 values, for the f32 layout.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            RepackedScales::F32(v) => Some(v),
            RepackedScales::Half16 { .. } | RepackedScales::Exp8 { .. } => None,
        }
    }

    /// Little-endian bytes, as a device buffer holds them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            RepackedScales::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            RepackedScales::Half16 { bits, .. } => {
                bits.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            RepackedScales::Exp8 { bytes, .. } => bytes.clone(),
        }
    }
}

/// Repacks scales for the layout pair of a kernel: [`repack_scales`] for `nibble.scales_f32.v1`,
/// [`repack_scales_mma`] for the `nibble.scales_mma_sync_a` layouts (whose chunk K comes from the weight layout).
pub fn repack_scales_for(
    weight_layout: &WeightLayout,
    layout: &ScaleLayout,
    fmt: &Format,
    scales: &ScaleData,
    n: usize,
    k: usize,
) -> Result<RepackedScales, RepackError> {
    if layout.id == MMA_SCALE_LAYOUT_ID || layout.id == MMA_SCALE_EXP_LAYOUT_ID {
        repack_scales_mma(weight_layout, layout, fmt, scales, n, k)
    } else {
        repack_scales(layout, fmt, scales, n, k).map(RepackedScales::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fp8::{bf8_fnuz_decode, e4m3fn_decode, e8m0_decode};
    use super::super::quantize::e2m1;
    use super::*;

    fn layout(atom_n: u32, atom_k: u32, elem: &Element) -> WeightLayout {
        let mag_shift = 2 - u32::from(elem.man_bits);
        WeightLayout {
            id: WEIGHT_LAYOUT_ID.into(),
            atom_n,
            atom_k,
            words_per_lane: 4,
            mag_shift,
            second_half: if elem.exp_bits == 2 {
                "bitreverse"
            } else {
                "rotl4"
            }
            .into(),
            mask: 0x8080_8080 | (0x0707_0707 << mag_shift),
            fragment: None,
        }
    }

    fn e1m2(bias: i32) -> Element {
        Element {
            name: format!("e1m2b{bias}"),
            exp_bits: 1,
            man_bits: 2,
            bias,
        }
    }

    fn format(elem: &Element, scale: &str, group: u32) -> Format {
        Format {
            name: "test".into(),
            element: elem.clone(),
            scale: scale.into(),
            group,
            tensor_scale: false,
        }
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

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut next = rng(seed);
        (0..len).map(|_| (next() >> 32) as u8).collect()
    }

    fn minus_zero_to_plus(b: u8) -> u8 {
        let lo = if b & 0xF == 8 { 0 } else { b & 0xF };
        let hi = if b >> 4 == 8 { 0 } else { b >> 4 };
        lo | hi << 4
    }

    #[test]
    fn layouts_the_compiler_writes_are_accepted() {
        let l = layout(16, 16, &e2m1());
        assert_eq!((l.mag_shift, l.mask), (1, 0x8E8E_8E8E));
        assert!(WordCodec::new(&l, &e2m1()).is_ok());
        let l = layout(32, 8, &e1m2(1));
        assert_eq!((l.mag_shift, l.mask), (0, 0x8787_8787));
        assert!(WordCodec::new(&l, &e1m2(3)).is_ok());
    }

    #[test]
    fn round_trip_on_random_data() {
        for (atom_n, atom_k) in [(16, 16), (32, 8)] {
            for elem in [e2m1(), e1m2(1)] {
                let l = layout(atom_n, atom_k, &elem);
                let kc = 4 * 2 * atom_k as usize;
                for (i, (n, k)) in [
                    (atom_n as usize, kc),
                    (2 * atom_n as usize, 3 * kc),
                    (5 * atom_n as usize, 2 * kc),
                ]
                .into_iter()
                .enumerate()
                {
                    let w = random_bytes(n * k / 2, 100 + i as u64 + u64::from(atom_n));
                    let words = repack_weight(&l, &elem, &w, n, k).expect("repacks");
                    assert_eq!(words.len(), n * k / 8);
                    let back = unpack_weight(&l, &elem, &words, n, k).expect("unpacks");
                    let want: Vec<u8> = w.iter().map(|&b| minus_zero_to_plus(b)).collect();
                    assert_eq!(back, want, "atom {atom_n}x{atom_k} {} {n}x{k}", elem.name);
                    assert!(w.iter().any(|&b| b & 0xF == 8), "the data has -0 codes");
                }
            }
        }
    }

    /// The doc-comment formula, literally, against the fast table-driven repacking.
    #[test]
    fn repack_follows_the_index_formula() {
        for (atom_n, atom_k) in [(16usize, 16usize), (32, 8)] {
            let elem = e2m1();
            let l = layout(atom_n as u32, atom_k as u32, &elem);
            let codec = WordCodec::new(&l, &elem).expect("valid");
            let (n, k) = (3 * atom_n, 2 * 4 * 2 * atom_k);
            let w = random_bytes(n * k / 2, 9);
            let words = repack_weight(&l, &elem, &w, n, k).expect("repacks");
            let wpl = 4;
            let kc = wpl * 2 * atom_k;
            let mut seen = vec![false; n * k];
            for nt in 0..n / atom_n {
                for c in 0..k / kc {
                    for lane in 0..64 {
                        for j in 0..wpl {
                            let idx = ((nt * (k / kc) + c) * 64 + lane) * wpl + j;
                            let row = nt * atom_n + lane % atom_n;
                            let k0 = (c * wpl + j) * 2 * atom_k + 8 * (lane / atom_n);
                            let codes: [u8; 8] = std::array::from_fn(|t| {
                                let kk = k0 + t;
                                seen[row * k + kk] = true;
                                let b = w[row * (k / 2) + kk / 2];
                                if kk % 2 == 0 {
                                    b & 0xF
                                } else {
                                    b >> 4
                                }
                            });
                            assert_eq!(words[idx], codec.pack(codes), "word {idx}");
                        }
                    }
                }
            }
            assert!(seen.iter().all(|&s| s), "every element is in some word");
        }
    }

    #[test]
    fn hand_computed_words() {
        // 16x16x16, N=32, K=256: kc = 128, K/kc = 2. W[21][208..216] sits at nt=1, c=1, lane=37 (37 % 16 = 5,
        // 37 / 16 = 2: k = (1*4 + 2)*32 + 16 = 208), j=2: word ((1*2 + 1)*64 + 37)*4 + 2 = 918.
        let elem = e2m1();
        let l = layout(16, 16, &elem);
        let (n, k) = (32, 256);
        let mut w = vec![0u8; n * k / 2];
        let codes = [1u8, 2, 3, 4, 5, 6, 7, 9];
        for i in 0..4 {
            w[21 * 128 + 104 + i] = codes[2 * i] | codes[2 * i + 1] << 4;
        }
        let words = repack_weight(&l, &elem, &w, n, k).expect("repacks");
        // Bytes (mag_shift 1): c1..c4 -> 0x02 0x04 0x06 0x08; c5,c6,c7,c9 -> 0x0A 0x0C 0x0E 0x82.
        // A(c4..c7) = 0x820E0C0A, bit-reversed = 0x50307041; word = 0x08060402 | 0x50307041.
        assert_eq!(words[918], 0x5836_7443);
        assert_eq!(words.iter().filter(|&&x| x != 0).count(), 1);
        // The kernel's two reads.
        assert_eq!(words[918] & 0x8E8E_8E8E, 0x0806_0402);
        assert_eq!(words[918].reverse_bits() & 0x8E8E_8E8E, 0x820E_0C0A);

        // 32x32x8, N=64, K=128: kc = 64, K/kc = 2. nt=1, c=0, lane=45 (n = 32 + 13 = 45, k = 3*16 + 8 = 56), j=3:
        // word ((1*2 + 0)*64 + 45)*4 + 3 = 695.
        let elem = e1m2(1);
        let l = layout(32, 8, &elem);
        let (n, k) = (64, 128);
        let mut w = vec![0u8; n * k / 2];
        let codes = [8u8, 15, 1, 0, 7, 0, 0, 12];
        for i in 0..4 {
            w[45 * 64 + 28 + i] = codes[2 * i] | codes[2 * i + 1] << 4;
        }
        let words = repack_weight(&l, &elem, &w, n, k).expect("repacks");
        // mag_shift 0: -0 -> 0x00, 15 -> 0x87, 1 -> 0x01, 0 -> 0x00: A = 0x00018700. Second half 7, 0, 0, 12 ->
        // 0x07 0x00 0x00 0x84: A = 0x84000007, rotated right by 4 = 0x78400000.
        assert_eq!(words[695], 0x7841_8700);
        assert_eq!(words.iter().filter(|&&x| x != 0).count(), 1);
        assert_eq!(words[695].rotate_left(4) & 0x8787_8787, 0x8400_0007);
        // Unpacking gives the codes back, -0 as +0.
        let back = unpack_weight(&l, &elem, &words, n, k).expect("unpacks");
        assert_eq!(back[45 * 64 + 28], 15 << 4);
    }

    /// What the kernel computes from a word: the masked bytes decoded by `decode`, times the repacked scale, in f32.
    fn kernel_values(codec: &WordCodec, word: u32, scale: f32, decode: fn(u8) -> f32) -> [f32; 8] {
        let lo = word & codec.mask();
        let hi = codec.second_half().kernel(word) & codec.mask();
        std::array::from_fn(|t| {
            let half = if t < 4 { lo } else { hi };
            decode((half >> (8 * (t % 4))) as u8) * scale
        })
    }

    /// Compares the kernel's values with `element * scale` for eight codes, in f32 like the reference's product.
    fn check_word(
        codec: &WordCodec,
        elem: &Element,
        codes: [u8; 8],
        word: u32,
        repacked: f32,
        scale: f32,
        decode: fn(u8) -> f32,
    ) -> Result<(), String> {
        let got = kernel_values(codec, word, repacked, decode);
        for t in 0..8 {
            let want = elem.value(codes[t]) as f32 * scale;
            // == treats -0 and +0 alike (the -0 code is stored as +0) and fails on NaN.
            if got[t] != want {
                return Err(format!(
                    "codes {codes:?} word {word:#010x}: element {t} is {} instead of {want}",
                    got[t]
                ));
            }
        }
        Ok(())
    }

    type Decode = fn(u8) -> f32;

    fn ocp_e5m2_decode(b: u8) -> f32 {
        half::f16::from_bits(u16::from(b) << 8).to_f32()
    }

    /// Scales to test: (format, checkpoint scales, their values).
    fn scale_sets(elem: &Element, max_e8m0: u8) -> Vec<(Format, ScaleData, Vec<f32>)> {
        let e8: Vec<u8> = vec![0, 1, 2, 64, 100, 126, 127, 128, 200, max_e8m0 - 1, max_e8m0];
        let e4: Vec<u8> = (1..0x7F).collect();
        let f32s = vec![0.1f32, 1.0, 3.3e-30, 7.7e20, f32::MIN_POSITIVE * 3.0];
        vec![
            (
                format(elem, "e8m0", 32),
                ScaleData::Bytes(e8.clone()),
                e8.iter().map(|&c| e8m0_decode(c)).collect(),
            ),
            (
                format(elem, "e4m3", 16),
                ScaleData::Bytes(e4.clone()),
                e4.iter().map(|&c| e4m3fn_decode(c)).collect(),
            ),
            (format(elem, "f32", 32), ScaleData::F32(f32s.clone()), f32s),
        ]
    }

    /// The specification test of the layout: for every code at every word position, every supported scale
    /// extreme, the kernel's bit trick (mask, transform, bf8 decode, f32 multiply by the repacked scale) gives
    /// exactly `element * scale` as the reference forms it. Also for gfx90a's f16 route (OCP E5M2 bytes,
    /// `exp_offset = 15 - bias`).
    #[test]
    fn kernel_bit_trick_reproduces_element_times_scale() {
        let cases = [(e2m1(), 16u32), (e1m2(1), 32), (e1m2(3), 32)];
        let routes: [(i32, Decode); 2] = [(16, bf8_fnuz_decode), (15, ocp_e5m2_decode)];
        let mut checked = 0usize;
        for (elem, atom_n) in cases {
            let l = layout(atom_n, 256 / atom_n, &elem);
            let codec = WordCodec::new(&l, &elem).expect("valid");
            for (route_bias, decode) in routes {
                let exp_offset = route_bias - elem.bias;
                let max_e8m0 = (254 - exp_offset) as u8;
                for (fmt, data, values) in scale_sets(&elem, max_e8m0) {
                    let sl = ScaleLayout {
                        id: SCALE_LAYOUT_ID.into(),
                        group: fmt.group,
                        exp_offset,
                        dtype: None,
                    };
                    let n = values.len();
                    let rep = repack_scales(&sl, &fmt, &data, n, fmt.group as usize)
                        .expect("scales repack");
                    for (s, (&r, &v)) in rep.iter().zip(&values).enumerate() {
                        for code in 0u8..16 {
                            for pos in 0..8 {
                                let codes: [u8; 8] = std::array::from_fn(|t| {
                                    if t == pos {
                                        code
                                    } else {
                                        ((code as usize + 3 * t + s) % 16) as u8
                                    }
                                });
                                let word = codec.pack(codes);
                                check_word(&codec, &elem, codes, word, r, v, decode)
                                    .unwrap_or_else(|e| panic!("{} {}: {e}", elem.name, fmt.scale));
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000);
    }

    #[test]
    fn kernel_bit_trick_detects_wrong_layouts() {
        let elem = e2m1();
        let good = WordCodec::new(&layout(16, 16, &elem), &elem).expect("valid");
        let sl = ScaleLayout {
            id: SCALE_LAYOUT_ID.into(),
            group: 32,
            exp_offset: 15,
            dtype: None,
        };
        let fmt = format(&elem, "e8m0", 32);
        let rep = repack_scales(&sl, &fmt, &ScaleData::Bytes(vec![127]), 1, 32).expect("repacks");
        let codes = [1u8, 2, 3, 4, 5, 6, 7, 15];
        let ok = check_word(
            &good,
            &elem,
            codes,
            good.pack(codes),
            rep[0],
            1.0,
            bf8_fnuz_decode,
        );
        assert_eq!(ok, Ok(()));

        // Packed with mag_shift 0 while the kernel uses the e2m1 mask and bitreverse.
        let wrong_shift = WordCodec::unchecked(0, SecondHalf::Bitreverse, 0x8E8E_8E8E);
        let word = wrong_shift.pack(codes);
        assert!(check_word(&good, &elem, codes, word, rep[0], 1.0, bf8_fnuz_decode).is_err());
        // The whole e1m2 layout (mag_shift 0, rotl4) used for e2m1 elements.
        let e1m2_layout = WordCodec::new(&layout(16, 16, &e1m2(1)), &e1m2(1)).expect("valid");
        let word = e1m2_layout.pack(codes);
        assert!(check_word(
            &e1m2_layout,
            &elem,
            codes,
            word,
            rep[0],
            1.0,
            bf8_fnuz_decode
        )
        .is_err());
        // Halves swapped.
        let swapped = [
            codes[4], codes[5], codes[6], codes[7], codes[0], codes[1], codes[2], codes[3],
        ];
        let word = good.pack(swapped);
        assert!(check_word(&good, &elem, codes, word, rep[0], 1.0, bf8_fnuz_decode).is_err());
        // Scale without its 2^exp_offset.
        let word = good.pack(codes);
        assert!(check_word(&good, &elem, codes, word, 1.0, 1.0, bf8_fnuz_decode).is_err());
        // The wrong decoder for the route (OCP E5M2 bytes with the bf8 offset).
        assert!(check_word(&good, &elem, codes, word, rep[0], 1.0, ocp_e5m2_decode).is_err());
    }

    #[test]
    fn rejects_bad_shapes_and_buffers() {
        let elem = e2m1();
        let l = layout(16, 16, &elem);
        let w = vec![0u8; 32 * 128 / 2];
        assert!(repack_weight(&l, &elem, &w, 32, 128).is_ok());
        assert!(matches!(
            repack_weight(&l, &elem, &w, 24, 128),
            Err(RepackError::Shape { n: 24, .. })
        ));
        assert!(matches!(
            repack_weight(&l, &elem, &w, 32, 96),
            Err(RepackError::Shape { k: 96, .. })
        ));
        assert!(matches!(
            repack_weight(&l, &elem, &w, 0, 128),
            Err(RepackError::Shape { .. })
        ));
        assert_eq!(
            repack_weight(&l, &elem, &w[1..], 32, 128),
            Err(RepackError::Length {
                what: "weight",
                expected: 2048,
                got: 2047
            })
        );
        assert!(matches!(
            unpack_weight(&l, &elem, &[0u32; 511], 32, 128),
            Err(RepackError::Length { .. })
        ));
        // Words the repacking never writes are rejected by unpacking.
        let e = e1m2(1);
        let l2 = layout(16, 16, &e);
        let mut words = repack_weight(&l2, &e, &w, 32, 128).expect("repacks");
        // 0x80 in byte 0 is the sign of a +0 element: -0, which the repacking never writes.
        words[5] = 0x80;
        assert_eq!(
            unpack_weight(&l2, &e, &words, 32, 128),
            Err(RepackError::NonCanonical {
                index: 5,
                word: 0x80
            })
        );
    }

    #[test]
    fn rejects_inconsistent_layouts() {
        let elem = e2m1();
        let w = vec![0u8; 32 * 128 / 2];
        let bad = |f: &dyn Fn(&mut WeightLayout)| {
            let mut l = layout(16, 16, &elem);
            f(&mut l);
            repack_weight(&l, &elem, &w, 32, 128)
        };
        let is_layout_err =
            |r: Result<Vec<u32>, RepackError>| matches!(r, Err(RepackError::WeightLayout { .. }));
        assert!(is_layout_err(
            bad(&|l| l.id = "nibble.mfma_pairs.v2".into())
        ));
        assert!(is_layout_err(bad(&|l| l.second_half = "rotl8".into())));
        assert!(is_layout_err(bad(&|l| l.second_half = "rotl4".into())));
        assert!(is_layout_err(bad(&|l| l.mag_shift = 0)));
        assert!(is_layout_err(bad(&|l| l.mask = 0x8F8F_8F8F)));
        assert!(is_layout_err(bad(&|l| l.mask = 0x0E0E_0E0E)));
        assert!(is_layout_err(bad(&|l| l.atom_k = 8)));
        assert!(is_layout_err(bad(&|l| l.atom_n = 0)));
        assert!(is_layout_err(bad(&|l| l.words_per_lane = 0)));
        // e1m2 needs rotl4: bitreverse overlaps the halves.
        let e = e1m2(1);
        let mut l = layout(16, 16, &e);
        l.second_half = "bitreverse".into();
        assert!(matches!(
            repack_weight(&l, &e, &w, 32, 128),
            Err(RepackError::WeightLayout { .. })
        ));
        // Words per lane other than 4 are fine geometrically.
        let mut l = layout(16, 16, &elem);
        l.words_per_lane = 2;
        let words = repack_weight(&l, &elem, &w, 32, 128).expect("repacks");
        assert_eq!(words.len(), 32 * 128 / 8);
    }

    #[test]
    fn scale_repacking_exact_values_and_limits() {
        let elem = e2m1();
        let fmt = format(&elem, "e8m0", 32);
        let sl = ScaleLayout {
            id: SCALE_LAYOUT_ID.into(),
            group: 32,
            exp_offset: 15,
            dtype: None,
        };
        let codes: Vec<u8> = (0..=239).collect();
        let rep = repack_scales(&sl, &fmt, &ScaleData::Bytes(codes.clone()), 240, 32)
            .expect("codes up to 239 repack");
        for (&c, &r) in codes.iter().zip(&rep) {
            assert_eq!(f64::from(r), pow2(i32::from(c) - 127 + 15));
        }
        // Code 240 (2^113 * 2^15 = 2^128) overflows; 0xFF is NaN. The message names row, group and code.
        for (code, what) in [(240u8, "not a finite normal f32"), (0xFF, "NaN")] {
            let mut s = vec![127u8; 6];
            s[4] = code;
            let err = repack_scales(&sl, &fmt, &ScaleData::Bytes(s), 2, 96).expect_err("rejected");
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    RepackError::Scale {
                        row: 1,
                        group: 1,
                        ..
                    }
                ),
                "{msg}"
            );
            assert!(
                msg.contains("row 1, group 1") && msg.contains(&format!("0x{code:02x}")),
                "{msg}"
            );
            assert!(msg.contains(what), "{msg}");
        }
        // A negative offset makes small codes subnormal: rejected.
        let low = ScaleLayout {
            exp_offset: -10,
            ..sl.clone()
        };
        assert!(repack_scales(&low, &fmt, &ScaleData::Bytes(vec![0]), 1, 32).is_err());
        assert!(repack_scales(&low, &fmt, &ScaleData::Bytes(vec![10]), 1, 32).is_err());
        assert!(repack_scales(&low, &fmt, &ScaleData::Bytes(vec![11]), 1, 32).is_ok());

        // E4M3: all positive codes are fine with offset 15; zero (either sign) is stored as +0; negatives and NaN
        // are rejected.
        let fmt = format(&elem, "e4m3", 16);
        let sl16 = ScaleLayout {
            group: 16,
            ..sl.clone()
        };
        let rep = repack_scales(
            &sl16,
            &fmt,
            &ScaleData::Bytes(vec![0x00, 0x80, 0x01, 0x7E]),
            1,
            64,
        )
        .expect("repacks");
        assert_eq!(rep[0].to_bits(), 0);
        assert_eq!(rep[1].to_bits(), 0);
        assert_eq!(rep[2], 2f32.powi(-9 + 15));
        assert_eq!(rep[3], 448.0 * 2f32.powi(15));
        for (code, reason) in [(0xB8u8, "negative"), (0x7F, "NaN"), (0xFF, "NaN")] {
            let err = repack_scales(&sl16, &fmt, &ScaleData::Bytes(vec![0x38, code]), 1, 32)
                .expect_err("rejected");
            assert!(err.to_string().contains(reason), "{err}");
            assert!(matches!(
                err,
                RepackError::Scale {
                    row: 0,
                    group: 1,
                    ..
                }
            ));
        }
        // Float scales.
        let fmt = format(&elem, "f16", 32);
        let rep = repack_scales(&sl, &fmt, &ScaleData::F16(vec![0x3C00, 0x0001]), 1, 64)
            .expect("f16 subnormal scales are normal after the offset");
        assert_eq!(rep, vec![32768.0, 2f32.powi(-24 + 15)]);
        let fmt = format(&elem, "f32", 32);
        for v in [f32::INFINITY, f32::NAN, -2.0, f32::MAX, f32::from_bits(1)] {
            let r = repack_scales(&sl, &fmt, &ScaleData::F32(vec![v]), 1, 32);
            assert!(matches!(r, Err(RepackError::Scale { .. })), "{v}");
        }
        let fmt = format(&elem, "bf16", 32);
        assert_eq!(
            repack_scales(&sl, &fmt, &ScaleData::Bf16(vec![0x3F80]), 1, 32),
            Ok(vec![32768.0])
        );
    }

    #[test]
    fn scale_repacking_rejects_bad_arguments() {
        let elem = e2m1();
        let fmt = format(&elem, "e8m0", 32);
        let sl = ScaleLayout {
            id: SCALE_LAYOUT_ID.into(),
            group: 32,
            exp_offset: 15,
            dtype: None,
        };
        let s = ScaleData::Bytes(vec![127; 2]);
        assert!(repack_scales(&sl, &fmt, &s, 1, 64).is_ok());
        let other_id = ScaleLayout {
            id: "nibble.scales_f16.v1".into(),
            ..sl.clone()
        };
        assert!(matches!(
            repack_scales(&other_id, &fmt, &s, 1, 64),
            Err(RepackError::ScaleLayout { .. })
        ));
        let other_group = ScaleLayout {
            group: 16,
            ..sl.clone()
        };
        assert!(matches!(
            repack_scales(&other_group, &fmt, &s, 1, 64),
            Err(RepackError::ScaleLayout { .. })
        ));
        assert!(matches!(
            repack_scales(&sl, &fmt, &s, 1, 48),
            Err(RepackError::Shape { .. })
        ));
        assert!(matches!(
            repack_scales(&sl, &fmt, &s, 2, 64),
            Err(RepackError::Length { .. })
        ));
        assert!(matches!(
            repack_scales(&sl, &fmt, &ScaleData::F32(vec![1.0; 2]), 1, 64),
            Err(RepackError::ScaleStorage { .. })
        ));
        let mut bad = fmt.clone();
        bad.scale = "e5m2".into();
        assert!(matches!(
            repack_scales(&sl, &bad, &s, 1, 64),
            Err(RepackError::Format { .. })
        ));
    }
}
