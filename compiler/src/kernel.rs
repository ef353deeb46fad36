//! GPU stage: the plan becomes one `gpu.func` that tiles the GEMM over workgroups and waves, stages activations
//! through LDS with a `stages`-deep ring, streams weights from global memory into registers one K iteration ahead,
//! and multiplies on `amdgpu.mfma`. Dequantization is a call to `@nibble_dequant`, whose body states the reference
//! semantics; the dequant pass (`dequant.rs`) replaces each call with the packed bit-trick sequence.

use melior::ir::{
    attribute::{DenseI32ArrayAttribute, IntegerAttribute},
    operation::{OperationBuilder, OperationLike, OperationMutLike},
    r#type::MemRefType,
    Block, BlockLike, Location, Module, Region, RegionLike, Type, Value, ValueLike,
};

use crate::ir::{
    emit::{Cmp, Unroll},
    Emitter, IrError,
};
use crate::plan::Plan;
use crate::spec::{DType, MmaAtom};
use crate::{dequant, ir};

/// Name of the gpu.module that holds the kernel.
pub const GPU_MODULE: &str = "nibble";
/// Symbol of the dequantization function the kernel calls.
pub const DEQUANT_FN: &str = "nibble_dequant";

pub fn dtype<'c>(e: &Emitter<'c, '_>, d: DType) -> Type<'c> {
    match d {
        DType::Bf16 => Type::bfloat16(e.ctx),
        DType::F16 => Type::float16(e.ctx),
    }
}

/// Builds `module { gpu.module @nibble { func.func private @nibble_dequant, gpu.func @<kernel> } }`.
pub fn build(plan: &Plan) -> Result<Module<'static>, IrError> {
    let ctx = ir::context();
    let loc = Location::new(ctx, &format!("{}.nib", plan.kernel), 0, 0);
    let module = Module::new(loc);
    let top = Emitter::new(ctx, loc, ir::emit::detach(module.body()));

    let gpu_region = Region::new();
    let gpu_block = ir::emit::detach(gpu_region.append_block(Block::new(&[])));
    let inner = top.at(gpu_block);
    dequant::build_reference_fn(&inner, plan)?;
    source_hash_global(&inner, plan)?;
    if plan.fragment.is_some() {
        crate::kernel_nv::build_kernel(&inner, plan)?;
    } else {
        build_kernel(&inner, plan)?;
    }

    let gpu_module = OperationBuilder::new("gpu.module", loc)
        .add_attributes(&[(top.ident("sym_name"), top.string(GPU_MODULE))])
        .add_regions([gpu_region])
        .build()
        .map_err(|e| ir::emit::build_err("gpu.module", e))?;
    top.append(gpu_module);
    let mut module = module;
    module
        .as_operation_mut()
        .set_attribute("gpu.container_module", melior::ir::Attribute::unit(ctx));
    if !module.as_operation().verify() {
        return Err(IrError::Verify { stage: "gpu" });
    }
    Ok(module)
}

/// Symbol of the constant that carries the kernel's source hash into the code object, so a runtime can tell that a
/// code object and a manifest belong together.
pub use nibble_runtime::bundle::SOURCE_HASH_SYMBOL;

fn source_hash_global<'c, 'b>(e: &Emitter<'c, 'b>, p: &Plan) -> Result<(), IrError> {
    let ctx = e.ctx;
    let bytes = p.source_hash.len();
    let ty = Type::parse(ctx, &format!("!llvm.array<{bytes} x i8>"))
        .ok_or_else(|| ir::emit::build_err("llvm.mlir.global", "array type"))?;
    let i32t = e.int(32);
    let i64t = e.int(64);
    let op = OperationBuilder::new("llvm.mlir.global", e.loc)
        .add_attributes(&[
            (e.ident("addr_space"), IntegerAttribute::new(i32t, 0).into()),
            (e.ident("constant"), melior::ir::Attribute::unit(ctx)),
            (
                e.ident("global_type"),
                melior::ir::attribute::TypeAttribute::new(ty).into(),
            ),
            (e.ident("linkage"), e.attr("#llvm.linkage<external>")?),
            (e.ident("sym_name"), e.string(SOURCE_HASH_SYMBOL)),
            (
                e.ident("unnamed_addr"),
                IntegerAttribute::new(i64t, 0).into(),
            ),
            (e.ident("value"), e.string(&p.source_hash)),
            (
                e.ident("visibility_"),
                IntegerAttribute::new(i64t, 0).into(),
            ),
        ])
        .add_regions([Region::new()])
        .build()
        .map_err(|err| ir::emit::build_err("llvm.mlir.global", err))?;
    e.append(op);
    Ok(())
}

/// The kernel's arguments inside its body, in manifest order.
pub(crate) struct Args<'c, 'b> {
    pub x: Value<'c, 'b>,
    pub w: Value<'c, 'b>,
    pub s: Value<'c, 'b>,
    pub bias: Option<Value<'c, 'b>>,
    pub y: Value<'c, 'b>,
    /// Split-K partial sums and per-tile arrival counters (only when `split_k > 1`).
    pub split: Option<(Value<'c, 'b>, Value<'c, 'b>)>,
    pub m: Value<'c, 'b>,
    pub ts: Option<Value<'c, 'b>>,
    pub lds: Value<'c, 'b>,
}

