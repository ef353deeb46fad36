//! linalg stage: the kernel's meaning as one readable function on tensors, in the checkpoint's own types.
//!
//! `y[M, N] = cast(x[M, K] * dequant(W[N, K], scale[N, K/g])^T * tensor_scale + bias[N])`, with the dequantization a
//! `linalg.generic` over MLIR's MX types where they exist (`f4E2M1FN` elements, `f8E8M0FNU`/`f8E4M3FN` scales,
//! `arith.scaling_extf` for e8m0), f32 accumulation, and the epilogue as a last `linalg.generic`. This module is the
//! semantic reference reviewed in snapshots; the GPU stage is built from the plan, not lowered from this module.

use melior::ir::{
    attribute::{ArrayAttribute, DenseElementsAttribute, DenseI32ArrayAttribute},
    operation::{OperationBuilder, OperationLike},
    r#type::{FunctionType, RankedTensorType},
    Attribute, Block, BlockLike, Location, Module, Region, RegionLike, Type, Value, ValueLike,
};

use crate::ir::{self, Emitter, IrError};
use crate::kernel::dtype;
use crate::plan::Plan;
use crate::spec::ScaleType;

fn tensor<'c>(dims: &[i64], elem: Type<'c>) -> Type<'c> {
    let dims: Vec<u64> = dims.iter().map(|d| *d as u64).collect();
    RankedTensorType::new(&dims, elem, None).into()
}

/// `?` in a tensor shape.
const DYN: i64 = i64::MIN;

/// Element type of the stored weight: `f4E2M1FN` for e2m1 with bias 1, else raw 4-bit codes decoded by table.
fn weight_elem<'c>(e: &Emitter<'c, '_>, p: &Plan) -> (Type<'c>, bool) {
    let el = &p.format.element;
    if el.exp_bits == 2 && el.man_bits == 1 && el.bias == 1 {
        (Type::float4_e2m1fn(e.ctx), true)
    } else {
        (e.int(4), false)
    }
}

fn scale_elem<'c>(e: &Emitter<'c, '_>, s: ScaleType) -> Type<'c> {
    match s {
        ScaleType::E8m0 => Type::float8_e8m0fnu(e.ctx),
        ScaleType::E4m3 => Type::float8_e4m3fn(e.ctx),
        ScaleType::F16 => Type::float16(e.ctx),
        ScaleType::Bf16 => Type::bfloat16(e.ctx),
        ScaleType::F32 => Type::float32(e.ctx),
    }
}

