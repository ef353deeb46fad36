//! Tests of `nibble.mma_sync_a.v1` / `nibble.scales_mma_sync_a.v1`, including a CPU emulation of the kernel's
//! dequantization recipe (bits -> pieces -> operand values -> times S, rounded -> times 2^cexp) checked against the
//! reference dequantization, with negative controls.

use super::super::fp8::{e4m3fn_decode, e8m0_decode};
use super::super::quantize::e2m1;
use super::super::reference::dequant_weight;
use super::*;
use crate::manifest::FragmentBits;

fn p(shift: i32, mask: u32) -> BitPiece {
    BitPiece { shift, mask }
}

/// The piece table nibble uses, for `mag_shift` L (empty where there is none).
fn pieces(l: u32) -> Vec<Vec<BitPiece>> {
    fragment_pieces(l).unwrap_or_default()
}

fn e1m2(bias: i32) -> Element {
    Element {
        name: format!("e1m2b{bias}"),
        exp_bits: 1,
        man_bits: 2,
        bias,
    }
}

fn mag_shift(elem: &Element, d: DType) -> u32 {
    operand_bits(d).1 - u32::from(elem.man_bits)
}

fn wlayout(elem: &Element, d: DType) -> WeightLayout {
    let l = mag_shift(elem, d);
    WeightLayout {
        id: MMA_WEIGHT_LAYOUT_ID.into(),
        atom_n: 16,
        atom_k: 16,
        words_per_lane: 4,
        mag_shift: l,
        second_half: "pieces".into(),
        mask: full_mask(l),
        fragment: Some(FragmentBits { outputs: pieces(l) }),
    }
}

fn slayout(d: DType, group: u32, exp_offset: i32) -> ScaleLayout {
    slayout_id(MMA_SCALE_LAYOUT_ID, d, group, exp_offset)
}

fn slayout_id(id: &str, d: DType, group: u32, exp_offset: i32) -> ScaleLayout {
    ScaleLayout {
        id: id.into(),
        group,
        exp_offset,
        dtype: Some(d.name().into()),
    }
}

/// Repacked scales as the emulated kernel reads them.
enum KernelScales {
    Half16(Vec<u16>),
    /// Exponent bytes, moved into the bf16 exponent field by a shift of `shift` (7; 8 is a negative control).
    Exp8 {
        bytes: Vec<u8>,
        shift: u32,
    },
}

impl KernelScales {
    fn new(r: RepackedScales, fault: Fault) -> (DType, KernelScales) {
        match r {
            RepackedScales::Half16 { dtype, bits } => (dtype, KernelScales::Half16(bits)),
            RepackedScales::Exp8 { dtype, bytes } => {
                let shift = if fault == Fault::ByteShift { 8 } else { 7 };
                (dtype, KernelScales::Exp8 { bytes, shift })
            }
            RepackedScales::F32(_) => panic!("f32 scales from an mma_sync layout"),
        }
    }

    /// The operand bits of slot `gl`, row half `h`, of the values starting at `base` (one row block, chunk and q),
    /// formed the way the kernel forms them: the u16 value, or for exponent bytes the kernel's word arithmetic.
    fn bits(&self, gpc: usize, base: usize, gl: usize, h: usize) -> u16 {
        match self {
            KernelScales::Half16(bits) => bits[base + 2 * gl + h],
            KernelScales::Exp8 { bytes, shift } => {
                let pair = if gpc == 1 {
                    let x = u32::from(bytes[base]) | u32::from(bytes[base + 1]) << 8;
                    ((x | x << 8) & 0x00FF_00FF) << shift
                } else {
                    let at = base + 4 * (gl / 2);
                    let w = u32::from_le_bytes([
                        bytes[at],
                        bytes[at + 1],
                        bytes[at + 2],
                        bytes[at + 3],
                    ]);
                    let w = if gl.is_multiple_of(2) {
                        w << shift
                    } else {
                        w >> (8 - shift)
                    };
                    w & (0xFF << shift | 0xFF << (16 + shift))
                };
                (pair >> (16 * h)) as u16
            }
        }
    }
}

