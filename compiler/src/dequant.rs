//! The dequantization stage: its reference semantics and the pass that replaces it with packed bit tricks.
//!
//! The GPU stage calls `@nibble_dequant(word: i32, scale: f32) -> vector<8xT>` once per repacked weight word.
//! `build_reference_fn` gives that function its meaning in plain MLIR: undo the repack permutation nibble by nibble,
//! decode each code (through `f4E2M1FN` for e2m1, a table for other minifloats), multiply by the block scale in f32
//! and round to the operand type. `run` is the pass: it replaces every call with the packed sequence on 32-bit
//! words and removes the reference function:
//!
//! - `word & mask` leaves four bytes that read as FNUZ bf8 values `element * 2^(bias-16)` (the repack put sign,
//!   exponent and mantissa bits exactly there); `bitreverse(word) & mask` (or `rotl(word, 4) & mask`) does the same
//!   for the other four elements. Three instructions for eight elements.
//! - gfx942: `v_cvt_pk_f32_bf8` turns two bytes into two f32; gfx90a has no fp8 conversion, but a bf8 byte is the
//!   top byte of an f16, so byte permutes and `v_cvt_f32_f16` do it (with 2^(15-bias) folded into the scales).
//! - one packed f32 multiply per two elements applies the repacked scale, which already carries 2^(16-bias);
//! - two f32 become one bf16x2 register by keeping their high halves (a byte permute) when element * scale is exact
//!   in bf16 (e8m0, e4m3 scales), or by a rounding conversion otherwise.

use melior::ir::{
    attribute::{
        DenseElementsAttribute, DenseI64ArrayAttribute, FlatSymbolRefAttribute, IntegerAttribute,
    },
    operation::{OperationBuilder, OperationLike, OperationRef, WalkOrder, WalkResult},
    Block, BlockLike, Module, Region, RegionLike, Type, Value, ValueLike,
};
use melior::IrRewriter;

use crate::ir::{self, Emitter, IrError};
use crate::kernel::{dtype, DEQUANT_FN};
use crate::plan::{Bf8Convert, FragmentPlan, Plan, SecondHalf};
use nibble_runtime::manifest::BitPiece;

/// `func.func private @nibble_dequant(%word: i32, %scale: f32) -> vector<8xT>` with the reference body.
pub fn build_reference_fn<'c, 'b>(e: &Emitter<'c, 'b>, p: &Plan) -> Result<(), IrError> {
    let i32t = e.int(32);
    let out = e.vector(8, out_elem(e, p));
    let s2 = scale_type(e, p);
    let region = Region::new();
    let block = ir::emit::detach(region.append_block(Block::new(&[(i32t, e.loc), (s2, e.loc)])));
    let b = e.at(block);
    let arg = |i| {
        block
            .argument(i)
            .map(Value::from)
            .map_err(|err| ir::emit::build_err("func.func", err))
    };
    let word = arg(0)?;
    let scale = arg(1)?;
    let r = reference_body(&b, p, word, scale)?;
    b.op("func.return", &[r], &[], &[])?;
    let func = OperationBuilder::new("func.func", e.loc)
        .add_attributes(&[
            (e.ident("sym_name"), e.string(DEQUANT_FN)),
            (e.ident("function_type"), e.func_type(&[i32t, s2], &[out])),
            (e.ident("sym_visibility"), e.string("private")),
        ])
        .add_regions([region])
        .build()
        .map_err(|err| ir::emit::build_err("func.func", err))?;
    e.append(func);
    Ok(())
}

/// Element type of the dequant function's result: the MFMA operand type, f32 on the xf32 route.
pub fn out_elem<'c>(e: &Emitter<'c, '_>, p: &Plan) -> Type<'c> {
    if p.dequant.xf32 {
        e.f32()
    } else {
        dtype(e, p.x)
    }
}

/// The dequant function's scale operand: two f32 (the same scale twice, for a packed multiply) on AMD; on NVIDIA
/// the repacked scales of the fragment's two rows (g and g + 8) in the operand type.
pub fn scale_type<'c>(e: &Emitter<'c, '_>, p: &Plan) -> Type<'c> {
    if p.fragment.is_some() {
        e.vector(2, dtype(e, p.x))
    } else {
        e.vector(2, e.f32())
    }
}

