//! Repacking for NVIDIA `mma.sync` kernels (sm_80/sm_90): the weight layout `nibble.mma_sync_a.v1`
//! ([`crate::manifest::FragmentBits`]) and the scale layout `nibble.scales_mma_sync_a.v1`.
//!
//! Weights: a word holds the 8 A-fragment elements of one lane for one m16n8k16 atom; the kernel cuts the four
//! operand registers out of it with the manifest's pieces (`(word << shift or >> -shift) & mask`, OR-ed). The
//! repacking is the inverse bit permutation: the code bit the kernel expects at output bit `p` of register `r`
//! (sign on `16h + 15`, code bits 0..2 on `16h + mag_shift ..`) is stored at word bit `p - shift` of the piece
//! providing `p`. The layout is validated first (pieces of one register disjoint and covering exactly the 8 output
//! positions per half, every word bit used exactly once, shifts within the word); a bad layout is a
//! [`RepackError::WeightLayout`]. The code `0x8` (-0) is kept: it reads as a -0 operand, which multiplies like +0.
//!
//! Scales: u16 values of the operand type (`dtype`), `S = scale * 2^exp_offset`, in the order the kernel's lanes
//! read them (see [`repack_scales_mma`]). The kernel forms `A = round(raw * S)` with `raw = element *
//! 2^(bias - operand bias)` and multiplies its f32 sums by `2^cexp`, `cexp = operand bias - bias - exp_offset`; the
//! reference forms `round(element * scale)`. Both agree only for some scales, so every distinct scale is checked for
//! all 16 codes, exactly, and one that disagrees is rejected with its row and group and the range of power-of-two
//! scales the kernel applies exactly.
//!
//! `nibble.scales_mma_sync_a_exp.v1` holds one byte per value: the biased exponent field of `S`, which must then be
//! a normal power of two of the operand type, in the same order except inside each 4-byte word (see
//! [`MmaScaleGeometry::slot_of`]); the kernel shifts and masks a word into the bf16 pair of a slot. The planner
//! picks it for E8M0 scales with bf16 operands, where it halves the scale bytes (E8M0 codes are powers of two and
//! bf16 has E8M0's exponent range, so it rejects nothing the 16-bit layout accepts).

use std::collections::HashMap;

use rayon::prelude::*;

use super::fp8::ScaleType;
use super::reference::{round_to, scale_problem};
use super::repack::{RepackError, RepackedScales};
use super::{pow2, DType, ScaleData};
use crate::manifest::{BitPiece, Element, Format, ScaleLayout, WeightLayout};

/// The weight layout of NVIDIA `mma.sync` A fragments.
pub const MMA_WEIGHT_LAYOUT_ID: &str = "nibble.mma_sync_a.v1";
/// The scale layout that goes with it.
pub const MMA_SCALE_LAYOUT_ID: &str = "nibble.scales_mma_sync_a.v1";
/// The same order, one exponent byte per value (power-of-two scales).
pub const MMA_SCALE_EXP_LAYOUT_ID: &str = "nibble.scales_mma_sync_a_exp.v1";
/// Lanes of a warp.
const LANES: usize = 32;
/// Rows (N) and K of one fragment atom.
const ATOM: usize = 16;

/// Operand bias and mantissa bits of a 16-bit operand type.
pub fn operand_bits(d: DType) -> (i32, u32) {
    match d {
        DType::Bf16 => (127, 7),
        DType::F16 => (15, 10),
    }
}

/// `0x8000_8000 | 7 << L | 7 << (L + 16)`: the output bits of one register.
pub fn full_mask(mag_shift: u32) -> u32 {
    0x8000_8000 | (7 << mag_shift) | (7 << (mag_shift + 16))
}