fn repack16(
    wl: &WeightLayout,
    sl: &ScaleLayout,
    fmt: &Format,
    scales: &ScaleData,
    n: usize,
    k: usize,
) -> Result<(DType, Vec<u16>), RepackError> {
    match repack_scales_mma(wl, sl, fmt, scales, n, k)? {
        RepackedScales::Half16 { dtype, bits } => Ok((dtype, bits)),
        other => panic!("expected 16-bit scales, got {}", other.elem()),
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

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}

fn decode16(bits: u16, d: DType) -> f64 {
    match d {
        DType::Bf16 => half::bf16::from_bits(bits).to_f64(),
        DType::F16 => half::f16::from_bits(bits).to_f64(),
    }
}

/// How the emulated kernel deviates from the layout (negative controls).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// The kernel reads the fragment's two row halves (g, g+8) the other way round.
    SwapRows,
    /// The kernel shifts exponent bytes one bit too far.
    ByteShift,
}

/// The kernel's dequantized weight `[N, K]` from repacked words and scales, by the layout's index formulas and the
/// register recipe `pieces`. Panics if some element is produced twice or never.
#[allow(clippy::too_many_arguments)]
fn emulate(
    pieces: &[Vec<BitPiece>],
    wpl: usize,
    words: &[u32],
    scales: &KernelScales,
    g: &MmaScaleGeometry,
    elem: &Element,
    n: usize,
    k: usize,
    fault: Fault,
) -> Vec<f64> {
    let kc = 16 * wpl;
    let mut out = vec![f64::NAN; n * k];
    let mut seen = vec![false; n * k];
    let mut i = 0;
    let _ = elem;
    for nb in 0..n / 16 {
        for c in 0..k / kc {
            for lane in 0..32 {
                for j in 0..wpl {
                    let regs = registers(pieces, words[i]);
                    i += 1;
                    for f in 0..8 {
                        let (mut row, col) = element_coords(wpl, nb, c, lane, j, f);
                        let mut hrow = (f / 2) % 2;
                        if fault == Fault::SwapRows {
                            hrow = 1 - hrow;
                            row = nb * 16 + lane / 4 + 8 * hrow;
                        }
                        let half = (regs[f / 2] >> (16 * (f % 2))) as u16;
                        let raw = decode16(half, g.dtype);
                        let gl = (col % kc) / g.gk;
                        let base = ((nb * (k / kc) + c) * 8 + lane / 4) * g.gpc * 2;
                        let s = decode16(scales.bits(g.gpc, base, gl, hrow), g.dtype);
                        assert!(!seen[row * k + col], "element ({row}, {col}) twice");
                        seen[row * k + col] = true;
                        out[row * k + col] = kernel_element(raw, s, g.dtype, g.cexp);
                    }
                }
            }
        }
    }
    assert!(seen.iter().all(|&s| s), "every element produced");
    out
}

/// Repacks with the scale layout `id`, emulates the kernel and compares with the reference dequantization; Err on
/// the first difference.
#[allow(clippy::too_many_arguments)]
fn run_case(
    id: &str,
    elem: &Element,
    d: DType,
    fmt: &Format,
    scales: &ScaleData,
    exp_offset: i32,
    weight: &[u8],
    n: usize,
    k: usize,
    kernel_pieces: Option<Vec<Vec<BitPiece>>>,
    kernel_exp_offset: Option<i32>,
    fault: Fault,
) -> Result<usize, String> {
    let wl = wlayout(elem, d);
    let sl = slayout_id(id, d, fmt.group, exp_offset);
    let words = repack_weight_mma(&wl, elem, weight, n, k).map_err(|e| e.to_string())?;
    let repacked = repack_scales_mma(&wl, &sl, fmt, scales, n, k).map_err(|e| e.to_string())?;
    let (dt, ks) = KernelScales::new(repacked, fault);
    assert_eq!(dt, d);
    let kernel_sl = slayout_id(id, d, fmt.group, kernel_exp_offset.unwrap_or(exp_offset));
    let g = MmaScaleGeometry::new(&wl, &kernel_sl, fmt).map_err(|e| e.to_string())?;
    let pcs = kernel_pieces.unwrap_or_else(|| pieces(wl.mag_shift));
    let got = emulate(&pcs, 4, &words, &ks, &g, elem, n, k, fault);
    let want = dequant_weight(fmt, weight, scales, None, n, k, d).map_err(|e| e.to_string())?;
    for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
        // == treats -0 and +0 alike and fails on NaN.
        if a != f64::from(b) {
            return Err(format!(
                "element ({}, {}): kernel {a:e}, reference {b:e}",
                i / k,
                i % k
            ));
        }
    }
    Ok(got.len())
}