fn second_half<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    word: Value<'c, 'b>,
) -> Result<Value<'c, 'b>, IrError> {
    let i32t = e.int(32);
    match p.dequant.second_half {
        SecondHalf::Bitreverse => e.op1("llvm.intr.bitreverse", &[word], i32t, &[]),
        SecondHalf::Rotl4 => {
            let four = e.i32c(4)?;
            e.op1("llvm.intr.fshl", &[word, word, four], i32t, &[])
        }
    }
}

/// The definition: element codes recovered one by one, decoded exactly, scaled in f32, rounded once.
fn reference_body<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    word: Value<'c, 'b>,
    scale: Value<'c, 'b>,
) -> Result<Value<'c, 'b>, IrError> {
    let f32t = e.f32();
    if let Some(f) = &p.fragment {
        return fragment_reference(e, p, f, word, scale);
    }
    let other = second_half(e, p, word)?;
    let mut codes = vec![];
    for t in 0..8u32 {
        let src = if t < 4 { word } else { other };
        let sh = e.i32c(i64::from(8 * (t % 4)))?;
        let byte = e.shrui(src, sh)?;
        let seven = e.i32c(7)?;
        let sign = e.shrui(byte, seven)?;
        let one = e.i32c(1)?;
        let sign = e.andi(sign, one)?;
        let three = e.i32c(3)?;
        let sign = e.shli(sign, three)?;
        let ms = e.i32c(i64::from(p.dequant.mag_shift))?;
        let mag = e.shrui(byte, ms)?;
        let mag = e.andi(mag, seven)?;
        codes.push(e.ori(sign, mag)?);
    }
    let values = decode_codes(e, p, &codes)?;
    let f8 = e.vector(8, f32t);
    // The repacked scale carries 2^(16 - bias); the reference undoes it to use the checkpoint's scale itself.
    let undo = e.f32c(2f64.powi(-p.dequant.exp_offset))?;
    let scale = e.extract(scale, 0, f32t)?;
    let true_scale = e.mulf(scale, undo)?;
    let sv = e.broadcast(true_scale, f8)?;
    let prod = e.mulf(values, sv)?;
    if p.dequant.xf32 {
        // The xf32 MFMA takes the f32 product as it is (exact: it is an element times a power of two).
        return Ok(prod);
    }
    e.truncf(prod, e.vector(8, dtype(e, p.x)))
}

/// Exact f32 values of eight 4-bit codes (i32 values 0..15).
fn decode_codes<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    codes: &[Value<'c, 'b>],
) -> Result<Value<'c, 'b>, IrError> {
    let f32t = e.f32();
    let elem = &p.format.element;
    let f8 = e.vector(8, f32t);
    let values = if elem.exp_bits == 2 && elem.man_bits == 1 && elem.bias == 1 {
        // e2m1 is MLIR's f4E2M1FN: let arith.extf define the element values.
        let i4 = e.int(4);
        let c4: Vec<Value> = codes
            .iter()
            .map(|c| e.trunci(*c, i4))
            .collect::<Result<_, _>>()?;
        let v = e.from_elements(&c4, e.vector(8, i4))?;
        let f4 = e.bitcast(v, e.vector(8, Type::float4_e2m1fn(e.ctx)))?;
        e.extf(f4, f8)?
    } else {
        // Other minifloats: a 16-entry table of exact values, computed from the element definition.
        let table: Vec<f32> = (0..16u8).map(|c| elem.value(c) as f32).collect();
        let tty = e.vector(16, f32t);
        let tv = e.op1(
            "arith.constant",
            &[],
            tty,
            &[(
                "value",
                DenseElementsAttribute::f32_values(tty, &table).into(),
            )],
        )?;
        let mut vals = vec![];
        for c in codes {
            let ci = e.index_cast(*c, e.index())?;
            vals.push(e.op1(
                "vector.extract",
                &[tv, ci],
                f32t,
                &[(
                    "static_position",
                    DenseI64ArrayAttribute::new(e.ctx, &[i64::MIN]).into(),
                )],
            )?);
        }
        e.from_elements(&vals, f8)?
    };
    Ok(values)
}