/// `linalg.generic` with the given operands, maps (as affine-map attribute text) and iterators; `body` receives the
/// block's scalar arguments and returns the values to yield.
#[allow(clippy::too_many_arguments)]
fn generic<'c, 'b, F>(
    e: &Emitter<'c, 'b>,
    ins: &[Value<'c, 'b>],
    outs: &[Value<'c, 'b>],
    maps: &[&str],
    iterators: &[&str],
    result: Type<'c>,
    body: F,
) -> Result<Value<'c, 'b>, IrError>
where
    F: FnOnce(&Emitter<'c, 'b>, Vec<Value<'c, 'b>>) -> Result<Vec<Value<'c, 'b>>, IrError>,
{
    let elem_of = |v: &Value<'c, 'b>| -> Result<Type<'c>, IrError> {
        let t = RankedTensorType::try_from(v.r#type())
            .map_err(|err| ir::emit::build_err("linalg.generic", err))?;
        Ok(melior::ir::r#type::ShapedTypeLike::element(&t))
    };
    let mut args = vec![];
    for v in ins.iter().chain(outs) {
        args.push((elem_of(v)?, e.loc));
    }
    let region = Region::new();
    let block = ir::emit::detach(region.append_block(Block::new(&args)));
    let be = e.at(block);
    let vals: Vec<Value> = (0..args.len())
        .map(|i| block.argument(i).map(Value::from))
        .collect::<Result<_, _>>()
        .map_err(|err| ir::emit::build_err("linalg.generic", err))?;
    let y = body(&be, vals)?;
    be.op("linalg.yield", &y, &[], &[])?;
    let maps: Vec<Attribute> = maps
        .iter()
        .map(|m| e.attr(&format!("affine_map<{m}>")))
        .collect::<Result<_, _>>()?;
    let iters: Vec<Attribute> = iterators
        .iter()
        .map(|i| e.attr(&format!("#linalg.iterator_type<{i}>")))
        .collect::<Result<_, _>>()?;
    let mut operands = ins.to_vec();
    operands.extend_from_slice(outs);
    let op = OperationBuilder::new("linalg.generic", e.loc)
        .add_operands(&operands)
        .add_results(&[result])
        .add_attributes(&[
            (
                e.ident("indexing_maps"),
                ArrayAttribute::new(e.ctx, &maps).into(),
            ),
            (
                e.ident("iterator_types"),
                ArrayAttribute::new(e.ctx, &iters).into(),
            ),
            (
                e.ident("operandSegmentSizes"),
                DenseI32ArrayAttribute::new(e.ctx, &[ins.len() as i32, outs.len() as i32]).into(),
            ),
        ])
        .add_regions([region])
        .build()
        .map_err(|err| ir::emit::build_err("linalg.generic", err))?;
    Ok(e.append(op)[0])
}

pub fn build(p: &Plan) -> Result<Module<'static>, IrError> {
    let ctx = ir::context();
    let loc = Location::new(ctx, &format!("{}.nib", p.kernel), 0, 0);
    let module = Module::new(loc);
    let top = Emitter::new(ctx, loc, ir::emit::detach(module.body()));
    let (n, k) = (i64::from(p.n), i64::from(p.k));
    let groups = k / i64::from(p.format.group);
    let xt = dtype(&top, p.x);
    let yt = dtype(&top, p.y);
    let f32t = top.f32();
    let (wt, native) = weight_elem(&top, p);
    let st = scale_elem(&top, p.format.scale);
    let mut inputs = vec![
        tensor(&[DYN, k], xt),
        tensor(&[n, k], wt),
        tensor(&[n, groups], st),
    ];
    if let Some(b) = p.bias {
        inputs.push(tensor(&[n], dtype(&top, b)));
    }
    if p.format.tensor_scale {
        inputs.push(f32t);
    }
    let out_ty = tensor(&[DYN, n], yt);
    let region = Region::new();
    let block_args: Vec<(Type, Location)> = inputs.iter().map(|t| (*t, loc)).collect();
    let entry = ir::emit::detach(region.append_block(Block::new(&block_args)));
    let e = top.at(entry);
    let arg = |i: usize| {
        entry
            .argument(i)
            .map(Value::from)
            .map_err(|err| ir::emit::build_err("func.func", err))
    };
    let x = arg(0)?;
    let w = arg(1)?;
    let s = arg(2)?;
    let mut next = 3;
    let bias = if p.bias.is_some() {
        next += 1;
        Some(arg(next - 1)?)
    } else {
        None
    };
    let ts = if p.format.tensor_scale {
        Some(arg(next)?)
    } else {
        None
    };

    // Dequantization: one generic over [N, K], reading the scale of group k / g.
    let opnd = dtype(&e, p.x);
    let wd_ty = tensor(&[n, k], opnd);
    let wd_init = e.op1("tensor.empty", &[], wd_ty, &[])?;
    let g = p.format.group;
    let scale_kind = p.format.scale;
    let elem = p.format.element.clone();
    let wd = generic(
        &e,
        &[w, s],
        &[wd_init],
        &[
            "(n, k) -> (n, k)",
            &format!("(n, k) -> (n, k floordiv {g})"),
            "(n, k) -> (n, k)",
        ],
        &["parallel", "parallel"],
        wd_ty,
        |b, v| {
            let f = if native && scale_kind == ScaleType::E8m0 {
                b.op1("arith.scaling_extf", &[v[0], v[1]], f32t, &[])?
            } else {
                let ev = if native {
                    b.extf(v[0], f32t)?
                } else {
                    // Other minifloats: the exact value of each code, from the element definition.
                    let table: Vec<f32> = (0..16u8).map(|c| elem.value(c) as f32).collect();
                    let tt = tensor(&[16], f32t);
                    let tab = b.op1(
                        "arith.constant",
                        &[],
                        tt,
                        &[(
                            "value",
                            DenseElementsAttribute::f32_values(tt, &table).into(),
                        )],
                    )?;
                    let code = b.extui(v[0], b.int(32))?;
                    let code = b.index_cast(code, b.index())?;
                    b.op1("tensor.extract", &[tab, code], f32t, &[])?
                };
                let sv = if scale_kind == ScaleType::F32 {
                    v[1]
                } else {
                    b.extf(v[1], f32t)?
                };
                b.mulf(ev, sv)?
            };
            Ok(vec![b.truncf(f, opnd)?])
        },
    )?;

    // f32 accumulation over K: acc[m, n] += x[m, k] * wd[n, k].
    let c0 = e.idx(0)?;
    let m = e.op1("tensor.dim", &[x, c0], e.index(), &[])?;
    let acc_ty = tensor(&[DYN, n], f32t);
    let acc_init = e.op1("tensor.empty", &[m], acc_ty, &[])?;
    let zero = generic(
        &e,
        &[],
        &[acc_init],
        &["(m, n) -> (m, n)"],
        &["parallel", "parallel"],
        acc_ty,
        |b, _| Ok(vec![b.f32c(0.0)?]),
    )?;
    let acc = generic(
        &e,
        &[x, wd],
        &[zero],
        &[
            "(m, n, k) -> (m, k)",
            "(m, n, k) -> (n, k)",
            "(m, n, k) -> (m, n)",
        ],
        &["parallel", "parallel", "reduction"],
        acc_ty,
        |b, v| {
            let a = b.extf(v[0], f32t)?;
            let w = b.extf(v[1], f32t)?;
            let prod = b.mulf(a, w)?;
            Ok(vec![b.addf(v[2], prod)?])
        },
    )?;

    // Epilogue: tensor scale, bias, rounding to the output type.
    let y_init = e.op1("tensor.empty", &[m], out_ty, &[])?;
    let mut ins = vec![acc];
    let mut maps = vec!["(m, n) -> (m, n)".to_string()];
    if let Some(b) = bias {
        ins.push(b);
        maps.push("(m, n) -> (n)".into());
    }
    maps.push("(m, n) -> (m, n)".into());
    let maps_ref: Vec<&str> = maps.iter().map(String::as_str).collect();
    let has_bias = bias.is_some();
    let y = generic(
        &e,
        &ins,
        &[y_init],
        &maps_ref,
        &["parallel", "parallel"],
        out_ty,
        |b, v| {
            let mut r = v[0];
            if let Some(ts) = ts {
                r = b.mulf(r, ts)?;
            }
            if has_bias {
                let bv = b.extf(v[1], f32t)?;
                r = b.addf(r, bv)?;
            }
            Ok(vec![b.truncf(r, yt)?])
        },
    )?;
    e.op("func.return", &[y], &[], &[])?;

    let func = OperationBuilder::new("func.func", loc)
        .add_attributes(&[
            (top.ident("sym_name"), top.string(&p.kernel)),
            (
                top.ident("function_type"),
                melior::ir::attribute::TypeAttribute::new(
                    FunctionType::new(ctx, &inputs, &[out_ty]).into(),
                )
                .into(),
            ),
        ])
        .add_regions([region])
        .build()
        .map_err(|err| ir::emit::build_err("func.func", err))?;
    top.append(func);
    if !module.as_operation().verify() {
        return Err(IrError::Verify { stage: "linalg" });
    }
    Ok(module)
}