/// The `(shift, mask)` pieces of the four A-fragment registers the compiler emits, for the magnitude's lowest bit
/// `mag_shift` in each 16-bit half (6 and 5: e2m1 and e1m2 into bf16; 9 and 8: into f16). Each register is the OR
/// of its pieces, each piece one AND of the shifted word; a register whose pieces are `(s, hi)` and `(s - 32, lo)`
/// (`hi` at or above bit `s`, `lo` below it) is the word rotated left by `s`, one funnel shift
/// (the compiler's `dequant::fragment_terms` merges them). Found by exhaustive search: for e2m1 into bf16, sign at
/// bit 15 and a three-bit magnitude cannot tile a 32-bit word with one shift or rotation per register, and no table
/// of any shape needs fewer than 4 distinct shifts, so 4 shifts and 5 masks (three single-piece registers and one
/// of two pieces) are the fewest: 9 logic instructions per 8 elements (the shift-only table took 11). e1m2 into f16 tiles with rotations (3 shifts, 4
/// masks, 9 before). e1m2 into bf16 and e2m1 into f16 have no table of three single-piece registers and keep their
/// shift-only ones (11; tables of two two-piece registers with rotations were not searched). Any
/// table that passes [`FragmentCodec::new`] is a valid layout; this is the one nibble uses.
pub fn fragment_pieces(mag_shift: u32) -> Option<Vec<Vec<BitPiece>>> {
    let full = full_mask(mag_shift);
    let sign = 0x8000_8000u32;
    let mag = full & !sign;
    let p = |shift: i32, mask: u32| BitPiece { shift, mask };
    let table = match mag_shift {
        // Rotation by 26: bit 31 from word bit 5, the rest from 12..=30.
        6 => vec![
            vec![p(0, full)],
            vec![p(4, full)],
            vec![p(26, full & 0xFC00_0000), p(-6, full & 0x03FF_FFFF)],
            vec![p(6, 0x80C0_80C0), p(-2, 0x0100_0100)],
        ],
        5 => vec![
            vec![p(0, full)],
            vec![p(4, full)],
            vec![p(-7, mag), p(11, sign)],
            vec![p(-3, mag), p(15, sign)],
        ],
        9 => vec![
            vec![p(0, full)],
            vec![p(3, full)],
            vec![p(6, mag), p(1, sign)],
            vec![p(9, mag), p(2, sign)],
        ],
        // Rotation by 12: bits 8..=10 from word bits 28..=30, the rest from below.
        8 => vec![
            vec![p(0, full)],
            vec![p(4, full)],
            vec![p(8, full)],
            vec![p(12, full & 0xFFFF_F000), p(-20, full & 0x0000_0FFF)],
        ],
        _ => return None,
    };
    Some(table)
}

/// The validated bit recipe of `nibble.mma_sync_a.v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentCodec {
    /// For fragment element `f` and code bit `b` (3 = sign): the word bit holding it.
    src: [[u8; 4]; 8],
    pieces: [Vec<BitPiece>; 4],
    mag_shift: u32,
    operand: DType,
    wpl: usize,
}

/// The four operand registers the kernel forms from `word` with `pieces` (the kernel's recipe, literally).
pub fn registers(pieces: &[Vec<BitPiece>], word: u32) -> [u32; 4] {
    std::array::from_fn(|r| {
        pieces.get(r).map_or(0, |ps| {
            ps.iter().fold(0, |acc, p| {
                let s = p.shift.clamp(-31, 31);
                let v = if s >= 0 { word << s } else { word >> (-s) };
                acc | (v & p.mask)
            })
        })
    })
}