/// NVIDIA reference: element f of the A fragment (register f / 2, half f % 2) has its code bits wherever the
/// pieces fetch them from; its value times the repacked scale of its row (g for registers 0 and 2, g + 8 for 1
/// and 3) times 2^(element bias - operand bias) is element * scale * 2^-epilogue_exp, rounded once.
fn fragment_reference<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    f: &FragmentPlan,
    word: Value<'c, 'b>,
    scale: Value<'c, 'b>,
) -> Result<Value<'c, 'b>, IrError> {
    let f32t = e.f32();
    let xt = dtype(e, p.x);
    let one = e.i32c(1)?;
    let mut codes = vec![];
    for el in 0..8u32 {
        let (reg, half) = ((el / 2) as usize, el % 2);
        // Code bit 3 (sign) sits at bit 15 of the half, code bits 0..2 at mag_low.. of the half.
        let targets = [
            (0, 16 * half + f.mag_low),
            (1, 16 * half + f.mag_low + 1),
            (2, 16 * half + f.mag_low + 2),
            (3, 16 * half + 15),
        ];
        let mut code = None;
        for (cbit, obit) in targets {
            let src = crate::plan::fragment_source_bit(&f.outputs, reg, obit).ok_or_else(|| {
                ir::emit::build_err("nibble_dequant", "fragment bit without a piece")
            })?;
            let sh = e.i32c(i64::from(src))?;
            let b = e.shrui(word, sh)?;
            let b = e.andi(b, one)?;
            let b = if cbit > 0 {
                let c = e.i32c(cbit)?;
                e.shli(b, c)?
            } else {
                b
            };
            code = Some(match code {
                None => b,
                Some(acc) => e.ori(acc, b)?,
            });
        }
        codes.push(code.ok_or_else(|| ir::emit::build_err("nibble_dequant", "empty code"))?);
    }
    let values = decode_codes(e, p, &codes)?;
    let mut scales = vec![];
    for el in 0..8u32 {
        let row_half = i64::from((el / 2) % 2);
        let sv = e.extract(scale, row_half, xt)?;
        scales.push(e.extf(sv, f32t)?);
    }
    let sv = e.from_elements(&scales, e.vector(8, f32t))?;
    // Element first: element * 2^(bias - operand bias) is exact in f32 (at least 2^-130 with 3 significant bits),
    // whereas element * scale could overflow f32 for the largest repacked scales.
    let raw = e.f32c(2f64.powi(p.format.element.bias - f.operand_bias))?;
    let rv = e.broadcast(raw, e.vector(8, f32t))?;
    let values = e.mulf(values, rv)?;
    let prod = e.mulf(values, sv)?;
    e.truncf(prod, e.vector(8, xt))
}

/// One AND of an operand register: the word shifted (`rotate`: rotated left) by `shift`, masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentTerm {
    pub shift: i32,
    pub rotate: bool,
    pub mask: u32,
}

/// A register's pieces as the terms the kernel computes. Pieces `(s, hi)` and `(s - 32, lo)` with `hi` at or above
/// bit `s` and `lo` below it read the word rotated left by `s`: one funnel shift and one mask instead of two of each.
pub fn fragment_terms(pieces: &[BitPiece]) -> Vec<FragmentTerm> {
    let mut used = vec![false; pieces.len()];
    let mut terms = vec![];
    for i in 0..pieces.len() {
        if used[i] {
            continue;
        }
        used[i] = true;
        let a = pieces[i];
        let partner = (0..pieces.len()).find(|&j| {
            let b = pieces[j];
            let (hi, lo) = if a.shift > 0 { (a, b) } else { (b, a) };
            !used[j]
                && (1..32).contains(&hi.shift)
                && lo.shift == hi.shift - 32
                && hi.mask & ((1u32 << hi.shift) - 1) == 0
                && lo.mask >> hi.shift == 0
        });
        terms.push(match partner {
            Some(j) => {
                used[j] = true;
                FragmentTerm {
                    shift: a.shift.max(pieces[j].shift),
                    rotate: true,
                    mask: a.mask | pieces[j].mask,
                }
            }
            None => FragmentTerm {
                shift: a.shift,
                rotate: false,
                mask: a.mask,
            },
        });
    }
    terms
}