fn elements() -> Vec<(Element, DType, i32)> {
    // (element, operand type, exp_offset the test uses)
    vec![
        (e2m1(), DType::Bf16, 110),
        (e1m2(1), DType::Bf16, 110),
        (e2m1(), DType::F16, 5),
        (e1m2(1), DType::F16, 5),
    ]
}

/// Accepted E8M0 codes for a geometry.
fn accepted_e8m0(elem: &Element, g: &MmaScaleGeometry) -> Vec<u8> {
    (0u8..=254)
        .filter(|&c| mma_scale_bits(f64::from(e8m0_decode(c)), elem, g).is_ok())
        .collect()
}

#[test]
fn the_piece_tables_validate_and_map_each_code_bit_where_the_operand_wants_it() {
    for (elem, d, _) in elements() {
        let wl = wlayout(&elem, d);
        let codec = FragmentCodec::new(&wl, &elem).expect("valid");
        assert_eq!(codec.operand(), d);
        let l = codec.mag_shift();
        for f in 0..8 {
            for code in 0u8..16 {
                let mut codes = [0u8; 8];
                codes[f] = code;
                let w = codec.pack(codes);
                assert_eq!(codec.unpack(w), codes);
                let regs = registers(codec.pieces(), w);
                let (r, h) = (f / 2, (f % 2) as u32);
                let want =
                    (u32::from(code >> 3) << (16 * h + 15)) | (u32::from(code & 7) << (16 * h + l));
                for (rr, &reg) in regs.iter().enumerate() {
                    assert_eq!(reg, if rr == r { want } else { 0 }, "f {f} code {code}");
                }
                // The operand value is element * 2^(bias - operand bias).
                let raw = decode16((regs[r] >> (16 * h)) as u16, d);
                let (ob, _) = operand_bits(d);
                assert_eq!(raw, elem.value(code) * pow2(elem.bias - ob));
            }
        }
    }
}