/// Builds `gpu.func @<symbol>` with the plan's arguments (x, w, scales of `scale_elem` x `scale_len`, bias, y,
/// split-K workspace and counters, m, tensor scale, then the workgroup buffer of `lds_elems` activation elements)
/// and lets `body` fill its entry block. Shared by the AMD and NVIDIA builders, so the signature the manifest
/// describes is built in one place.
pub(crate) fn build_gpu_func<'c, 'b, F>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    scale_elem: Type<'c>,
    scale_len: u64,
    lds_elems: u64,
    body: F,
) -> Result<(), IrError>
where
    F: FnOnce(&Emitter<'c, 'b>, &Args<'c, 'b>) -> Result<(), IrError>,
{
    let ctx = e.ctx;
    let xt = dtype(e, p.x);
    let yt = dtype(e, p.y);
    let i32t = e.int(32);
    let f32t = e.f32();
    let memref = |elem: Type<'c>, n: u64| -> Type<'c> {
        MemRefType::new(elem, &[n as i64], None, None).into()
    };
    let (n, k) = (u64::from(p.n), u64::from(p.k));
    let m_max = u64::from(p.m_max);
    let mut inputs = vec![
        memref(xt, m_max * k),
        memref(i32t, n * k / 8),
        memref(scale_elem, scale_len),
    ];
    if let Some(b) = p.bias {
        inputs.push(memref(dtype(e, b), n));
    }
    inputs.push(memref(yt, m_max * n));
    if p.split_k > 1 {
        let m_tiles = m_max.div_ceil(u64::from(p.tiling.tile_m));
        inputs.push(memref(
            f32t,
            u64::from(p.split_k) * m_tiles * u64::from(p.tiling.tile_m) * n,
        ));
        inputs.push(memref(i32t, n / u64::from(p.tiling.tile_n) * m_tiles));
    }
    inputs.push(i32t);
    if p.format.tensor_scale {
        inputs.push(f32t);
    }
    let lds_space = e.attr("#gpu.address_space<workgroup>")?;
    // The xf32 route stages activations as f32 (see `DequantPlan::xf32`).
    let lds_elem = if p.dequant.xf32 { f32t } else { xt };
    let lds_ty: Type = MemRefType::new(lds_elem, &[lds_elems as i64], None, Some(lds_space)).into();
    let mut block_args: Vec<(Type, Location)> = inputs.iter().map(|t| (*t, e.loc)).collect();
    // Dynamic shared memory (NVIDIA, above 48 KiB) is a view of the block's dynamic buffer, not an attribution.
    if !p.dynamic_lds {
        block_args.push((lds_ty, e.loc));
    }
    let region = Region::new();
    let entry = ir::emit::detach(region.append_block(Block::new(&block_args)));
    let mut it = (0..block_args.len()).map(|i| {
        entry
            .argument(i)
            .map(Value::from)
            .map_err(|err| ir::emit::build_err("gpu.func", err))
    });
    let mut next = || {
        it.next()
            .unwrap_or_else(|| Err(ir::emit::build_err("gpu.func", "missing argument")))
    };
    let x = next()?;
    let w = next()?;
    let s = next()?;
    let bias = if p.bias.is_some() {
        Some(next()?)
    } else {
        None
    };
    let y = next()?;
    let split = if p.split_k > 1 {
        Some((next()?, next()?))
    } else {
        None
    };
    let m = next()?;
    let ts = if p.format.tensor_scale {
        Some(next()?)
    } else {
        None
    };
    let lds = if p.dynamic_lds {
        let b = e.at(entry);
        // i64::MIN is MLIR's dynamic extent (`memref<?xi8>`).
        let bytes_ty: Type = MemRefType::new(e.int(8), &[i64::MIN], None, Some(lds_space)).into();
        let dynamic = b.op1("gpu.dynamic_shared_memory", &[], bytes_ty, &[])?;
        let zero = b.idx(0)?;
        b.op1("memref.view", &[dynamic, zero], lds_ty, &[])?
    } else {
        next()?
    };
    let args = Args {
        x,
        w,
        s,
        bias,
        y,
        split,
        m,
        ts,
        lds,
    };
    body(&e.at(entry), &args)?;

    let i64t = e.int(64);
    let mut attrs = vec![
        (e.ident("function_type"), e.func_type(&inputs, &[])),
        (e.ident("sym_name"), e.string(&p.symbol)),
        (e.ident("gpu.kernel"), melior::ir::Attribute::unit(ctx)),
        (
            e.ident("known_block_size"),
            DenseI32ArrayAttribute::new(ctx, &[p.threads as i32, 1, 1]).into(),
        ),
        (
            e.ident("workgroup_attributions"),
            IntegerAttribute::new(i64t, i64::from(!p.dynamic_lds)).into(),
        ),
    ];
    // PTX `.maxnreg`: ptxas's register budget for the kernel (see `plan::nv_max_regs`).
    if let Some(r) = p.max_regs {
        attrs.push((
            e.ident("nvvm.maxnreg"),
            IntegerAttribute::new(i32t, i64::from(r)).into(),
        ));
    }
    let func = OperationBuilder::new("gpu.func", e.loc)
        .add_attributes(&attrs)
        .add_regions([region])
        .build()
        .map_err(|err| ir::emit::build_err("gpu.func", err))?;
    e.append(func);
    Ok(())
}

fn build_kernel<'c, 'b>(e: &Emitter<'c, 'b>, p: &Plan) -> Result<(), IrError> {
    build_gpu_func(
        e,
        p,
        e.f32(),
        u64::from(p.n) * u64::from(p.k / p.format.group),
        u64::from(p.lds_elems),
        |e, a| body(e, p, a),
    )
}

/// Per-thread constants of the activation staging: which 16-byte vectors of the x tile this thread moves.
struct XStaging<'c, 'b> {
    /// Element offset in x of each vector for K iteration 0.
    global: Vec<Value<'c, 'b>>,
    /// Element offset in an LDS stage (xf32: of the two swizzled 4-element f32 chunks the vector becomes).
    local: Vec<[Value<'c, 'b>; 2]>,
    /// Whether the thread has a vector in this slot (only on a ragged last slot).
    valid: Vec<Option<Value<'c, 'b>>>,
}