/// Logic instructions per word of a piece table: one mask per term, one shift per distinct shifted or rotated word
/// (shared between registers).
pub fn fragment_logic_ops(outputs: &[Vec<BitPiece>]) -> usize {
    let terms: Vec<FragmentTerm> = outputs.iter().flat_map(|r| fragment_terms(r)).collect();
    let mut shifts: Vec<(i32, bool)> = terms
        .iter()
        .filter(|t| t.shift != 0)
        .map(|t| (t.shift, t.rotate))
        .collect();
    shifts.sort_unstable();
    shifts.dedup();
    terms.len() + shifts.len()
}

/// NVIDIA packed sequence: each operand register is the OR of its shifted (or rotated), masked terms of the word
/// (the element bits land in bf16/f16 halves as element * 2^(bias - operand bias)), then one packed multiply by
/// its row's repacked scale.
fn fragment_bits<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    f: &FragmentPlan,
    word: Value<'c, 'b>,
    scale: Value<'c, 'b>,
) -> Result<Value<'c, 'b>, IrError> {
    let i32t = e.int(32);
    let xt = dtype(e, p.x);
    let v2 = e.vector(2, xt);
    let mut regs = vec![];
    for (r, pieces) in f.outputs.iter().enumerate() {
        let mut acc = None;
        for term in fragment_terms(pieces) {
            let shl = |s: i32| -> Result<Value<'c, 'b>, IrError> {
                let c = e.i32c(i64::from(s))?;
                e.shli(word, c)
            };
            let shr = |s: i32| -> Result<Value<'c, 'b>, IrError> {
                let c = e.i32c(i64::from(s))?;
                e.shrui(word, c)
            };
            // LLVM folds the rotate's OR of two shifts into one funnel shift (`shf.l.wrap`).
            let moved = match term.shift {
                0 => word,
                s if term.rotate => e.ori(shl(s)?, shr(32 - s)?)?,
                s if s > 0 => shl(s)?,
                s => shr(-s)?,
            };
            let m = e.const_int(i64::from(term.mask as i32), i32t)?;
            let v = e.andi(moved, m)?;
            acc = Some(match acc {
                None => v,
                Some(a) => e.ori(a, v)?,
            });
        }
        let bits =
            acc.ok_or_else(|| ir::emit::build_err("nibble_dequant", "register without pieces"))?;
        let v1 = e.broadcast(bits, e.vector(1, i32t))?;
        let raw = e.vbitcast(v1, v2)?;
        let h = (r % 2) as i64;
        let s2 = e.shuffle(scale, scale, &[h, h], xt)?;
        regs.push(e.mulf(raw, s2)?);
    }
    let q0 = e.shuffle(regs[0], regs[1], &[0, 1, 2, 3], xt)?;
    let q1 = e.shuffle(regs[2], regs[3], &[0, 1, 2, 3], xt)?;
    e.shuffle(q0, q1, &[0, 1, 2, 3, 4, 5, 6, 7], xt)
}