impl FragmentCodec {
    /// Validates `layout` for `elem` (see the module doc).
    pub fn new(layout: &WeightLayout, elem: &Element) -> Result<FragmentCodec, RepackError> {
        let err = |what: String| RepackError::WeightLayout {
            id: layout.id.clone(),
            what,
        };
        if layout.id != MMA_WEIGHT_LAYOUT_ID {
            return Err(err(format!("expected {MMA_WEIGHT_LAYOUT_ID}")));
        }
        if layout.atom_n as usize != ATOM || layout.atom_k as usize != ATOM {
            return Err(err(format!(
                "atom {}x{} is not the 16x16 A fragment of m16n8k16",
                layout.atom_n, layout.atom_k
            )));
        }
        if layout.words_per_lane == 0 || layout.words_per_lane > 64 {
            return Err(err(format!(
                "words_per_lane {} is not in 1..=64",
                layout.words_per_lane
            )));
        }
        if layout.second_half != "pieces" {
            return Err(err(format!(
                "second_half {:?} (this layout takes \"pieces\")",
                layout.second_half
            )));
        }
        if elem.exp_bits + elem.man_bits != 3 || elem.man_bits > 3 {
            return Err(err(format!(
                "element {} (e{}m{}) is not a 4-bit minifloat",
                elem.name, elem.exp_bits, elem.man_bits
            )));
        }
        let l = layout.mag_shift;
        let man = u32::from(elem.man_bits);
        let operand = if l + man == 7 {
            DType::Bf16
        } else if l + man == 10 {
            DType::F16
        } else {
            return Err(err(format!(
                "mag_shift {l} does not put the mantissa of {} (e{}m{}) at the top of a bf16 ({}) or f16 ({}) mantissa",
                elem.name,
                elem.exp_bits,
                elem.man_bits,
                7 - man,
                10 - man
            )));
        };
        let full = full_mask(l);
        if layout.mask != full {
            return Err(err(format!(
                "mask {:#010x} is not the output bits {full:#010x} of one register",
                layout.mask
            )));
        }
        let frag = layout
            .fragment
            .as_ref()
            .ok_or_else(|| err("no `fragment` recipe".into()))?;
        if frag.outputs.len() != 4 {
            return Err(err(format!(
                "fragment has {} registers, expected 4",
                frag.outputs.len()
            )));
        }
        // map[r][p] = word bit feeding output bit p of register r.
        let mut map = [[u8::MAX; 32]; 4];
        let mut used = 0u32;
        for (r, pieces) in frag.outputs.iter().enumerate() {
            let mut covered = 0u32;
            for (i, p) in pieces.iter().enumerate() {
                let what = format!(
                    "register {r}, piece {i} (shift {}, mask {:#010x})",
                    p.shift, p.mask
                );
                if p.mask == 0 || !(-31..=31).contains(&p.shift) {
                    return Err(err(format!("{what}: empty mask or shift outside -31..=31")));
                }
                if p.mask & !full != 0 {
                    return Err(err(format!("{what}: provides bits outside {full:#010x}")));
                }
                if p.mask & covered != 0 {
                    return Err(err(format!("{what}: overlaps an earlier piece")));
                }
                covered |= p.mask;
                for bit in 0..32 {
                    if p.mask >> bit & 1 == 0 {
                        continue;
                    }
                    let s = bit - p.shift;
                    if !(0..32).contains(&s) {
                        return Err(err(format!(
                            "{what}: output bit {bit} would come from word bit {s}"
                        )));
                    }
                    if used >> s & 1 != 0 {
                        return Err(err(format!("{what}: word bit {s} is used twice")));
                    }
                    used |= 1 << s;
                    map[r][bit as usize] = s as u8;
                }
            }
            if covered != full {
                return Err(err(format!(
                    "register {r}: pieces cover {covered:#010x}, not {full:#010x}"
                )));
            }
        }
        // 4 registers x 16 output bits, each from a distinct word bit: all 32 are used.
        let mut src = [[0u8; 4]; 8];
        for (f, s) in src.iter_mut().enumerate() {
            let (r, h) = (f / 2, (f % 2) as u32);
            for (b, slot) in s.iter_mut().enumerate() {
                let out = if b == 3 {
                    16 * h + 15
                } else {
                    16 * h + l + b as u32
                };
                *slot = map[r][out as usize];
            }
        }
        let pieces = std::array::from_fn(|r| frag.outputs[r].clone());
        Ok(FragmentCodec {
            src,
            pieces,
            mag_shift: l,
            operand,
            wpl: layout.words_per_lane as usize,
        })
    }

    /// The operand type the registers read as (from `mag_shift`).
    pub fn operand(&self) -> DType {
        self.operand
    }

    pub fn mag_shift(&self) -> u32 {
        self.mag_shift
    }

    pub fn pieces(&self) -> &[Vec<BitPiece>; 4] {
        &self.pieces
    }