fn body<'c, 'b>(e: &Emitter<'c, 'b>, p: &Plan, a: &Args<'c, 'b>) -> Result<(), IrError> {
    let t = &p.tiling;
    let atom = p.atom;
    let (am, an, ak) = (atom.m(), atom.n(), atom.k());
    let xt = dtype(e, p.x);
    let yt = dtype(e, p.y);
    let i32t = e.int(32);
    let i64t = e.int(64);
    let f32t = e.f32();
    let c = |v: u32| e.idx(i64::from(v));

    let tid = e.thread_id('x')?;
    let bx = e.block_id('x')?;
    let by = e.block_id('y')?;
    let wave = e.divui(tid, c(64)?)?;
    let lane = e.remui(tid, c(64)?)?;
    let KWave { kw, wave } = k_wave(e, p, wave)?;
    let wm = e.divui(wave, c(t.waves_n)?)?;
    let wn = e.remui(wave, c(t.waves_n)?)?;
    let lane_m = e.remui(lane, c(am)?)?;
    let lane_q = e.divui(lane, c(am)?)?;

    // Bounds-checked views: rows at or past M read as zero and their stores are dropped, so M tails need no branches.
    let m_idx = e.index_cast(a.m, e.index())?;
    let xbytes = e.muli(m_idx, c(p.k * 2)?)?;
    let ybytes = e.muli(m_idx, c(p.n * 2)?)?;
    let ybytes = e.index_cast(ybytes, i64t)?;
    let yb = e.fat_buffer(a.y, ybytes)?;
    let wbytes = c(p.n * (p.k / 2))?;
    let sbytes = c(p.n * (p.k / p.format.group) * 4)?;
    // Each K iteration reads through windows whose base advances with the iteration: the advance is uniform and
    // lands in the buffer descriptor (scalar registers), so the per-lane offsets stay fixed across the loop.
    // `valid` is the byte count of `total` left after `offset` elements of `elem_bytes`; callers keep the offset
    // inside the buffer (a select to floor it at zero would be selected as a vector op and force a waterfall loop
    // around every load).
    let window = |e: &Emitter<'c, 'b>,
                  mem: Value<'c, 'b>,
                  offset: Value<'c, 'b>,
                  elem_bytes: u32,
                  total: Value<'c, 'b>|
     -> Result<Value<'c, 'b>, IrError> {
        let off_bytes = e.muli(offset, e.idx(i64::from(elem_bytes))?)?;
        let left = e.subi(total, off_bytes)?;
        let left = e.index_cast(left, i64t)?;
        e.window(mem, offset, left)
    };

    let m0 = e.muli(by, c(t.tile_m)?)?;
    let n0 = e.muli(bx, c(t.tile_n)?)?;

    // Activation staging map: vector v of the tile (tile_m rows x tile_k/8 vectors) goes to thread v % threads.
    let vecs_per_row = t.tile_k / 8;
    let total_vecs = t.tile_m * vecs_per_row;
    let mut xs = XStaging {
        global: vec![],
        local: vec![],
        valid: vec![],
    };
    for v in 0..p.x_vecs_per_thread {
        let vid = e.addi(tid, c(v * p.threads)?)?;
        let row = e.divui(vid, c(vecs_per_row)?)?;
        let col = e.remui(vid, c(vecs_per_row)?)?;
        let col8 = e.muli(col, c(8)?)?;
        let grow = e.addi(m0, row)?;
        let g = e.muli(grow, c(p.k)?)?;
        xs.global.push(e.addi(g, col8)?);
        let l = e.muli(row, c(p.lds_row)?)?;
        if p.dequant.xf32 {
            let chunk = e.muli(col, c(2)?)?;
            let lo = swizzled_chunk(e, row, chunk)?;
            let hi = swizzled_chunk(e, row, e.addi(chunk, c(1)?)?)?;
            xs.local.push([
                e.addi(l, e.muli(lo, c(4)?)?)?,
                e.addi(l, e.muli(hi, c(4)?)?)?,
            ]);
        } else if p.x_swizzle {
            let phys = x_chunk(e, row, col)?;
            let off = e.addi(l, e.muli(phys, c(8)?)?)?;
            xs.local.push([off, off]);
        } else {
            let off = e.addi(l, col8)?;
            xs.local.push([off, off]);
        }
        let ragged = (v + 1) * p.threads > total_vecs;
        xs.valid.push(if ragged {
            Some(e.cmpi(Cmp::Ult, vid, c(total_vecs)?)?)
        } else {
            None
        });
    }
    let xvec = e.vector(8, xt);
    let load_x = |e: &Emitter<'c, 'b>, kt: Value<'c, 'b>| -> Result<Vec<Value<'c, 'b>>, IrError> {
        let koff = e.muli(kt, c(t.tile_k)?)?;
        let xb = window(e, a.x, koff, 2, xbytes)?;
        xs.global.iter().map(|g| e.vload(xb, *g, xvec)).collect()
    };
    let store_x =
        |e: &Emitter<'c, 'b>, base: Value<'c, 'b>, vecs: &[Value<'c, 'b>]| -> Result<(), IrError> {
            for (i, v) in vecs.iter().enumerate() {
                let put = |e: &Emitter<'c, 'b>| -> Result<(), IrError> {
                    if p.dequant.xf32 {
                        // Converted once here for every wave of the workgroup (a shift per element).
                        let f = e.extf(*v, e.vector(8, f32t))?;
                        for (h, lanes) in [[0, 1, 2, 3], [4, 5, 6, 7]].iter().enumerate() {
                            let part = e.shuffle(f, f, lanes, f32t)?;
                            let idx = e.addi(base, xs.local[i][h])?;
                            e.vstore(part, a.lds, idx)?;
                        }
                        Ok(())
                    } else {
                        let idx = e.addi(base, xs.local[i][0])?;
                        e.vstore(*v, a.lds, idx)
                    }
                };
                match xs.valid[i] {
                    None => put(e)?,
                    Some(ok) => e.if_then(ok, |inner| put(&inner))?,
                }
            }
            Ok(())
        };

    // A operand: lane reads 8 contiguous K of row lane % atom_m for both MFMAs of a pair: chunk `pair * cpp + q`
    // of the row (q = lane / atom_m < cpp). Padded rows: one offset per M tile, pair `pair` `pair * 2 * ak`
    // further. Swizzled rows (`Plan::x_chunk`): pairs share an aligned block of 8 chunks `8 / cpp` at a time, so
    // the swizzled offset depends on the pair's class `pair % classes`: one offset per class and M tile.
    let cpp = 2 * ak / 8;
    let classes = if p.x_swizzle { (8 / cpp).max(1) } else { 1 };
    let mut a_off = vec![];
    for ms in 0..p.m_tiles {
        let r0 = e.muli(wm, c(p.wave_m)?)?;
        let r = e.addi(r0, c(ms * am)?)?;
        let r = e.addi(r, lane_m)?;
        let ro = e.muli(r, c(p.lds_row)?)?;
        let mut by_class = vec![];
        for j in 0..classes {
            // Class j's first chunk is j * cpp, whose 8 * j * cpp elements the pair loop adds back.
            let (chunk, back) = if j == 0 {
                (lane_q, None)
            } else {
                (e.addi(lane_q, c(j * cpp)?)?, Some(j * cpp * 8))
            };
            let phys = if p.x_swizzle {
                x_chunk(e, r, chunk)?
            } else {
                chunk
            };
            let mut off = e.addi(ro, e.muli(phys, c(8)?)?)?;
            if let Some(back) = back {
                off = e.subi(off, c(back)?)?;
            }
            by_class.push(slice_offset(e, kw, off, p.k_slice)?);
        }
        a_off.push(by_class);
    }

    // xf32: the lane's 8 f32 of a pair are two swizzled chunks, 2q and 2q + 1 of the pair's 8; which XOR applies
    // depends on the pair's parity (bit 3 of the chunk), so each lane keeps four offsets: [chunk][parity].
    let mut a_off_f32 = vec![];
    if p.dequant.xf32 {
        let r0 = e.muli(wm, c(p.wave_m)?)?;
        let r = e.addi(r0, lane_m)?;
        let ro = e.muli(r, c(p.lds_row)?)?;
        let q2 = e.muli(lane_q, c(2)?)?;
        for h in 0..2 {
            let mut by_parity = vec![];
            for parity in 0..2 {
                // Chunk 8 * parity + 2q + h of the row: only its low 3 bits are swizzled.
                let chunk = e.addi(q2, c(8 * parity + h)?)?;
                let phys = swizzled_chunk(e, r, chunk)?;
                let phys = e.subi(phys, c(8 * parity)?)?;
                // Slices are whole multiples of 16 chunks, which the swizzle leaves in place.
                let off = e.addi(ro, e.muli(phys, c(4)?)?)?;
                by_parity.push(slice_offset(e, kw, off, p.k_slice)?);
            }
            a_off_f32.push(by_parity);
        }
    }

    // Weights: word index ((nt * K/kc + chunk) * 64 + lane) * 4 + j, see manifest::WeightLayout.
    let kc = p.weight_layout.words_per_lane * 2 * ak;
    let chunks_per_row = p.k / kc;
    let lane_n = e.remui(lane, c(an)?)?;
    let lane_qn = e.divui(lane, c(an)?)?;
    let mut w_base = vec![];
    let mut s_base = vec![];
    for ns in 0..p.n_tiles {
        let col0 = e.muli(wn, c(p.wave_n)?)?;
        let col0 = e.addi(col0, n0)?;
        let col0 = e.addi(col0, c(ns * an)?)?;
        let nt = e.divui(col0, c(an)?)?;
        let wbase = e.muli(nt, c(chunks_per_row * 64)?)?;
        let wbase = e.addi(wbase, lane)?;
        let wbase = e.muli(wbase, c(p.weight_layout.words_per_lane)?)?;
        let slice_words = p.wchunks_per_iter * 64 * p.weight_layout.words_per_lane;
        w_base.push(slice_offset(e, kw, wbase, slice_words)?);
        let col = e.addi(col0, lane_n)?;
        let sbase = e.muli(col, c(p.k / p.format.group)?)?;
        let q8 = e.muli(lane_qn, c(8)?)?;
        let goff = e.divui(q8, c(p.format.group)?)?;
        let sbase = e.addi(sbase, goff)?;
        s_base.push(slice_offset(e, kw, sbase, p.k_slice / p.format.group)?);
    }
    let wvec = e.vector(4, i32t);
    let svec = e.vector(u64::from(p.scales_per_iter), f32t);
    let load_w = |e: &Emitter<'c, 'b>, kt: Value<'c, 'b>| -> Result<Vec<Value<'c, 'b>>, IrError> {
        let mut out = vec![];
        let chunk0 = e.muli(
            kt,
            c(p.wchunks_per_iter * t.waves_k * 64 * p.weight_layout.words_per_lane)?,
        )?;
        let wb = window(e, a.w, chunk0, 4, wbytes)?;
        for base in &w_base {
            for ch in 0..p.wchunks_per_iter {
                let idx = e.addi(*base, c(ch * 64 * p.weight_layout.words_per_lane)?)?;
                out.push(e.vload(wb, idx, wvec)?);
            }
        }
        Ok(out)
    };
    let load_s = |e: &Emitter<'c, 'b>, kt: Value<'c, 'b>| -> Result<Vec<Value<'c, 'b>>, IrError> {
        let off = e.muli(kt, c(t.tile_k / p.format.group)?)?;
        let sb = window(e, a.s, off, 4, sbytes)?;
        s_base.iter().map(|base| e.vload(sb, *base, svec)).collect()
    };

    // Split-K: workgroup z of the grid takes K iterations lb..ub.
    let (lb, ub, bz) = if p.split_k > 1 {
        let bz = e.block_id('z')?;
        let lb = e.muli(bz, c(p.iters_per_split)?)?;
        let ub = e.addi(lb, c(p.iters_per_split)?)?;
        (lb, ub, Some(bz))
    } else {
        (c(0)?, c(p.k_iters)?, None)
    };

    ring_fill(e, p, lb, bz.is_some(), &load_x, &store_x)?;
    let acc_len = u64::from(am * an / 64);
    // Per-group accumulation's zero temporary and unit dequant scale (only built when used).
    let group_consts = if p.dequant.group_accumulate {
        Some((e.splat_f32(acc_len, 0.0)?, e.splat_f32(2, 1.0)?))
    } else {
        None
    };
    let mut inits = vec![];
    for _ in 0..p.m_tiles * p.n_tiles {
        inits.push(e.splat_f32(acc_len, 0.0)?);
    }

    let dq_ty = e.vector(8, xt);
    let shape = (am, an, ak);
    let results = e.for_loop(lb, ub, c(1)?, &inits, Unroll::Disable, |l, kt, it| {
        let mut accs = it;
        // Weights and scales are loaded at the top of the iteration and consumed once, straight from the loads'
        // destination registers: carrying them across iterations as loop values costs a register copy per
        // dword, which is more VALU than the dequantization budget allows. Latency is hidden by occupancy.
        let wcur = load_w(&l, kt)?;
        let scur = load_s(&l, kt)?;
        // Position in this workgroup's K range (the ring is filled from its first tile).
        let rel = if bz.is_some() { l.subi(kt, lb)? } else { kt };
        let (sbase, xnext) = ring_step(&l, p, kt, rel, ub, bz.is_some(), &load_x, &store_x)?;
        // Per-group accumulation: MFMAs of one scale group go to a temporary, flushed into the accumulator with
        // the group's scale at the group's end (and at the iteration's end, where a longer group simply continues
        // in the next flush with the same scale).
        let group_acc = group_consts.is_some();
        let mut temps: Vec<Option<Value<'c, 'b>>> = vec![None; accs.len()];
        if p.dequant.xf32 {
            let (zero_acc, unit) = group_consts.ok_or_else(|| {
                ir::emit::build_err("gpu.func", "xf32 without per-group accumulation")
            })?;
            let f4 = l.vector(4, f32t);
            let f8 = l.vector(8, f32t);
            for pair in 0..p.pairs_per_iter {
                // x of K 8q..8q+3 and 8q+4..8q+7 of the pair (f32 in LDS), paired element by element with the word.
                let mut xa = vec![];
                for offs in &a_off_f32 {
                    let idx = l.addi(sbase, offs[(pair % 2) as usize])?;
                    let idx = l.addi(idx, l.idx(i64::from(pair * 2 * ak))?)?;
                    xa.push(l.vload(a.lds, idx, f4)?);
                }
                let slot = i64::from(p.scale_slot(pair));
                let flush =
                    pair + 1 == p.pairs_per_iter || p.scale_slot(pair + 1) != p.scale_slot(pair);
                for ns in 0..p.n_tiles as usize {
                    let wv = wcur[ns * p.wchunks_per_iter as usize + (pair / 4) as usize];
                    let word = l.extract(wv, i64::from(pair % 4), i32t)?;
                    let b = l.call(DEQUANT_FN, &[word, unit], &[f8])?[0];
                    let mut t = temps[ns].unwrap_or(zero_acc);
                    for step in 0..4u32 {
                        let xv = xa[(step / 2) as usize];
                        let xo = i64::from(2 * (step % 2));
                        let wo = i64::from(2 * step);
                        let av = l.shuffle(xv, xv, &[xo, xo + 1], f32t)?;
                        let bv = l.shuffle(b, b, &[wo, wo + 1], f32t)?;
                        t = l.mfma((am, an, XF32_K), av, bv, t)?;
                    }
                    if flush {
                        let s1 = l.extract(scur[ns], slot, f32t)?;
                        accs[ns] = flush_group(&l, t, s1, accs[ns])?;
                    } else {
                        temps[ns] = Some(t);
                    }
                }
            }
            ring_store(&l, p, rel, xnext, &store_x)?;
            return Ok(accs);
        }
        for pair in 0..p.pairs_per_iter {
            let mut a_lo = vec![];
            let mut a_hi = vec![];
            for offs in &a_off {
                let idx = l.addi(sbase, offs[(pair % classes) as usize])?;
                let idx = l.addi(idx, l.idx(i64::from(pair * 2 * ak))?)?;
                let av = l.vload(a.lds, idx, dq_ty)?;
                a_lo.push(l.shuffle(av, av, &[0, 1, 2, 3], xt)?);
                a_hi.push(l.shuffle(av, av, &[4, 5, 6, 7], xt)?);
            }
            let flush = group_acc
                && (pair + 1 == p.pairs_per_iter || p.scale_slot(pair + 1) != p.scale_slot(pair));
            for ns in 0..p.n_tiles as usize {
                let wv = wcur[ns * p.wchunks_per_iter as usize + (pair / 4) as usize];
                let word = l.extract(wv, i64::from(pair % 4), i32t)?;
                let slot = i64::from(p.scale_slot(pair));
                let scale = l.shuffle(scur[ns], scur[ns], &[slot, slot], f32t)?;
                // With per-group accumulation the elements stay unscaled (the pass folds the multiply by one away).
                let dq_scale = match group_consts {
                    Some((_, unit)) => unit,
                    None => scale,
                };
                let b = l.call(DEQUANT_FN, &[word, dq_scale], &[dq_ty])?[0];
                let b_lo = l.shuffle(b, b, &[0, 1, 2, 3], xt)?;
                let b_hi = l.shuffle(b, b, &[4, 5, 6, 7], xt)?;
                for ms in 0..p.m_tiles as usize {
                    let i = ms * p.n_tiles as usize + ns;
                    if let Some((zero_acc, _)) = group_consts {
                        let t0 = temps[i].unwrap_or(zero_acc);
                        let t1 = l.mfma(shape, a_lo[ms], b_lo, t0)?;
                        let t = l.mfma(shape, a_hi[ms], b_hi, t1)?;
                        if flush {
                            let s1 = l.extract(scale, 0, f32t)?;
                            accs[i] = flush_group(&l, t, s1, accs[i])?;
                        } else {
                            temps[i] = Some(t);
                        }
                    } else {
                        let acc = l.mfma(shape, a_lo[ms], b_lo, accs[i])?;
                        accs[i] = l.mfma(shape, a_hi[ms], b_hi, acc)?;
                    }
                }
            }
        }
        ring_store(&l, p, rel, xnext, &store_x)?;
        Ok(accs)
    })?;

    let results = reduce_k_waves(e, p, a, &KWave { kw, wave }, lane, &results, acc_len as u32)?;

    // Epilogue: accumulator register r of lane l holds row/col per the MFMA output layout.
    let mut outputs = vec![]; // (row, col, accumulator value, bias of the column)
    for ms in 0..p.m_tiles {
        for ns in 0..p.n_tiles {
            let acc = results[(ms * p.n_tiles + ns) as usize];
            let r0 = e.muli(wm, c(p.wave_m)?)?;
            let r0 = e.addi(r0, m0)?;
            let r0 = e.addi(r0, c(ms * am)?)?;
            let c0 = e.muli(wn, c(p.wave_n)?)?;
            let c0 = e.addi(c0, n0)?;
            let c0 = e.addi(c0, c(ns * an)?)?;
            let col = e.addi(c0, lane_n)?;
            // The bias is per column: one load serves every accumulator register of the lane.
            let bias = match (a.bias, p.bias) {
                (Some(b), Some(bt)) => {
                    let bv = e.load(b, col, dtype(e, bt))?;
                    Some(e.extf(bv, f32t)?)
                }
                _ => None,
            };
            let q4 = e.muli(lane_qn, c(4)?)?;
            for r in 0..acc_len as u32 {
                let row_in = match p.atom {
                    MmaAtom::M16N16K16 => c(r)?,
                    MmaAtom::M32N32K8 => c(8 * (r / 4) + r % 4)?,
                };
                let row = e.addi(r0, row_in)?;
                let row = e.addi(row, q4)?;
                let v = e.extract(acc, i64::from(r), f32t)?;
                outputs.push((row, col, v, bias));
            }
        }
    }
    // The fused epilogue of one output: tensor scale, bias, rounding, bounds-checked store.
    let finish = |e: &Emitter<'c, 'b>,
                  row: Value<'c, 'b>,
                  col: Value<'c, 'b>,
                  mut v: Value<'c, 'b>,
                  bias: Option<Value<'c, 'b>>|
     -> Result<(), IrError> {
        if let Some(ts) = a.ts {
            v = e.mulf(v, ts)?;
        }
        if let Some(b) = bias {
            v = e.addf(v, b)?;
        }
        let o = e.truncf(v, yt)?;
        let idx = e.muli(row, c(p.n)?)?;
        let idx = e.addi(idx, col)?;
        e.store(o, yb, idx)
    };
    let ids = bz.map(|bz| BlockIds { tid, bx, by, bz });
    finish_outputs(e, p, a, ids, m_idx, &outputs, &finish, SplitKRows::All, kw)?;
    e.op("gpu.return", &[], &[], &[])?;
    Ok(())
}