/// The packed sequence for one word: 8 elements, scaled and packed into the operand type.
pub fn bit_trick<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    word: Value<'c, 'b>,
    scale: Value<'c, 'b>,
) -> Result<Value<'c, 'b>, IrError> {
    if let Some(f) = &p.fragment {
        return fragment_bits(e, p, f, word, scale);
    }
    let i32t = e.int(32);
    let f32t = e.f32();
    let xt = dtype(e, p.x);
    let mask = e.const_int(i64::from(p.dequant.mask as i32), i32t)?;
    let lo = e.andi(word, mask)?;
    let other = second_half(e, p, word)?;
    let hi = e.andi(other, mask)?;
    let v2f = e.vector(2, f32t);
    let s2 = scale;
    let bf16_out = p.dequant.operand == crate::spec::DType::Bf16;
    // Round-to-nearest-even of finite f32 to bf16 on the bit pattern: add 0x7fff plus the lowest kept bit, keep the
    // high half. Products here are never NaN or infinite (scales are validated at repack time), so the NaN handling
    // of a general conversion is not needed: two instructions per element (v_bfe_u32, v_add3_u32).
    let round_bf16 = |v: Value<'c, 'b>| -> Result<Value<'c, 'b>, IrError> {
        let v2i = e.vector(2, i32t);
        let bits = e.vbitcast(v, v2i)?;
        let sixteen = e.splat_i32(2, 16)?;
        let one = e.splat_i32(2, 1)?;
        let lsb = e.shrui(bits, sixteen)?;
        let lsb = e.andi(lsb, one)?;
        let bias = e.splat_i32(2, 0x7fff)?;
        let r = e.addi(bits, bias)?;
        let r = e.addi(r, lsb)?;
        e.vbitcast(r, v2f)
    };
    let pack = |prod: Value<'c, 'b>| -> Result<Value<'c, 'b>, IrError> {
        if p.dequant.xf32 {
            Ok(prod)
        } else if p.dequant.exact_pack || bf16_out {
            // Exact products have a zero low half; others were rounded above: keep the high halves (a byte permute).
            let prod = if p.dequant.exact_pack {
                prod
            } else {
                round_bf16(prod)?
            };
            let halves = e.vbitcast(prod, e.vector(4, xt))?;
            e.shuffle(halves, halves, &[1, 3], xt)
        } else {
            e.truncf(prod, e.vector(2, xt))
        }
    };
    let mut pairs = vec![];
    for src in [lo, hi] {
        match p.dequant.convert {
            Bf8Convert::Hardware => {
                let v1 = e.broadcast(src, e.vector(1, i32t))?;
                let bf8 = e.vbitcast(v1, e.vector(4, Type::float8_e5m2fnuz(e.ctx)))?;
                for half in 0..2 {
                    let pf = e.op1(
                        "amdgpu.ext_packed_fp8",
                        &[bf8],
                        v2f,
                        &[("index", IntegerAttribute::new(i32t, half).into())],
                    )?;
                    let prod = e.mulf(pf, s2)?;
                    pairs.push(pack(prod)?);
                }
            }
            Bf8Convert::Direct => {
                return Err(ir::emit::build_err(
                    "nibble_dequant",
                    "the direct route needs a fragment plan",
                ))
            }
            Bf8Convert::ViaF16 => {
                // A bf8 byte is the high byte of an f16: `(w << 8) & 0xFF00FF00` holds bytes 0 and 2 as two f16,
                // `w & 0xFF00FF00` bytes 1 and 3.
                let eight = e.i32c(8)?;
                let hmask = e.const_int(i64::from(0xFF00_FF00u32 as i32), i32t)?;
                let sh = e.shli(src, eight)?;
                let even = e.andi(sh, hmask)?;
                let odd = e.andi(src, hmask)?;
                let f16x2 = e.vector(2, Type::float16(e.ctx));
                let mut widened = vec![];
                for v in [even, odd] {
                    let v1 = e.broadcast(v, e.vector(1, i32t))?;
                    let h = e.vbitcast(v1, f16x2)?;
                    let f = e.extf(h, v2f)?;
                    widened.push(e.mulf(f, s2)?);
                }
                // (b0, b2) and (b1, b3) back into element order: (b0, b1), (b2, b3).
                let (p02, p13) = (widened[0], widened[1]);
                if p.dequant.exact_pack || bf16_out {
                    let (p02, p13) = if p.dequant.exact_pack {
                        (p02, p13)
                    } else {
                        (round_bf16(p02)?, round_bf16(p13)?)
                    };
                    let a = e.vbitcast(p02, e.vector(4, xt))?;
                    let b = e.vbitcast(p13, e.vector(4, xt))?;
                    pairs.push(e.shuffle(a, b, &[1, 5], xt)?);
                    pairs.push(e.shuffle(a, b, &[3, 7], xt)?);
                } else {
                    let first = e.shuffle(p02, p13, &[0, 2], f32t)?;
                    let second = e.shuffle(p02, p13, &[1, 3], f32t)?;
                    pairs.push(e.truncf(first, e.vector(2, xt))?);
                    pairs.push(e.truncf(second, e.vector(2, xt))?);
                }
            }
        }
    }
    let ot = out_elem(e, p);
    let q0 = e.shuffle(pairs[0], pairs[1], &[0, 1, 2, 3], ot)?;
    let q1 = e.shuffle(pairs[2], pairs[3], &[0, 1, 2, 3], ot)?;
    e.shuffle(q0, q1, &[0, 1, 2, 3, 4, 5, 6, 7], ot)
}