    /// The word of the 8 fragment elements' codes.
    pub fn pack(&self, codes: [u8; 8]) -> u32 {
        let mut w = 0u32;
        for (f, &c) in codes.iter().enumerate() {
            for b in 0..4 {
                w |= u32::from((c >> b) & 1) << self.src[f][b];
            }
        }
        w
    }

    /// The codes of a word (every word is one `pack` produces: the layout is a bit permutation).
    pub fn unpack(&self, word: u32) -> [u8; 8] {
        std::array::from_fn(|f| {
            (0..4).fold(0u8, |c, b| c | (((word >> self.src[f][b]) & 1) as u8) << b)
        })
    }

    /// `T[r][byte]`: the word bits of the two codes of checkpoint `byte` placed as elements `2r` (low nibble) and
    /// `2r + 1` (high nibble).
    fn tables(&self) -> [[u32; 256]; 4] {
        let mut t = [[0u32; 256]; 4];
        for (r, tr) in t.iter_mut().enumerate() {
            for (b, slot) in tr.iter_mut().enumerate() {
                let mut codes = [0u8; 8];
                codes[2 * r] = (b & 0xF) as u8;
                codes[2 * r + 1] = (b >> 4) as u8;
                *slot = self.pack(codes);
            }
        }
        t
    }
}

/// `(n, k)` of fragment element `f` of word `(nb, c, lane, j)` (the layout's index formula).
pub fn element_coords(
    wpl: usize,
    nb: usize,
    c: usize,
    lane: usize,
    j: usize,
    f: usize,
) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    let n = nb * ATOM + g + 8 * ((f / 2) % 2);
    let k = (c * wpl + j) * ATOM + 2 * t + f % 2 + 8 * (f / 4);
    (n, k)
}

fn check_shape(n: usize, k: usize, kc: usize) -> Result<(), RepackError> {
    if n == 0 || !n.is_multiple_of(ATOM) {
        return Err(RepackError::Shape {
            n,
            k,
            what: format!("N must be a positive multiple of {ATOM}"),
        });
    }
    if k == 0 || !k.is_multiple_of(kc) {
        return Err(RepackError::Shape {
            n,
            k,
            what: format!("K must be a positive multiple of 16 * words_per_lane = {kc}"),
        });
    }
    Ok(())
}

/// Repacks checkpoint bytes `[N, K/2]` (low nibble = even K) into `N*K/8` words of `nibble.mma_sync_a.v1`.
pub fn repack_weight_mma(
    layout: &WeightLayout,
    elem: &Element,
    weight: &[u8],
    n: usize,
    k: usize,
) -> Result<Vec<u32>, RepackError> {
    let codec = FragmentCodec::new(layout, elem)?;
    let wpl = codec.wpl;
    let kc = ATOM * wpl;
    check_shape(n, k, kc)?;
    if weight.len() != n * k / 2 {
        return Err(RepackError::Length {
            what: "weight",
            expected: n * k / 2,
            got: weight.len(),
        });
    }
    let t = codec.tables();
    let row_bytes = k / 2;
    let mut out = vec![0u32; n * k / 8];
    out.par_chunks_mut(ATOM * k / 8)
        .zip(weight.par_chunks(ATOM * row_bytes))
        .for_each(|(words, src)| {
            let mut it = words.iter_mut();
            for c in 0..k / kc {
                for lane in 0..LANES {
                    let (g, tt) = (lane / 4, lane % 4);
                    for j in 0..wpl {
                        let k0 = (c * wpl + j) * ATOM + 2 * tt;
                        let Some(w) = it.next() else { return };
                        let mut word = 0;
                        for (r, tr) in t.iter().enumerate() {
                            let row = g + 8 * (r % 2);
                            let kk = k0 + 8 * (r / 2);
                            word |= tr[usize::from(src[row * row_bytes + kk / 2])];
                        }
                        *w = word;
                    }
                }
            }
        });
    Ok(out)
}