/// A wave's place along K: its wave group `kw` (None when the plan has one, `waves_k` = 1) and its index
/// `wave` inside the group, which the M/N layout uses.
pub(crate) struct KWave<'c, 'b> {
    pub kw: Option<Value<'c, 'b>>,
    pub wave: Value<'c, 'b>,
}

pub(crate) fn k_wave<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    wave: Value<'c, 'b>,
) -> Result<KWave<'c, 'b>, IrError> {
    if p.tiling.waves_k == 1 {
        return Ok(KWave { kw: None, wave });
    }
    let per_group = e.idx(i64::from(p.tiling.waves_m * p.tiling.waves_n))?;
    Ok(KWave {
        kw: Some(e.divui(wave, per_group)?),
        wave: e.remui(wave, per_group)?,
    })
}

/// `base + kw * stride`: a per-wave offset moved to the wave group's K slice (unchanged without waves along K).
pub(crate) fn slice_offset<'c, 'b>(
    e: &Emitter<'c, 'b>,
    kw: Option<Value<'c, 'b>>,
    base: Value<'c, 'b>,
    stride: u32,
) -> Result<Value<'c, 'b>, IrError> {
    match kw {
        None => Ok(base),
        Some(kw) => {
            let off = e.muli(kw, e.idx(i64::from(stride))?)?;
            e.addi(base, off)
        }
    }
}