/// The dequant pass: replaces every call of `@nibble_dequant` with `bit_trick` and erases the reference function.
/// Returns the number of calls rewritten.
pub fn run(module: &Module<'static>, p: &Plan) -> Result<usize, IrError> {
    let ctx = ir::context();
    let callee = FlatSymbolRefAttribute::new(ctx, DEQUANT_FN);
    let mut calls = vec![];
    let mut funcs = vec![];
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        let name = op.name();
        let name = name.as_string_ref().as_str().unwrap_or("");
        if name == "func.call" && op.attribute("callee").is_ok_and(|a| a == callee.into()) {
            calls.push(op.to_raw());
        } else if name == "func.func"
            && op
                .attribute("sym_name")
                .is_ok_and(|a| a == ir::context_string(DEQUANT_FN))
        {
            funcs.push(op.to_raw());
        }
        WalkResult::Advance
    });
    let rewriter = IrRewriter::new(ctx);
    let rewriter = rewriter.as_rewriter_base();
    for raw in &calls {
        // SAFETY: the walk collected live ops of `module`; each call is erased only after it has been visited here.
        let call: OperationRef<'static, '_> = unsafe { OperationRef::from_raw(*raw) };
        let e = Emitter::before(ctx, call)
            .ok_or_else(|| ir::emit::build_err("func.call", "detached call"))?;
        let word = call
            .operand(0)
            .map_err(|err| ir::emit::build_err("func.call", err))?;
        let scale = call
            .operand(1)
            .map_err(|err| ir::emit::build_err("func.call", err))?;
        if word.r#type() != e.int(32) {
            return Err(ir::emit::build_err("func.call", "dequant word must be i32"));
        }
        let v = bit_trick(&e, p, word, scale)?;
        rewriter.replace_op_with_values(call, &[v]);
    }
    for raw in &funcs {
        // SAFETY: as above; no call to the function remains.
        let f: OperationRef<'static, '_> = unsafe { OperationRef::from_raw(*raw) };
        rewriter.erase_op(f);
    }
    if !module.as_operation().verify() {
        return Err(IrError::Verify { stage: "dequant" });
    }
    Ok(calls.len())
}

/// Name of the single-call function `build_probe` emits.
pub const PROBE_FN: &str = "nibble_dequant_probe";

/// A module with the reference function and `func.func @nibble_dequant_probe(%word: i32, %scale: vector<2xf32>)`
/// that calls it once: the unit the dequant pass is tested on (before and after `run`, through the interpreter).
pub fn build_probe(p: &Plan) -> Result<Module<'static>, IrError> {
    let ctx = ir::context();
    let loc = melior::ir::Location::new(ctx, "probe", 0, 0);
    let module = Module::new(loc);
    let top = Emitter::new(ctx, loc, ir::emit::detach(module.body()));
    build_reference_fn(&top, p)?;
    let i32t = top.int(32);
    let s2 = scale_type(&top, p);
    let out = top.vector(8, out_elem(&top, p));
    let region = Region::new();
    let block = ir::emit::detach(region.append_block(Block::new(&[(i32t, loc), (s2, loc)])));
    let b = top.at(block);
    let args: Vec<Value> = (0..2)
        .map(|i| block.argument(i).map(Value::from))
        .collect::<Result<_, _>>()
        .map_err(|err| ir::emit::build_err("func.func", err))?;
    let r = b.call(DEQUANT_FN, &args, &[out])?;
    b.op("func.return", &r, &[], &[])?;
    let func = OperationBuilder::new("func.func", loc)
        .add_attributes(&[
            (top.ident("sym_name"), top.string(PROBE_FN)),
            (
                top.ident("function_type"),
                top.func_type(&[i32t, s2], &[out]),
            ),
        ])
        .add_regions([region])
        .build()
        .map_err(|err| ir::emit::build_err("func.func", err))?;
    top.append(func);
    if !module.as_operation().verify() {
        return Err(IrError::Verify {
            stage: "dequant probe",
        });
    }
    Ok(module)
}