/// Inverts [`repack_weight_mma`] exactly (every code, -0 included).
pub fn unpack_weight_mma(
    layout: &WeightLayout,
    elem: &Element,
    words: &[u32],
    n: usize,
    k: usize,
) -> Result<Vec<u8>, RepackError> {
    let codec = FragmentCodec::new(layout, elem)?;
    let wpl = codec.wpl;
    let kc = ATOM * wpl;
    check_shape(n, k, kc)?;
    if words.len() != n * k / 8 {
        return Err(RepackError::Length {
            what: "repacked weight",
            expected: n * k / 8,
            got: words.len(),
        });
    }
    let mut out = vec![0u8; n * k / 2];
    let mut i = 0;
    for nb in 0..n / ATOM {
        for c in 0..k / kc {
            for lane in 0..LANES {
                for j in 0..wpl {
                    let codes = codec.unpack(words[i]);
                    i += 1;
                    for (f, &code) in codes.iter().enumerate() {
                        let (row, col) = element_coords(wpl, nb, c, lane, j, f);
                        let b = &mut out[row * (k / 2) + col / 2];
                        *b |= code << (4 * (col % 2));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The validated parameters of `nibble.scales_mma_sync_a.v1` for one weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmaScaleGeometry {
    pub dtype: DType,
    pub group: usize,
    /// K per chunk (`16 * words_per_lane`).
    pub kc: usize,
    /// Scale slots per chunk and row: `max(1, kc / group)`.
    pub gpc: usize,
    /// K covered by one slot: `min(group, kc)`.
    pub gk: usize,
    pub exp_offset: i32,
    /// `operand bias - element bias - exp_offset`: the kernel's epilogue factor `2^cexp`.
    pub cexp: i32,
    /// One exponent byte per value (`nibble.scales_mma_sync_a_exp.v1`) instead of 16-bit values.
    pub exp_bytes: bool,
}

impl MmaScaleGeometry {
    pub fn new(
        wl: &WeightLayout,
        sl: &ScaleLayout,
        fmt: &Format,
    ) -> Result<MmaScaleGeometry, RepackError> {
        let err = |what: String| RepackError::ScaleLayout {
            id: sl.id.clone(),
            what,
        };
        let exp_bytes = sl.id == MMA_SCALE_EXP_LAYOUT_ID;
        if sl.id != MMA_SCALE_LAYOUT_ID && !exp_bytes {
            return Err(err(format!(
                "expected {MMA_SCALE_LAYOUT_ID} or {MMA_SCALE_EXP_LAYOUT_ID}"
            )));
        }
        let dtype = sl
            .dtype
            .as_deref()
            .and_then(DType::parse)
            .ok_or_else(|| err(format!("dtype {:?} is not bf16 or f16", sl.dtype)))?;
        if sl.group != fmt.group || sl.group == 0 {
            return Err(err(format!(
                "group {} differs from the format's group {}",
                sl.group, fmt.group
            )));
        }
        if sl.exp_offset.abs() > 512 {
            return Err(err(format!("exp_offset {} is out of range", sl.exp_offset)));
        }
        let kc = ATOM * wl.words_per_lane as usize;
        let group = sl.group as usize;
        if kc == 0 || !(kc.is_multiple_of(group) || group.is_multiple_of(kc)) {
            return Err(err(format!(
                "group {group} neither divides nor is a multiple of the chunk K {kc}"
            )));
        }
        if exp_bytes && dtype != DType::Bf16 {
            return Err(err(format!(
                "exponent bytes are defined for bf16 operands, not {}",
                dtype.name()
            )));
        }
        let (ob, _) = operand_bits(dtype);
        Ok(MmaScaleGeometry {
            dtype,
            group,
            kc,
            gpc: (kc / group).max(1),
            gk: group.min(kc),
            exp_offset: sl.exp_offset,
            cexp: ob - fmt.element.bias - sl.exp_offset,
            exp_bytes,
        })
    }

    /// Number of values (u16 or exponent bytes) for an `[N, K]` weight.
    pub fn len(&self, n: usize, k: usize) -> usize {
        n * (k / self.kc) * self.gpc
    }

    /// `(gl, h)` of position `p` among the `2 * gpc` values of one (row block, chunk, q): `p = 2 * gl + h`, except
    /// for exponent bytes with two or more slots, where each 4-byte word holds slots `2j, 2j+1` of row q, then the
    /// same slots of row q + 8 (so one shift and one mask form a slot's bf16 pair).
    pub fn slot_of(&self, p: usize) -> (usize, usize) {
        if self.exp_bytes && self.gpc > 1 {
            let (j, o) = (p / 4, p % 4);
            (2 * j + o % 2, o / 2)
        } else {
            (p / 2, p % 2)
        }
    }

    /// `(row, group)` of the value at `index`.
    pub fn coords(&self, k: usize, index: usize) -> (usize, usize) {
        let (gl, h) = self.slot_of(index % (2 * self.gpc));
        let q = (index / (2 * self.gpc)) % 8;
        let c = (index / (16 * self.gpc)) % (k / self.kc);
        let nb = index / (16 * self.gpc * (k / self.kc));
        (
            nb * ATOM + q + 8 * h,
            (c * self.kc + gl * self.gk) / self.group,
        )
    }
}

fn dtype_bits(v: f32, d: DType) -> u16 {
    match d {
        DType::Bf16 => half::bf16::from_f32(v).to_bits(),
        DType::F16 => half::f16::from_f32(v).to_bits(),
    }
}

/// The kernel's value of one element: `round(raw * S) * 2^cexp`, with `raw` the element as the fragment register
/// reads it (`element * 2^(bias - operand bias)`) and `S` the repacked scale value.
pub fn kernel_element(raw: f64, s_repacked: f64, dtype: DType, cexp: i32) -> f64 {
    f64::from(round_to(raw * s_repacked, dtype)) * pow2(cexp)
}

/// The reference's value: `round(f32(element * scale))`.
pub fn reference_element(v: f64, scale: f64, dtype: DType) -> f64 {
    f64::from(round_to(f64::from(v as f32 * scale as f32), dtype))
}

/// The operand bits of scale `s` (`S = s * 2^exp_offset`) if the kernel applies it exactly for all 16 codes and
/// the layout can hold it, else why not.
pub fn mma_scale_bits(s: f64, elem: &Element, g: &MmaScaleGeometry) -> Result<u16, String> {
    if s == 0.0 {
        return Ok(0);
    }
    let big = s * pow2(g.exp_offset);
    let sd = round_to(big, g.dtype);
    if !sd.is_finite() || f64::from(sd) != big {
        return Err(format!(
            "times 2^{} = {big:e} is not exactly a {} value",
            g.exp_offset,
            g.dtype.name()
        ));
    }
    let bits = dtype_bits(sd, g.dtype);
    let mant = operand_bits(g.dtype).1;
    if g.exp_bytes && (bits & ((1 << mant) - 1) != 0 || bits >> mant == 0) {
        return Err(format!(
            "times 2^{} = {big:e} is not a normal power of two in {}, as the exponent-byte layout needs",
            g.exp_offset,
            g.dtype.name()
        ));
    }
    let (ob, _) = operand_bits(g.dtype);
    for c in 0u8..16 {
        let v = elem.value(c);
        let raw = v * pow2(elem.bias - ob);
        let got = kernel_element(raw, big, g.dtype, g.cexp);
        let want = reference_element(v, s, g.dtype);
        if got != want {
            return Err(format!(
                "code {c:#x} ({v}) gives {got:e} in the kernel, {want:e} in the reference"
            ));
        }
    }
    Ok(bits)
}

/// The power-of-two scales `2^lo ..= 2^hi` the kernel applies exactly (the longest run containing the most
/// exponents), for messages.
pub fn exact_pow2_range(elem: &Element, g: &MmaScaleGeometry) -> Option<(i32, i32)> {
    let ok: Vec<i32> = (-160..=160)
        .filter(|&e| mma_scale_bits(pow2(e), elem, g).is_ok())
        .collect();
    Some((*ok.first()?, *ok.last()?))
}

fn describe_pow2(v: f64) -> String {
    if v > 0.0 && v.is_finite() {
        let e = super::ilog2_normal(v);
        if pow2(e) == v {
            return format!("2^{e}");
        }
    }
    format!("{v:e}")
}

/// Repacks checkpoint scales `[N, K/group]` into the values of `nibble.scales_mma_sync_a.v1` (u16) or
/// `nibble.scales_mma_sync_a_exp.v1` (exponent bytes): index `(((nb * (K/kc) + c) * 8 + q) * gpc + gl) * 2 + h`
/// holds `scale(row nb*16 + q + 8h, group (c*kc + gl*gk) / group) * 2^exp_offset` as `dtype` bits, or their
/// exponent field (see [`MmaScaleGeometry`]). Every distinct scale must be applied exactly by the kernel and fit
/// the layout ([`mma_scale_bits`]); NaN, negative and infinite scales are rejected.
pub fn repack_scales_mma(
    wl: &WeightLayout,
    sl: &ScaleLayout,
    fmt: &Format,
    scales: &ScaleData,
    n: usize,
    k: usize,
) -> Result<RepackedScales, RepackError> {
    let g = MmaScaleGeometry::new(wl, sl, fmt)?;
    let st = ScaleType::parse(&fmt.scale).ok_or_else(|| RepackError::Format {
        format: fmt.name.clone(),
        what: format!("unknown scale type {:?}", fmt.scale),
    })?;
    check_shape(n, k, g.kc)?;
    if !k.is_multiple_of(g.group) {
        return Err(RepackError::Shape {
            n,
            k,
            what: format!("K must be a multiple of the group size {}", g.group),
        });
    }
    let groups = k / g.group;
    if scales.len() != n * groups {
        return Err(RepackError::Length {
            what: "scales",
            expected: n * groups,
            got: scales.len(),
        });
    }
    if !scales.holds(st) {
        return Err(RepackError::ScaleStorage {
            format: fmt.name.clone(),
            expected: st,
            got: scales.kind(),
        });
    }
    // Checkpoint order first: checks each distinct value once and names the first offending (row, group).
    let mut cache: HashMap<u64, u16> = HashMap::new();
    let mut bits = vec![0u16; n * groups];
    for (i, slot) in bits.iter_mut().enumerate() {
        let (row, group) = (i / groups, i % groups);
        let Some((v, raw)) = scales.value(st, i) else {
            return Err(RepackError::Length {
                what: "scales",
                expected: n * groups,
                got: scales.len(),
            });
        };
        if let Some(&b) = cache.get(&v.to_bits()) {
            *slot = b;
            continue;
        }
        let bad = |reason: String| RepackError::Scale {
            row,
            group,
            raw: raw.clone(),
            value: v,
            reason,
        };
        if let Some(reason) = scale_problem(v) {
            return Err(bad(format!("is {reason}")));
        }
        let b = mma_scale_bits(v, &fmt.element, &g).map_err(|why| {
            let range = match exact_pow2_range(&fmt.element, &g) {
                Some((lo, hi)) => format!("scales 2^{lo} to 2^{hi}"),
                None => "no power-of-two scale".into(),
            };
            bad(format!(
                "= {} is outside the range the sm_80/sm_90 kernel applies exactly ({range} for {} activations, exp_offset {}): {why}",
                describe_pow2(v),
                g.dtype.name(),
                g.exp_offset
            ))
        })?;
        cache.insert(v.to_bits(), b);
        *slot = b;
    }
    let out = (0..g.len(n, k)).map(|i| {
        let (row, group) = g.coords(k, i);
        bits[row * groups + group]
    });
    let mant = operand_bits(g.dtype).1;
    Ok(if g.exp_bytes {
        // mma_scale_bits proved every value a power of two with its exponent field in a byte.
        RepackedScales::Exp8 {
            dtype: g.dtype,
            bytes: out.map(|b| (b >> mant) as u8).collect(),
        }
    } else {
        RepackedScales::Half16 {
            dtype: g.dtype,
            bits: out.collect(),
        }
    })
}

#[cfg(test)]
#[path = "repack_mma_tests.rs"]
mod tests;