/// Whether this wave writes the outputs: with waves along K only group 0, which holds the reduced sums.
fn owner<'c, 'b>(
    e: &Emitter<'c, 'b>,
    kw: Option<Value<'c, 'b>>,
) -> Result<Option<Value<'c, 'b>>, IrError> {
    kw.map(|kw| e.cmpi(Cmp::Eq, kw, e.idx(0)?)).transpose()
}

/// In-workgroup split-K: after the K loop every wave group but the first parks its accumulators in the workgroup
/// buffer (free once every wave is past the loop), and group 0's waves add them in group order, so the sum does
/// not depend on timing. Slot `((kw - 1) * waves_mn + wave) * values + i` holds value `i` of one wave, lane-major
/// (`lanes * width` f32 per slot, a lane's `width` f32 contiguous). Every wave runs the loads and adds (group 0's
/// are the ones used): no divergent branch around the barrier-free part. `width`: f32 per accumulator value (1
/// for NVIDIA's scalars, the MFMA output vector on AMD). Returns `accs` unchanged without waves along K.
pub(crate) fn reduce_k_waves<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    a: &Args<'c, 'b>,
    &KWave { kw, wave }: &KWave<'c, 'b>,
    lane: Value<'c, 'b>,
    accs: &[Value<'c, 'b>],
    width: u32,
) -> Result<Vec<Value<'c, 'b>>, IrError> {
    let Some(kw) = kw else {
        return Ok(accs.to_vec());
    };
    let t = &p.tiling;
    let f32t = e.f32();
    let lanes = p.arch.info().wave_size;
    let c = |v: u32| e.idx(i64::from(v));
    // The buffer holds activations (bf16/f16) or, on the xf32 route, f32: f32 values go in as 16-bit pairs.
    let (lt, per_f32) = if p.dequant.xf32 {
        (f32t, 1)
    } else {
        (dtype(e, p.x), 2)
    };
    let stored = e.vector(u64::from(width * per_f32), lt);
    let as_f32 = e.vector(u64::from(width), f32t);
    let waves_mn = t.waves_m * t.waves_n;
    let values = accs.len() as u32;
    let slot_base = |e: &Emitter<'c, 'b>, group: Value<'c, 'b>, i: u32| {
        let s = e.muli(group, c(waves_mn)?)?;
        let s = e.addi(s, wave)?;
        let s = e.muli(s, c(values)?)?;
        let s = e.addi(s, c(i)?)?;
        let s = e.muli(s, c(lanes * width * per_f32)?)?;
        e.addi(s, e.muli(lane, c(width * per_f32)?)?)
    };
    e.barrier()?;
    let parked = e.cmpi(Cmp::Ne, kw, c(0)?)?;
    e.if_then(parked, |e| {
        let group = e.subi(kw, e.idx(1)?)?;
        for (i, v) in accs.iter().enumerate() {
            let v = if width == 1 {
                e.broadcast(*v, as_f32)?
            } else {
                *v
            };
            let v = if per_f32 == 1 {
                v
            } else {
                e.vbitcast(v, stored)?
            };
            e.vstore(v, a.lds, slot_base(&e, group, i as u32)?)?;
        }
        Ok(())
    })?;
    e.barrier()?;
    let mut out = accs.to_vec();
    for g in 0..t.waves_k - 1 {
        for (i, acc) in out.iter_mut().enumerate() {
            let v = e.vload(a.lds, slot_base(e, c(g)?, i as u32)?, stored)?;
            let v = if per_f32 == 1 {
                v
            } else {
                e.vbitcast(v, as_f32)?
            };
            let v = if width == 1 {
                e.extract(v, 0, f32t)?
            } else {
                v
            };
            *acc = e.addf(*acc, v)?;
        }
    }
    Ok(out)
}