#[test]
fn round_trip_and_index_formula() {
    for (elem, d, _) in elements() {
        let wl = wlayout(&elem, d);
        let codec = FragmentCodec::new(&wl, &elem).expect("valid");
        for (n, k) in [(16, 64), (32, 192), (48, 128)] {
            let w = random_bytes(n * k / 2, (n + k) as u64);
            let words = repack_weight_mma(&wl, &elem, &w, n, k).expect("repacks");
            assert_eq!(words.len(), n * k / 8);
            assert_eq!(
                unpack_weight_mma(&wl, &elem, &words, n, k).expect("unpacks"),
                w
            );
            // The doc formula, literally.
            let mut i = 0;
            for nb in 0..n / 16 {
                for c in 0..k / 64 {
                    for lane in 0..32 {
                        for j in 0..4 {
                            let codes: [u8; 8] = std::array::from_fn(|f| {
                                let (row, col) = element_coords(4, nb, c, lane, j, f);
                                (w[row * k / 2 + col / 2] >> (4 * (col % 2))) & 0xF
                            });
                            assert_eq!(words[i], codec.pack(codes), "word {i}");
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn hand_computed_word() {
    // N=16, K=64, e2m1 into bf16 (L=6). Word 0 is nb=0, c=0, lane 0 (g=0, t=0), j=0: elements W[0][0], W[0][1],
    // W[8][0], W[8][1], W[0][8], W[0][9], W[8][8], W[8][9].
    let elem = e2m1();
    let wl = wlayout(&elem, DType::Bf16);
    let (n, k) = (16, 64);
    let mut w = vec![0u8; n * k / 2];
    w[0] = 0x1 | 0x2 << 4; // W[0][0] = 1, W[0][1] = 2
    w[8 * 32] = 0x3 | 0x4 << 4; // W[8][0..2]
    w[4] = 0x5 | 0x6 << 4; // W[0][8..10]
    w[8 * 32 + 4] = 0x7 | 0xF << 4; // W[8][8..10]
    let words = repack_weight_mma(&wl, &elem, &w, n, k).expect("repacks");
    let regs = registers(&pieces(6), words[0]);
    // Register r holds elements 2r (low half) and 2r+1 (high half): code & 7 at bit 6, sign at bit 15.
    assert_eq!(regs[0], (1 << 6) | (2 << 22));
    assert_eq!(regs[1], (3 << 6) | (4 << 22));
    assert_eq!(regs[2], (5 << 6) | (6 << 22));
    assert_eq!(regs[3], (7 << 6) | (7 << 22) | 0x8000_0000);
    assert!(words[1..].iter().all(|&x| x == 0));
}

#[test]
fn bad_layouts_are_rejected() {
    let elem = e2m1();
    let good = wlayout(&elem, DType::Bf16);
    let l = 6;
    let f = full_mask(l);
    let bad = |edit: &dyn Fn(&mut WeightLayout)| {
        let mut wl = good.clone();
        edit(&mut wl);
        match FragmentCodec::new(&wl, &elem) {
            Err(RepackError::WeightLayout { what, .. }) => what,
            other => panic!("expected a layout error, got {other:?}"),
        }
    };
    let set = |r: usize, ps: Vec<BitPiece>| {
        move |wl: &mut WeightLayout| {
            if let Some(fr) = wl.fragment.as_mut() {
                fr.outputs[r] = ps.clone();
            }
        }
    };
    // Register 3 of the table: bits 6, 7 and 15 of each half shifted by 6, bit 8 by -2.
    let (q1, q2) = (0x80C0_80C0, 0x0100_0100);
    assert_eq!(q1 | q2, f);
    assert!(bad(&set(1, vec![p(0, f)])).contains("used twice"));
    assert!(bad(&set(3, vec![p(6, q1)])).contains("cover"));
    assert!(bad(&set(3, vec![p(6, q1), p(-2, q2), p(-2, q2)])).contains("overlaps"));
    assert!(bad(&set(0, vec![p(0, f | 1)])).contains("outside"));
    assert!(bad(&set(3, vec![p(20, q1), p(-2, q2)])).contains("word bit"));
    assert!(bad(&set(3, vec![p(40, q1), p(-2, q2)])).contains("shift"));
    assert!(bad(&|wl| wl.mag_shift = 7).contains("mag_shift"));
    assert!(bad(&|wl| wl.mask = 0x81C0_81C1).contains("mask"));
    assert!(bad(&|wl| wl.fragment = None).contains("fragment"));
    assert!(bad(&|wl| wl.second_half = "rotl4".into()).contains("pieces"));
    assert!(bad(&|wl| wl.atom_n = 32).contains("atom"));
    assert!(bad(&|wl| {
        if let Some(fr) = wl.fragment.as_mut() {
            fr.outputs.pop();
        }
    })
    .contains("registers"));
    assert_eq!(good.mask, 0x81C0_81C0);
    // Shapes and lengths.
    assert!(matches!(
        repack_weight_mma(&good, &elem, &[0; 16 * 32], 16, 48),
        Err(RepackError::Shape { .. })
    ));
    assert!(matches!(
        repack_weight_mma(&good, &elem, &[0; 5], 16, 64),
        Err(RepackError::Length { .. })
    ));
}

/// The specification test: for random weights (every code at every fragment position) and every accepted scale,
/// the emulated kernel equals the reference dequantization exactly.
#[test]
fn emulated_kernel_dequant_equals_reference() {
    let (n, k) = (64, 256);
    let w = random_bytes(n * k / 2, 7);
    {
        let elem = e2m1();
        let wl = wlayout(&elem, DType::Bf16);
        let codec = FragmentCodec::new(&wl, &elem).expect("valid");
        let words = repack_weight_mma(&wl, &elem, &w, n, k).expect("repacks");
        let mut seen = [[false; 16]; 8];
        for &x in &words {
            for (f, c) in codec.unpack(x).iter().enumerate() {
                seen[f][usize::from(*c)] = true;
            }
        }
        assert!(
            seen.iter().flatten().all(|&s| s),
            "every code at every position"
        );
    }
    let mut cases = 0;
    for (elem, d, e) in elements() {
        let wl = wlayout(&elem, d);
        // E8M0, group 32: every accepted exponent, cycled over the scales.
        let fmt = format(&elem, "e8m0", 32);
        let g = MmaScaleGeometry::new(&wl, &slayout(d, 32, e), &fmt).expect("geometry");
        let acc = accepted_e8m0(&elem, &g);
        assert!(
            acc.len() > 20,
            "{} {d:?}: {} accepted",
            elem.name,
            acc.len()
        );
        assert!(acc.contains(&127), "scale 1 is accepted");
        let codes: Vec<u8> = (0..n * k / 32).map(|i| acc[i % acc.len()]).collect();
        run_case(
            MMA_SCALE_LAYOUT_ID,
            &elem,
            d,
            &fmt,
            &ScaleData::Bytes(codes),
            e,
            &w,
            n,
            k,
            None,
            None,
            Fault::None,
        )
        .unwrap_or_else(|m| panic!("{} {d:?} e8m0: {m}", elem.name));
        // E4M3, group 16: all positive codes (all accepted at these offsets), and zero.
        let fmt = format(&elem, "e4m3", 16);
        let codes: Vec<u8> = (0..n * k / 16).map(|i| (i % 0x7F) as u8).collect();
        run_case(
            MMA_SCALE_LAYOUT_ID,
            &elem,
            d,
            &fmt,
            &ScaleData::Bytes(codes),
            e,
            &w,
            n,
            k,
            None,
            None,
            Fault::None,
        )
        .unwrap_or_else(|m| panic!("{} {d:?} e4m3: {m}", elem.name));
        // BF16 scales, group 128 (> the chunk K: one slot per chunk): random values in a range, the accepted ones.
        let fmt = format(&elem, "bf16", 128);
        let g = MmaScaleGeometry::new(&wl, &slayout(d, 128, e), &fmt).expect("geometry");
        let pool: Vec<u16> = random_bytes(4096, 3)
            .chunks(2)
            .map(|b| 0x3000 + (u16::from(b[0]) | u16::from(b[1]) << 8) % 0x1800)
            .filter(|&b| mma_scale_bits(decode16(b, DType::Bf16), &elem, &g).is_ok())
            .collect();
        assert!(
            pool.len() > 500,
            "{} {d:?}: {} bf16 scales accepted",
            elem.name,
            pool.len()
        );
        let bits: Vec<u16> = (0..n * k / 128).map(|i| pool[i % pool.len()]).collect();
        run_case(
            MMA_SCALE_LAYOUT_ID,
            &elem,
            d,
            &fmt,
            &ScaleData::Bf16(bits),
            e,
            &w,
            n,
            k,
            None,
            None,
            Fault::None,
        )
        .unwrap_or_else(|m| panic!("{} {d:?} bf16: {m}", elem.name));
        cases += 3;
    }
    assert_eq!(cases, 12);
}

#[test]
fn emulation_detects_faults() {
    let (n, k) = (32, 128);
    let w = random_bytes(n * k / 2, 11);
    for (elem, d, e) in elements() {
        let fmt = format(&elem, "e4m3", 16);
        let sc = ScaleData::Bytes((0..n * k / 16).map(|i| (i % 0x7F) as u8).collect());
        let case = |kernel_pieces, kernel_exp, fault| {
            run_case(
                MMA_SCALE_LAYOUT_ID,
                &elem,
                d,
                &fmt,
                &sc,
                e,
                &w,
                n,
                k,
                kernel_pieces,
                kernel_exp,
                fault,
            )
        };
        let ok = case(None, None, Fault::None);
        assert!(ok.is_ok(), "{ok:?}");
        // One piece shift changed (register 1: shift + 1).
        let mut pcs = pieces(mag_shift(&elem, d));
        pcs[1][0].shift += 1;
        let r = case(Some(pcs), None, Fault::None);
        assert!(r.is_err(), "{} {d:?}: wrong shift undetected", elem.name);
        // Fragment rows swapped.
        let r = case(None, None, Fault::SwapRows);
        assert!(r.is_err(), "{} {d:?}: swapped rows undetected", elem.name);
        // exp_offset off by one (kernel and repacking disagree).
        for de in [-1, 1] {
            let r = case(None, Some(e + de), Fault::None);
            assert!(
                r.is_err(),
                "{} {d:?}: exp_offset {de:+} undetected",
                elem.name
            );
        }
    }
}

#[test]
fn scales_out_of_the_exact_range_are_rejected_with_row_group_and_range() {
    let elem = e2m1();
    let d = DType::Bf16;
    let wl = wlayout(&elem, d);
    let fmt = format(&elem, "e8m0", 32);
    let sl = slayout(d, 32, 121);
    let (n, k) = (32, 128);
    let mut codes = vec![127u8; n * k / 32];
    // Row 17, group 3: 2^9.
    codes[17 * 4 + 3] = 127 + 9;
    let e = repack_scales_mma(&wl, &sl, &fmt, &ScaleData::Bytes(codes.clone()), n, k)
        .expect_err("2^9 is out of range")
        .to_string();
    assert!(
        e.contains("row 17, group 3")
            && e.contains("2^9")
            && e.contains("to 2^6")
            && e.contains("bf16"),
        "{e}"
    );
    codes[17 * 4 + 3] = 127 + 6;
    assert!(repack_scales_mma(&wl, &sl, &fmt, &ScaleData::Bytes(codes.clone()), n, k).is_ok());
    // NaN, wrong storage, wrong group, missing dtype, bad chunk/group combination.
    codes[5] = 0xFF;
    let e = repack_scales_mma(&wl, &sl, &fmt, &ScaleData::Bytes(codes), n, k)
        .expect_err("NaN")
        .to_string();
    assert!(e.contains("NaN") && e.contains("row 1, group 1"), "{e}");
    assert!(matches!(
        repack_scales_mma(&wl, &sl, &fmt, &ScaleData::F32(vec![1.0; 128]), n, k),
        Err(RepackError::ScaleStorage { .. })
    ));
    let mut sl2 = sl.clone();
    sl2.dtype = None;
    assert!(matches!(
        repack_scales_mma(&wl, &sl2, &fmt, &ScaleData::Bytes(vec![127; 128]), n, k),
        Err(RepackError::ScaleLayout { .. })
    ));
    let fmt48 = format(&elem, "e8m0", 48);
    let sl48 = slayout(d, 48, 121);
    assert!(matches!(
        repack_scales_mma(
            &wl,
            &sl48,
            &fmt48,
            &ScaleData::Bytes(vec![127; 96]),
            32,
            192
        ),
        Err(RepackError::ScaleLayout { .. })
    ));
    // F32 scales: an exact one is accepted, 0.1 (not a bf16 value times 2^e) is not.
    let fmt = format(&elem, "f32", 32);
    let ok = repack_scales_mma(&wl, &sl, &fmt, &ScaleData::F32(vec![0.75; 128]), n, k);
    assert!(ok.is_ok(), "{ok:?}");
    let e = repack_scales_mma(&wl, &sl, &fmt, &ScaleData::F32(vec![0.1; 128]), n, k)
        .expect_err("0.1")
        .to_string();
    assert!(e.contains("not exactly a bf16"), "{e}");
}

#[test]
fn scale_order_follows_the_index_formula() {
    let elem = e2m1();
    let d = DType::F16;
    let wl = wlayout(&elem, d);
    for group in [16u32, 32, 64, 128] {
        let fmt = format(&elem, "e4m3", group);
        let sl = slayout(d, group, 5);
        let (n, k) = (32, 256);
        let groups = k / group as usize;
        let codes: Vec<u8> = (0..n * groups).map(|i| (1 + i % 0x7E) as u8).collect();
        let (_, bits) =
            repack16(&wl, &sl, &fmt, &ScaleData::Bytes(codes.clone()), n, k).expect("repacks");
        let kc = 64;
        let gpc = (kc / group as usize).max(1);
        let gk = (group as usize).min(kc);
        assert_eq!(bits.len(), n * (k / kc) * gpc);
        for nb in 0..n / 16 {
            for c in 0..k / kc {
                for q in 0..8 {
                    for gl in 0..gpc {
                        for h in 0..2 {
                            let i = (((nb * (k / kc) + c) * 8 + q) * gpc + gl) * 2 + h;
                            let row = nb * 16 + q + 8 * h;
                            let gi = (c * kc + gl * gk) / group as usize;
                            let s = f64::from(e4m3fn_decode(codes[row * groups + gi])) * 32.0;
                            assert_eq!(decode16(bits[i], d), s, "group {group} index {i}");
                        }
                    }
                }
            }
        }
    }
}

/// `nibble.scales_mma_sync_a_exp.v1`: one byte per scale; for bf16 operands it accepts exactly the E8M0 codes the
/// 16-bit layout accepts, the emulated kernel (a word shifted and masked into a slot's bf16 pair) equals the
/// reference for one and two slots per chunk, and a kernel shifting one bit too far or disagreeing on exp_offset is
/// caught. f16 operands and non-power-of-two scales are rejected.
#[test]
fn exponent_byte_scales_equal_the_reference_and_faults_are_detected() {
    let (n, k) = (64, 256);
    let w = random_bytes(n * k / 2, 13);
    let exp = MMA_SCALE_EXP_LAYOUT_ID;
    let d = DType::Bf16;
    for (elem, e) in [(e2m1(), 110), (e1m2(1), 110), (e2m1(), 121)] {
        let wl = wlayout(&elem, d);
        for group in [32u32, 64, 128] {
            let fmt = format(&elem, "e8m0", group);
            let g16 = MmaScaleGeometry::new(&wl, &slayout(d, group, e), &fmt).expect("geometry");
            let sl8 = slayout_id(exp, d, group, e);
            let g8 = MmaScaleGeometry::new(&wl, &sl8, &fmt).expect("geometry");
            let acc = accepted_e8m0(&elem, &g8);
            assert_eq!(
                acc,
                accepted_e8m0(&elem, &g16),
                "{}: the same codes",
                elem.name
            );
            assert!(acc.len() > 20, "{}: {} accepted", elem.name, acc.len());
            // Neighbouring scales differ, so a slot or row read from the wrong byte changes the result.
            let groups = n * k / group as usize;
            let codes: Vec<u8> = (0..groups).map(|i| acc[(i * 7) % acc.len()]).collect();
            let sc = ScaleData::Bytes(codes);
            let what = format!("{} group {group} exp_offset {e}", elem.name);
            let run = |kernel_exp: Option<i32>, fault: Fault| {
                run_case(
                    exp, &elem, d, &fmt, &sc, e, &w, n, k, None, kernel_exp, fault,
                )
            };
            run(None, Fault::None).unwrap_or_else(|m| panic!("{what}: {m}"));
            assert!(run(None, Fault::ByteShift).is_err(), "{what}: byte shift");
            assert!(run(None, Fault::SwapRows).is_err(), "{what}: swapped rows");
            for de in [-1, 1] {
                assert!(
                    run(Some(e + de), Fault::None).is_err(),
                    "{what}: exp_offset {de:+}"
                );
            }
            let r = repack_scales_mma(&wl, &sl8, &fmt, &sc, n, k).expect("repacks");
            assert!(matches!(r, RepackedScales::Exp8 { .. }));
            assert_eq!(r.elem(), "u8");
            assert_eq!(r.size_bytes(), g8.len(n, k), "one byte per value");
            let (_, bits16) =
                repack16(&wl, &slayout(d, group, e), &fmt, &sc, n, k).expect("repacks");
            assert_eq!(
                r.len(),
                bits16.len(),
                "as many values as the 16-bit layout, in half the bytes"
            );
        }
    }
    // The byte order inside a word for two slots: (gl 0, g), (gl 1, g), (gl 0, g+8), (gl 1, g+8).
    let elem = e2m1();
    let wl = wlayout(&elem, d);
    let fmt = format(&elem, "e8m0", 32);
    let g8 = MmaScaleGeometry::new(&wl, &slayout_id(exp, d, 32, 110), &fmt).expect("geometry");
    let slots: Vec<_> = (0..4).map(|p| g8.slot_of(p)).collect();
    assert_eq!(slots, [(0, 0), (1, 0), (0, 1), (1, 1)]);
    // f16 operands and a non-power-of-two scale.
    let wl16 = wlayout(&elem, DType::F16);
    assert!(matches!(
        MmaScaleGeometry::new(&wl16, &slayout_id(exp, DType::F16, 32, 5), &fmt),
        Err(RepackError::ScaleLayout { .. })
    ));
    let fmt = format(&elem, "f32", 32);
    let sl8 = slayout_id(exp, d, 32, 110);
    let err = repack_scales_mma(&wl, &sl8, &fmt, &ScaleData::F32(vec![0.75; 32]), 16, 64)
        .expect_err("0.75")
        .to_string();
    assert!(err.contains("normal power of two"), "{err}");
}