/// Per-group accumulation: `acc + temporary * scale`, one FMA per accumulator register (`v_pk_fma_f32` pairs).
fn flush_group<'c, 'b>(
    l: &Emitter<'c, 'b>,
    temporary: Value<'c, 'b>,
    scale: Value<'c, 'b>,
    acc: Value<'c, 'b>,
) -> Result<Value<'c, 'b>, IrError> {
    let ty = acc.r#type();
    let sv = l.broadcast(scale, ty)?;
    l.op1("math.fma", &[temporary, sv, acc], ty, &[])
}

/// K of the xf32 MFMA (`v_mfma_f32_16x16x8_xf32`: two f32 of A and of B per lane).
const XF32_K: u32 = 8;

/// `Plan::xf32_chunk` in IR: `chunk ^ ((row & 7) ^ ((chunk >> 3) & 1))`.
fn swizzled_chunk<'c, 'b>(
    e: &Emitter<'c, 'b>,
    row: Value<'c, 'b>,
    chunk: Value<'c, 'b>,
) -> Result<Value<'c, 'b>, IrError> {
    let c = |v: i64| e.idx(v);
    let r7 = e.andi(row, c(7)?)?;
    let b3 = e.shrui(chunk, c(3)?)?;
    let b3 = e.andi(b3, c(1)?)?;
    let x = e.xori(r7, b3)?;
    e.xori(chunk, x)
}

/// `Plan::x_chunk` in IR: `chunk ^ (row & 7)`.
fn x_chunk<'c, 'b>(
    e: &Emitter<'c, 'b>,
    row: Value<'c, 'b>,
    chunk: Value<'c, 'b>,
) -> Result<Value<'c, 'b>, IrError> {
    let r7 = e.andi(row, e.idx(7)?)?;
    e.xori(chunk, r7)
}

/// Thread and workgroup ids the split-K epilogue needs.
pub(crate) struct BlockIds<'c, 'b> {
    pub tid: Value<'c, 'b>,
    pub bx: Value<'c, 'b>,
    pub by: Value<'c, 'b>,
    pub bz: Value<'c, 'b>,
}

/// Which output rows the split-K epilogue moves through the workspace.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SplitKRows {
    /// Every row of the tile (AMD: stores past M land in the workspace's padding rows, reads are in bounds).
    All,
    /// Only rows below M (NVIDIA: at decode sizes the padding rows would dominate the workspace traffic).
    BelowM,
}

/// One accumulator value of a lane: (row, column, value, the column's bias).
pub(crate) type Output<'c, 'b> = (
    Value<'c, 'b>,
    Value<'c, 'b>,
    Value<'c, 'b>,
    Option<Value<'c, 'b>>,
);

/// Split-K: every workgroup stores its partial sums; the last one to arrive at the tile (an atomic counter) adds
/// the partials of all splits in split order, so the result does not depend on which workgroup came last, applies
/// the epilogue (`finish`) and resets the counter for the next launch. Release and acquire fences at device scope
/// order the partials around the counter (`agent` on AMD, `device` on NVIDIA).
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_k_epilogue<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    a: &Args<'c, 'b>,
    (ws, counters): (Value<'c, 'b>, Value<'c, 'b>),
    ids: BlockIds<'c, 'b>,
    m_idx: Value<'c, 'b>,
    outputs: &[Output<'c, 'b>],
    finish: &Finish<'_, 'c, 'b>,
    rows: SplitKRows,
    owner: Option<Value<'c, 'b>>,
) -> Result<(), IrError> {
    let t = &p.tiling;
    let xt = dtype(e, p.x);
    let i32t = e.int(32);
    let i64t = e.int(64);
    let f32t = e.f32();
    let c = |v: u32| e.idx(i64::from(v));
    let BlockIds { tid, bx, by, bz } = ids;
    // Rows of one split's partials: M rounded up to whole tiles (grid y * tile_m, from the M argument).
    let mpad = e.addi(m_idx, c(t.tile_m - 1)?)?;
    let mpad = e.divui(mpad, c(t.tile_m)?)?;
    let mpad = e.muli(mpad, c(t.tile_m)?)?;
    let ws_index =
        |e: &Emitter<'c, 'b>, split: Value<'c, 'b>, row: Value<'c, 'b>, col: Value<'c, 'b>| {
            let r = e.muli(split, mpad)?;
            let r = e.addi(r, row)?;
            let r = e.muli(r, c(p.n)?)?;
            e.addi(r, col)
        };
    // Runs `f` for the row, under `row < M` when only those rows move.
    let for_row = |e: &Emitter<'c, 'b>,
                   row: Value<'c, 'b>,
                   f: &dyn Fn(&Emitter<'c, 'b>) -> Result<(), IrError>|
     -> Result<(), IrError> {
        match rows {
            SplitKRows::All => f(e),
            SplitKRows::BelowM => {
                let in_m = e.cmpi(Cmp::Ult, row, m_idx)?;
                e.if_then(in_m, |e| f(&e))
            }
        }
    };
    owned(e, owner, |e| {
        for (row, col, v, _) in outputs {
            for_row(e, *row, &|e| {
                let idx = ws_index(e, bz, *row, *col)?;
                e.store(*v, ws, idx)
            })?;
        }
        Ok(())
    })?;
    e.barrier()?;
    let scope = if p.arch.is_nvidia() {
        "device"
    } else {
        "agent"
    };
    let fence = |e: &Emitter<'c, 'b>, ordering: i64| -> Result<(), IrError> {
        e.op(
            "llvm.fence",
            &[],
            &[],
            &[
                ("ordering", IntegerAttribute::new(i64t, ordering).into()),
                ("syncscope", e.string(scope)),
            ],
        )?;
        Ok(())
    };
    // Release: this workgroup's partials are visible device-wide before its arrival is counted. On NVIDIA the
    // barrier above already orders the block's stores before thread 0's fence (the CUTLASS semaphore pattern), so
    // only thread 0 fences: every thread fencing cost each warp a wait for its own stores (about 1 us per launch).
    let single_fence = p.arch.is_nvidia();
    if !single_fence {
        fence(e, 5)?;
    }
    let gx = c(p.n / t.tile_n)?;
    let tile = e.muli(by, gx)?;
    let tile = e.addi(tile, bx)?;
    let zero = c(0)?;
    let is_t0 = e.cmpi(Cmp::Eq, tid, zero)?;
    // The flag travels through element 0 of the workgroup buffer, in its element type.
    let (lt, lbits) = if p.dequant.xf32 { (f32t, 32) } else { (xt, 16) };
    let fconst = |v: f64| {
        e.op1(
            "arith.constant",
            &[],
            lt,
            &[(
                "value",
                melior::ir::attribute::FloatAttribute::new(e.ctx, lt, v).into(),
            )],
        )
    };
    let one_x = fconst(1.0)?;
    let zero_x = fconst(0.0)?;
    e.if_then(is_t0, |e| {
        if single_fence {
            fence(&e, 5)?;
        }
        let one = e.i32c(1)?;
        let old = e.op1(
            "memref.atomic_rmw",
            &[one, counters, tile],
            i32t,
            &[("kind", IntegerAttribute::new(i64t, 1).into())],
        )?;
        if single_fence {
            // Acquire for the whole block: the barrier below hands it on to the other threads.
            fence(&e, 4)?;
        }
        let last = e.i32c(i64::from(p.split_k - 1))?;
        let is_last = e.cmpi(Cmp::Eq, old, last)?;
        let flag = e.select(is_last, one_x, zero_x)?;
        e.store(flag, a.lds, zero)
    })?;
    e.barrier()?;
    let flag = e.load(a.lds, zero, lt)?;
    let it = e.int(lbits);
    let bits = e.bitcast(flag, it)?;
    let zero_bits = e.const_int(0, it)?;
    let is_last = e.cmpi(Cmp::Ne, bits, zero_bits)?;
    e.if_then(is_last, |e| {
        // Acquire: the other workgroups' partials are visible from here on.
        if !single_fence {
            fence(&e, 4)?;
        }
        owned(&e, owner, |e| {
            for (row, col, _, bias) in outputs {
                for_row(e, *row, &|e| {
                    let mut sum = None;
                    for sp in 0..p.split_k {
                        let idx = ws_index(e, c(sp)?, *row, *col)?;
                        let part = e.load(ws, idx, f32t)?;
                        sum = Some(match sum {
                            None => part,
                            Some(acc) => e.addf(acc, part)?,
                        });
                    }
                    match sum {
                        Some(v) => finish(e, *row, *col, v, *bias),
                        None => Ok(()),
                    }
                })?;
            }
            Ok(())
        })?;
        let zero_i = e.i32c(0)?;
        // A fresh comparison: an i1 carried into another branch's block trips AMDGPU's control-flow annotation.
        let first = e.cmpi(Cmp::Eq, tid, e.idx(0)?)?;
        e.if_then(first, |e| e.store(zero_i, counters, tile))
    })
}

/// The fused epilogue of one output value: (row, column, value, the column's bias).
pub(crate) type Finish<'f, 'c, 'b> = dyn Fn(
        &Emitter<'c, 'b>,
        Value<'c, 'b>,
        Value<'c, 'b>,
        Value<'c, 'b>,
        Option<Value<'c, 'b>>,
    ) -> Result<(), IrError>
    + 'f;

/// Loads the activation tile of a K iteration into registers (one value per staged vector).
pub(crate) type LoadX<'f, 'c, 'b> =
    dyn Fn(&Emitter<'c, 'b>, Value<'c, 'b>) -> Result<Vec<Value<'c, 'b>>, IrError> + 'f;
/// Stores staged activation vectors into the LDS stage at the given element offset.
pub(crate) type StoreX<'f, 'c, 'b> =
    dyn Fn(&Emitter<'c, 'b>, Value<'c, 'b>, &[Value<'c, 'b>]) -> Result<(), IrError> + 'f;

/// The ring's prologue: stages 0..stages-1 filled with the workgroup's first tiles (from `lb` when K is split),
/// then a barrier when there is a ring at all.
pub(crate) fn ring_fill<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    lb: Value<'c, 'b>,
    split: bool,
    load_x: &LoadX<'_, 'c, 'b>,
    store_x: &StoreX<'_, 'c, 'b>,
) -> Result<(), IrError> {
    let ring = p.tiling.stages.max(1);
    for st in 0..ring.saturating_sub(1).min(p.iters_per_split) {
        let kt = if split {
            e.addi(lb, e.idx(i64::from(st))?)?
        } else {
            e.idx(i64::from(st))?
        };
        let vecs = load_x(e, kt)?;
        store_x(e, e.idx(i64::from(st * p.lds_stage_elems))?, &vecs)?;
    }
    if ring > 1 {
        e.barrier()?;
    }
    Ok(())
}

/// The activation ring inside one K iteration: where this iteration's tile sits (`sbase`), and the tile
/// `ring - 1` iterations ahead loaded into registers (`Some`, stored by `ring_store` after the MMAs) — or, with a
/// single buffer, the current tile stored right away between two barriers (`None`). `rel` is the iteration's
/// position in this workgroup's K range; loads past the range are clamped to its last tile (they land in a stage
/// that is never read again).
#[allow(clippy::too_many_arguments)]
pub(crate) fn ring_step<'c, 'b>(
    l: &Emitter<'c, 'b>,
    p: &Plan,
    kt: Value<'c, 'b>,
    rel: Value<'c, 'b>,
    ub: Value<'c, 'b>,
    split: bool,
    load_x: &LoadX<'_, 'c, 'b>,
    store_x: &StoreX<'_, 'c, 'b>,
) -> Result<(Value<'c, 'b>, Option<Vec<Value<'c, 'b>>>), IrError> {
    let ring = p.tiling.stages.max(1);
    let stage = l.remui(rel, l.idx(i64::from(ring))?)?;
    let sbase = l.muli(stage, l.idx(i64::from(p.lds_stage_elems))?)?;
    if ring > 1 {
        let ahead = l.addi(kt, l.idx(i64::from(ring - 1))?)?;
        let last = if split {
            l.subi(ub, l.idx(1)?)?
        } else {
            l.idx(i64::from(p.k_iters - 1))?
        };
        let ahead = l.op1("arith.minui", &[ahead, last], l.index(), &[])?;
        Ok((sbase, Some(load_x(l, ahead)?)))
    } else {
        // One buffer: wait until every wave is done with the previous tile before overwriting it.
        let v = load_x(l, kt)?;
        l.barrier()?;
        store_x(l, sbase, &v)?;
        l.barrier()?;
        Ok((sbase, None))
    }
}

/// Stores the tile `ring_step` loaded ahead into its stage, after this iteration's MMAs.
pub(crate) fn ring_store<'c, 'b>(
    l: &Emitter<'c, 'b>,
    p: &Plan,
    rel: Value<'c, 'b>,
    next: Option<Vec<Value<'c, 'b>>>,
    store_x: &StoreX<'_, 'c, 'b>,
) -> Result<(), IrError> {
    let Some(v) = next else {
        return Ok(());
    };
    let ring = p.tiling.stages.max(1);
    let ahead = l.addi(rel, l.idx(i64::from(ring - 1))?)?;
    let st = l.remui(ahead, l.idx(i64::from(ring))?)?;
    let base = l.muli(st, l.idx(i64::from(p.lds_stage_elems))?)?;
    store_x(l, base, &v)?;
    l.barrier()
}

/// The end of both builders: the split-K protocol when the plan splits K, else each output's epilogue directly.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_outputs<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    a: &Args<'c, 'b>,
    ids: Option<BlockIds<'c, 'b>>,
    m_idx: Value<'c, 'b>,
    outputs: &[Output<'c, 'b>],
    finish: &Finish<'_, 'c, 'b>,
    rows: SplitKRows,
    kw: Option<Value<'c, 'b>>,
) -> Result<(), IrError> {
    let owner = owner(e, kw)?;
    match (a.split, ids) {
        (Some(split), Some(ids)) => {
            split_k_epilogue(e, p, a, split, ids, m_idx, outputs, finish, rows, owner)
        }
        _ => owned(e, owner, |e| {
            for (row, col, v, bias) in outputs {
                finish(e, *row, *col, *v, *bias)?;
            }
            Ok(())
        }),
    }
}

/// Runs `f` in the waves that own the outputs (all of them when `owner` is None).
fn owned<'c, 'b, F>(e: &Emitter<'c, 'b>, owner: Option<Value<'c, 'b>>, f: F) -> Result<(), IrError>
where
    F: Fn(&Emitter<'c, 'b>) -> Result<(), IrError>,
{
    match owner {
        None => f(e),
        Some(o) => e.if_then(o, |e| f(&e)),
    }
}
