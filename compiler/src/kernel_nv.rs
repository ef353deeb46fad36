//! GPU stage for NVIDIA targets: the same plan becomes one `gpu.func` for warp-32 `mma.sync` m16n8k16.
//!
//! The weights are the MMA's A operand (C^T = W x^T): a weight word holds exactly one lane's eight A-fragment
//! elements of one atom, so the dequant call yields the four operand registers directly, and tokens pad only to 8.
//! Activations are staged through shared memory with the plan's ring (as on AMD) and read as B fragments with
//! `ldmatrix.x4`; weights and scales stream from global memory into registers with 16-byte loads, `stages - 1` K
//! iterations ahead (loop-carried registers).
//! M tails: activation rows at or past M are loaded from row M-1 and replaced by zeros, output stores are guarded.
//! Split-K follows the AMD protocol (workspace layout, counters, split-order reduction; only rows below M move, and
//! only thread 0 fences).

use melior::ir::Value;

use crate::ir::{
    self,
    emit::{Cmp, Unroll},
    Emitter, IrError,
};
use crate::kernel::{
    build_gpu_func, dtype, finish_outputs, k_wave, reduce_k_waves, ring_fill, ring_step,
    ring_store, slice_offset, Args, BlockIds, KWave, SplitKRows, DEQUANT_FN,
};
use crate::plan::{self, Plan, NV_ATOM_K, NV_ATOM_ROWS, NV_ATOM_TOKENS, NV_CHUNK_K};
use crate::spec::DType;

const WARP: u32 = 32;

/// Elements of the repacked scale buffer (`nibble.scales_mma_sync_a.v1` or its exponent-byte twin).
pub fn scale_elements(p: &Plan) -> u64 {
    let slots = u64::from(plan::nv_group_slots(p.format.group));
    u64::from(p.n / NV_ATOM_ROWS) * u64::from(p.k / NV_CHUNK_K) * 8 * slots * 2
}

/// The element type of the scale buffer: exponent bytes, or 16-bit values of the operand type.
fn scale_elem<'c>(e: &Emitter<'c, '_>, p: &Plan) -> melior::ir::Type<'c> {
    if p.scale_exp_bytes() {
        e.int(8)
    } else {
        dtype(e, p.x)
    }
}

pub fn build_kernel<'c, 'b>(e: &Emitter<'c, 'b>, p: &Plan) -> Result<(), IrError> {
    build_gpu_func(
        e,
        p,
        scale_elem(e, p),
        scale_elements(p),
        u64::from(p.lds_elems),
        |e, a| body(e, p, a),
    )
}

fn body<'c, 'b>(e: &Emitter<'c, 'b>, p: &Plan, a: &Args<'c, 'b>) -> Result<(), IrError> {
    let t = &p.tiling;
    let f = p
        .fragment
        .as_ref()
        .ok_or_else(|| ir::emit::build_err("gpu.func", "NVIDIA plan without a fragment recipe"))?;
    let xt = dtype(e, p.x);
    let yt = dtype(e, p.y);
    let i32t = e.int(32);
    let f32t = e.f32();
    let c = |v: u32| e.idx(i64::from(v));
    let operand = match p.x {
        DType::Bf16 => "bf16",
        DType::F16 => "f16",
    };

    let tid = e.thread_id('x')?;
    let bx = e.block_id('x')?;
    let by = e.block_id('y')?;
    let warp = e.divui(tid, c(WARP)?)?;
    let lane = e.remui(tid, c(WARP)?)?;
    let KWave { kw, wave: warp } = k_wave(e, p, warp)?;
    let wm = e.divui(warp, c(t.waves_n)?)?;
    let wn = e.remui(warp, c(t.waves_n)?)?;
    let g = e.divui(lane, c(4)?)?;
    let t4 = e.remui(lane, c(4)?)?;
    let m_idx = e.index_cast(a.m, e.index())?;
    let last_row = e.subi(m_idx, c(1)?)?;

    let m0 = e.muli(by, c(t.tile_m)?)?;
    let n0 = e.muli(bx, c(t.tile_n)?)?;

    // Activation staging: vector v of the tile (tile_m rows x tile_k/8 vectors) goes to thread v % threads; rows at
    // or past M read row M-1 (always valid) and are replaced by zeros.
    let vecs_per_row = t.tile_k / 8;
    let total_vecs = t.tile_m * vecs_per_row;
    let xvec = e.vector(8, xt);
    let zero_x = e.op1(
        "arith.constant",
        &[],
        xvec,
        &[(
            "value",
            melior::ir::attribute::DenseElementsAttribute::new(
                xvec,
                &[melior::ir::attribute::FloatAttribute::new(e.ctx, xt, 0.0).into()],
            )
            .map_err(|err| ir::emit::build_err("arith.constant", err))?
            .into(),
        )],
    )?;
    struct Slot<'c, 'b> {
        global: Value<'c, 'b>,
        in_m: Value<'c, 'b>,
        local: Value<'c, 'b>,
        valid: Option<Value<'c, 'b>>,
    }
    let mut slots = vec![];
    // `Plan::slice_sync`: the warps of K slice `kw` copy that slice's columns of the tile among themselves
    // (thread `gt` of the slice's `slice_threads`), so only they need to meet at each K step.
    let slice_threads = p.threads / t.waves_k;
    let slice_vecs_per_row = vecs_per_row / t.waves_k;
    let (gt, slice_col0) = match (p.slice_sync, kw) {
        (true, Some(kw)) => (
            e.subi(tid, e.muli(kw, c(slice_threads)?)?)?,
            Some(e.muli(kw, c(slice_vecs_per_row)?)?),
        ),
        _ => (tid, None),
    };
    for v in 0..p.x_vecs_per_thread {
        let vid = match slice_col0 {
            Some(_) => e.addi(gt, c(v * slice_threads)?)?,
            None => e.addi(tid, c(v * p.threads)?)?,
        };
        // wgmma: vector v is row 8 * (v / (8 * vecs_per_row)) + v % 8, K vector (v / 8) % vecs_per_row, so that its
        // place in the core-matrix layout (`Plan::wgmma_x_offset`) is 8 * v: a warp stores 512 contiguous bytes.
        let (row, col) = if p.wgmma {
            let grp = e.divui(vid, c(8 * vecs_per_row)?)?;
            let r8 = e.remui(vid, c(8)?)?;
            let row = e.addi(e.muli(grp, c(8)?)?, r8)?;
            let col = e.remui(e.divui(vid, c(8)?)?, c(vecs_per_row)?)?;
            (row, col)
        } else if let Some(col0) = slice_col0 {
            (
                e.divui(vid, c(slice_vecs_per_row)?)?,
                e.addi(col0, e.remui(vid, c(slice_vecs_per_row)?)?)?,
            )
        } else {
            (
                e.divui(vid, c(vecs_per_row)?)?,
                e.remui(vid, c(vecs_per_row)?)?,
            )
        };
        let col8 = e.muli(col, c(8)?)?;
        let grow = e.addi(m0, row)?;
        let in_m = e.cmpi(Cmp::Ult, grow, m_idx)?;
        let grow = e.op1("arith.minui", &[grow, last_row], e.index(), &[])?;
        let gofs = e.muli(grow, c(p.k)?)?;
        let (global, local) = if p.wgmma {
            (e.addi(gofs, col8)?, e.muli(vid, c(8)?)?)
        } else {
            let l = e.muli(row, c(p.lds_row)?)?;
            (e.addi(gofs, col8)?, e.addi(l, col8)?)
        };
        let ragged = (v + 1) * p.threads > total_vecs;
        slots.push(Slot {
            global,
            in_m,
            local,
            valid: if ragged {
                // (A slice's vectors are `total_vecs / waves_k`, spread over `slice_threads`.)
                let vecs = if slice_col0.is_some() {
                    total_vecs / t.waves_k
                } else {
                    total_vecs
                };
                Some(e.cmpi(Cmp::Ult, vid, c(vecs)?)?)
            } else {
                None
            },
        });
    }
    let load_x = |e: &Emitter<'c, 'b>, kt: Value<'c, 'b>| -> Result<Vec<Value<'c, 'b>>, IrError> {
        let koff = e.muli(kt, c(t.tile_k)?)?;
        slots
            .iter()
            .map(|sl| {
                let idx = e.addi(sl.global, koff)?;
                let v = e.vload_aligned(a.x, idx, xvec, 16)?;
                e.select(sl.in_m, v, zero_x)
            })
            .collect()
    };
    let store_x =
        |e: &Emitter<'c, 'b>, base: Value<'c, 'b>, vecs: &[Value<'c, 'b>]| -> Result<(), IrError> {
            for (sl, v) in slots.iter().zip(vecs) {
                let idx = e.addi(base, sl.local)?;
                match sl.valid {
                    None => e.vstore_aligned(*v, a.lds, idx, 16)?,
                    Some(ok) => e.if_then(ok, |inner| inner.vstore_aligned(*v, a.lds, idx, 16))?,
                }
            }
            if p.wgmma {
                // wgmma reads shared memory through the async proxy: the tile's ordinary stores must be made
                // visible to it (every caller follows with a barrier).
                e.inline_asm("fence.proxy.async.shared::cta;", "~{memory}", &[], None)?;
            }
            Ok(())
        };

    // The 64-bit address of x for cp.async (index is 32 bits wide here): the bare pointer inside the memref
    // descriptor the NVVM lowering builds (`codegen::lowering_pipeline`'s `index-bitwidth=32`, so the cast folds
    // away in `reconcile-unrealized-casts`).
    let i64t = e.int(64);
    let x_ptr = if p.async_x {
        let desc_ty = melior::ir::Type::parse(
            e.ctx,
            "!llvm.struct<(ptr, ptr, i32, array<1 x i32>, array<1 x i32>)>",
        )
        .ok_or_else(|| ir::emit::build_err("cp.async", "memref descriptor type"))?;
        let ptr_ty = melior::ir::Type::parse(e.ctx, "!llvm.ptr")
            .ok_or_else(|| ir::emit::build_err("cp.async", "pointer type"))?;
        let desc = e.op1("builtin.unrealized_conversion_cast", &[a.x], desc_ty, &[])?;
        let base = e.op1(
            "llvm.extractvalue",
            &[desc],
            ptr_ty,
            &[(
                "position",
                melior::ir::attribute::DenseI64ArrayAttribute::new(e.ctx, &[1]).into(),
            )],
        )?;
        Some(e.op1("llvm.ptrtoint", &[base], i64t, &[])?)
    } else {
        None
    };
    // Shared-window address of the workgroup buffer: cp.async destinations, wgmma descriptors, ldmatrix rows.
    let lds_base = e.op1(
        "memref.extract_aligned_pointer_as_index",
        &[a.lds],
        e.index(),
        &[],
    )?;
    // `Plan::async_x`: tile `kt` copied straight into the stage at element `base` by `cp.async` (rows past M
    // zero-filled through the source size), as one commit group. mma.sync blocks cache the copies in L1 (`.ca`):
    // several blocks share an SM and read the same activation rows (measured on the H100: QKV decode at M = 16
    // 24.4 against 40.8 us with `.cg`); a wgmma block has its SM to itself and bypasses L1 (`.cg`: mixed on the
    // four prefill shapes, 3% faster in total, docs/results/h100-session7/ca).
    let cache = if p.wgmma { "cg" } else { "ca" };
    let copy_x =
        |e: &Emitter<'c, 'b>, kt: Value<'c, 'b>, base: Value<'c, 'b>| -> Result<(), IrError> {
            let x_ptr = x_ptr.ok_or_else(|| ir::emit::build_err("cp.async", "no x address"))?;
            let koff = e.muli(kt, c(t.tile_k)?)?;
            for sl in &slots {
                let src = e.index_cast(e.addi(sl.global, koff)?, i64t)?;
                let src = e.muli(src, e.const_int(2, i64t)?)?;
                let src = e.addi(x_ptr, src)?;
                let dst = e.muli(e.addi(base, sl.local)?, c(2)?)?;
                let dst = e.index_cast(e.addi(lds_base, dst)?, i32t)?;
                let size = e.select(sl.in_m, e.i32c(16)?, e.i32c(0)?)?;
                let copy = |e: &Emitter<'c, 'b>| -> Result<(), IrError> {
                    e.inline_asm(
                        &format!("cp.async.{cache}.shared.global [$0], [$1], 16, $2;"),
                        "r,l,r,~{memory}",
                        &[dst, src, size],
                        None,
                    )?;
                    Ok(())
                };
                match sl.valid {
                    None => copy(e)?,
                    Some(ok) => e.if_then(ok, |inner| copy(&inner))?,
                }
            }
            e.inline_asm("cp.async.commit_group;", "~{memory}", &[], None)?;
            Ok(())
        };

    // B fragments: token row g of each 8-token atom, K pair 2*t4 (and +8) of each 16-K step.
    // B fragments come from shared memory through `ldmatrix.x4`: one instruction yields b0b1 and b2b3 of two token
    // atoms. Lane t addresses row t % 8 of matrix t / 8: matrices (atom 2p, k 0-7), (2p, k 8-15), (2p+1, k 0-7),
    // (2p+1, k 8-15); each row is 8 consecutive k (16 bytes, aligned since rows are tile_k + 8 elements apart), and
    // the 8 rows of a matrix fall on distinct bank quads.
    let mut b_off = vec![];
    let mat = e.divui(lane, c(8)?)?;
    let row8 = e.remui(lane, c(8)?)?;
    let mat_atom = e.divui(mat, c(2)?)?;
    let mat_k = e.remui(mat, c(2)?)?;
    // (The wgmma route reads the tile through matrix descriptors instead.)
    let b_pairs = if p.wgmma { 0 } else { p.m_tiles.div_ceil(2) };
    for pair in 0..b_pairs {
        let r0 = e.muli(wm, c(p.wave_m)?)?;
        let r = e.addi(r0, c(pair * 2 * NV_ATOM_TOKENS)?)?;
        let ra = e.muli(mat_atom, c(NV_ATOM_TOKENS)?)?;
        let r = e.addi(r, ra)?;
        let r = e.addi(r, row8)?;
        let ro = e.muli(r, c(p.lds_row)?)?;
        let k8 = e.muli(mat_k, c(8)?)?;
        b_off.push(slice_offset(e, kw, e.addi(ro, k8)?, p.k_slice)?);
    }
    let ptr3 = melior::ir::Type::parse(e.ctx, "!llvm.ptr<3>")
        .ok_or_else(|| ir::emit::build_err("nvvm.ldmatrix", "pointer type"))?;
    let quad = melior::ir::Type::parse(e.ctx, "!llvm.struct<(i32, i32, i32, i32)>")
        .ok_or_else(|| ir::emit::build_err("nvvm.ldmatrix", "result type"))?;
    let pair_ty = melior::ir::Type::parse(e.ctx, "!llvm.struct<(i32, i32)>")
        .ok_or_else(|| ir::emit::build_err("nvvm.ldmatrix", "result type"))?;

    // Weights: word ((nb * K/64 + chunk) * 32 + lane) * 4 + j; scales: (((nb * K/64 + chunk) * 8 + g) * slots + gl)
    // * 2 + h (see manifest::FragmentBits and the scale layout).
    let chunks_per_row = p.k / NV_CHUNK_K;
    let wpl = p.weight_layout.words_per_lane;
    let gslots = plan::nv_group_slots(p.format.group);
    let svals = gslots * 2;
    let mut w_base = vec![];
    let mut s_base = vec![];
    for ns in 0..p.n_tiles {
        let row0 = e.muli(wn, c(p.wave_n)?)?;
        let row0 = e.addi(row0, n0)?;
        let row0 = e.addi(row0, c(ns * NV_ATOM_ROWS)?)?;
        let nb = e.divui(row0, c(NV_ATOM_ROWS)?)?;
        let chunk0 = e.muli(nb, c(chunks_per_row)?)?;
        let wb = e.muli(chunk0, c(WARP)?)?;
        let wb = e.addi(wb, lane)?;
        let wb = e.muli(wb, c(wpl)?)?;
        w_base.push(slice_offset(e, kw, wb, p.wchunks_per_iter * WARP * wpl)?);
        let sb = e.muli(chunk0, c(8)?)?;
        let sb = e.addi(sb, g)?;
        let sb = e.muli(sb, c(svals)?)?;
        s_base.push(slice_offset(e, kw, sb, p.wchunks_per_iter * 8 * svals)?);
    }
    let wvec = e.vector(u64::from(wpl), i32t);
    let exp_scales = p.scale_exp_bytes();
    let sbytes = if exp_scales { 1 } else { 2 };
    let svec = e.vector(u64::from(svals), scale_elem(e, p));
    let load_w = |e: &Emitter<'c, 'b>, kt: Value<'c, 'b>| -> Result<Vec<Value<'c, 'b>>, IrError> {
        let mut out = vec![];
        let first = e.muli(kt, c(p.wchunks_per_iter * t.waves_k * WARP * wpl)?)?;
        for base in &w_base {
            for ch in 0..p.wchunks_per_iter {
                let idx = e.addi(*base, first)?;
                let idx = e.addi(idx, c(ch * WARP * wpl)?)?;
                out.push(e.vload_aligned(a.w, idx, wvec, 4 * wpl)?);
            }
        }
        Ok(out)
    };
    let load_s = |e: &Emitter<'c, 'b>, kt: Value<'c, 'b>| -> Result<Vec<Value<'c, 'b>>, IrError> {
        let mut out = vec![];
        let first = e.muli(kt, c(p.wchunks_per_iter * t.waves_k * 8 * svals)?)?;
        for base in &s_base {
            for ch in 0..p.wchunks_per_iter {
                let idx = e.addi(*base, first)?;
                let idx = e.addi(idx, c(ch * 8 * svals)?)?;
                out.push(e.vload_aligned(a.s, idx, svec, sbytes * svals)?);
            }
        }
        Ok(out)
    };

    let (lb, ub, bz) = if p.split_k > 1 {
        let bz = e.block_id('z')?;
        let lb = e.muli(bz, c(p.iters_per_split)?)?;
        let ub = e.addi(lb, c(p.iters_per_split)?)?;
        (lb, ub, Some(bz))
    } else {
        (c(0)?, c(p.k_iters)?, None)
    };

    let ring = t.stages.max(1);
    let zero_f = e.f32c(0.0)?;
    let acc_count = (p.m_tiles * p.n_tiles * 4) as usize;
    let mut inits = vec![zero_f; acc_count];
    // Weights and scales are issued first (their latency overlaps the activation
    // staging below) and software-pipelined `depth - 1` K iterations ahead in loop-carried registers (depth =
    // the plan's stages): a short-lived decode block then waits for memory about once instead of once per
    // iteration, which is what keeps enough bytes in flight to approach the HBM bandwidth.
    // (A wgmma block with cp.async staging keeps its weights one step ahead: its 16 warps sit at the 128-register
    // limit, and the ring's own depth already hides the activation loads.)
    let depth = if p.async_x && p.wgmma { 2 } else { ring.max(2) };
    let last_kt0 = e.subi(ub, c(1)?)?;
    let mut nw = 0;
    let mut nsc = 0;
    for d in 0..depth - 1 {
        let kt = e.addi(lb, c(d)?)?;
        // Iterations past the split's end reload its last one: harmless and in bounds.
        let kt = e.op1("arith.minui", &[kt, last_kt0], e.index(), &[])?;
        let w = load_w(e, kt)?;
        let sc = load_s(e, kt)?;
        nw = w.len();
        nsc = sc.len();
        inits.extend(w);
        inits.extend(sc);
    }
    let per_stage = nw + nsc;

    if p.async_x {
        // Tiles 0 .. ring - 2 in flight, one commit group each (clamped to the last tile when the range is
        // shorter, into stages no tile of the range uses), so that step i can wait for all but ring - 2 groups.
        for st in 0..ring - 1 {
            let kt = e.addi(lb, c(st)?)?;
            let kt = e.op1("arith.minui", &[kt, last_kt0], e.index(), &[])?;
            copy_x(e, kt, c(st * p.lds_stage_elems)?)?;
        }
    } else {
        ring_fill(e, p, lb, bz.is_some(), &load_x, &store_x)?;
    }

    let dq_ty = e.vector(8, xt);
    let v2 = e.vector(2, xt);
    let v1i = e.vector(1, i32t);
    // Exponent bytes to the bf16 pair (rows g, g+8) of slot gl: the layout puts a chunk's bytes in the order
    // (slot 0, g), (slot 1, g), (slot 0, g+8), (slot 1, g+8), so one shift and one mask move both rows' bytes into
    // the two exponent fields (`nibble.scales_mma_sync_a_exp.v1`).
    let exp_pair =
        |l: &Emitter<'c, 'b>, sv: Value<'c, 'b>, gl: i64| -> Result<Value<'c, 'b>, IrError> {
            let word = if svals == 2 {
                // One slot per chunk: bytes (g, g+8) -> b0 << 7 | b1 << 23.
                let h = l.vbitcast(sv, l.vector(1, l.int(16)))?;
                let h = l.extract(h, 0, l.int(16))?;
                let x = l.extui(h, i32t)?;
                let up = l.shli(x, l.i32c(8)?)?;
                let x = l.ori(x, up)?;
                let x = l.andi(x, l.i32c(0x00FF_00FF)?)?;
                l.shli(x, l.i32c(7)?)?
            } else {
                let words = l.vbitcast(sv, l.vector(u64::from(svals / 4), i32t))?;
                let w = l.extract(words, gl / 2, i32t)?;
                let w = if gl % 2 == 0 {
                    l.shli(w, l.i32c(7)?)?
                } else {
                    l.shrui(w, l.i32c(1)?)?
                };
                l.andi(w, l.i32c(0x7F80_7F80)?)?
            };
            let v = l.broadcast(word, v1i)?;
            l.vbitcast(v, v2)
        };
    let exp_pair = exp_scales.then_some(&exp_pair);
    // NVVM types bf16 operand registers as i32 and f16 ones as vector<2xf16>.
    let as_i32 = |e: &Emitter<'c, 'b>, v: Value<'c, 'b>| -> Result<Value<'c, 'b>, IrError> {
        if p.x == DType::F16 {
            return Ok(v);
        }
        let b = e.vbitcast(v, v1i)?;
        e.extract(b, 0, i32t)
    };
    let unroll = match p.unroll {
        0 | 1 => Unroll::Allow,
        u => Unroll::Count(u),
    };
    let results = e.for_loop(lb, ub, c(1)?, &inits, unroll, |l, kt, it| {
        let mut accs = it[..acc_count].to_vec();
        let wcur = it[acc_count..acc_count + nw].to_vec();
        let scur = it[acc_count + nw..acc_count + per_stage].to_vec();
        let mut carried = it[acc_count + per_stage..].to_vec();
        // The weights `depth - 1` iterations ahead.
        let next = l.addi(kt, l.idx(i64::from(depth - 1))?)?;
        let last_kt = l.subi(ub, l.idx(1)?)?;
        let next = l.op1("arith.minui", &[next, last_kt], l.index(), &[])?;
        carried.extend(load_w(&l, next)?);
        carried.extend(load_s(&l, next)?);
        let rel = if bz.is_some() { l.subi(kt, lb)? } else { kt };
        let ring_now =
            |l: &Emitter<'c, 'b>| ring_step(l, p, kt, rel, ub, bz.is_some(), &load_x, &store_x);
        // cp.async staging, and a single-buffered wgmma ring (refilled after the wait for the previous tile's
        // wgmmas), stage inside the branches below; register staging issues the activation loads first.
        let early = if p.async_x || (p.wgmma && ring == 1) {
            None
        } else {
            Some(ring_now(&l)?)
        };
        // The A registers of 16-K step `step` for n-tile `ns`: the dequantized weight word, scaled.
        let areg_for = |step: u32, ns: usize| -> Result<[Value<'c, 'b>; 4], IrError> {
            let chunk = (step / 4) as usize;
            let j = i64::from(step % 4);
            // Scale slot of this step inside its 64-K chunk.
            let gl = i64::from(step % 4 * NV_ATOM_K / p.format.group.min(NV_CHUNK_K));
            let wv = wcur[ns * p.wchunks_per_iter as usize + chunk];
            let word = l.extract(wv, j, i32t)?;
            let sv = scur[ns * p.wchunks_per_iter as usize + chunk];
            let scale = match exp_pair {
                Some(f) => f(&l, sv, gl)?,
                None => l.shuffle(sv, sv, &[2 * gl, 2 * gl + 1], xt)?,
            };
            let deq = l.call(DEQUANT_FN, &[word, scale], &[dq_ty])?[0];
            let mut regs = vec![];
            for r in 0..4i64 {
                let pair = l.shuffle(deq, deq, &[2 * r, 2 * r + 1], xt)?;
                regs.push(as_i32(&l, pair)?);
            }
            Ok([regs[0], regs[1], regs[2], regs[3]])
        };
        // `Plan::async_x`: this tile's copies (all groups but the ring - 2 younger ones) are made visible to every
        // warp by the barrier (and to wgmma's async proxy by the fence); past it every warp is also done with the
        // previous tile (its ldmatrix reads, or its wgmmas, which each warpgroup waits for first), so that tile's
        // stage takes the copy ring - 1 tiles ahead. Returns this tile's stage.
        let async_step = |l: &Emitter<'c, 'b>| -> Result<Value<'c, 'b>, IrError> {
            l.inline_asm(
                &format!("cp.async.wait_group {};", ring - 2),
                "~{memory}",
                &[],
                None,
            )?;
            if p.wgmma {
                l.inline_asm("fence.proxy.async.shared::cta;", "~{memory}", &[], None)?;
            }
            match (p.slice_sync, kw) {
                // Only the slice's warps copy and read its columns: they meet at barrier 1 + kw (0 is the
                // block's).
                (true, Some(kw)) => {
                    let id = l.index_cast(l.addi(kw, l.idx(1)?)?, i32t)?;
                    l.inline_asm(
                        &format!("bar.sync $0, {slice_threads};"),
                        "r,~{memory}",
                        &[id],
                        None,
                    )?;
                }
                _ => l.barrier()?,
            }
            let stage = l.remui(rel, l.idx(i64::from(ring))?)?;
            let ahead = l.addi(kt, l.idx(i64::from(ring - 1))?)?;
            let ahead = l.op1("arith.minui", &[ahead, last_kt], l.index(), &[])?;
            let slot = l.remui(
                l.addi(rel, l.idx(i64::from(ring - 1))?)?,
                l.idx(i64::from(ring))?,
            )?;
            copy_x(
                l,
                ahead,
                l.muli(slot, l.idx(i64::from(p.lds_stage_elems))?)?,
            )?;
            l.muli(stage, l.idx(i64::from(p.lds_stage_elems))?)
        };
        if p.wgmma {
            // Each tile's wgmmas stay in flight until the next iteration has issued its weight and activation loads.
            // Wait for the previous tile's wgmmas before dequantizing: they still read their A registers, and ptxas
            // allocates registers as if wgmma read them at issue (it would hand them to this tile's A values).
            l.inline_asm("wgmma.wait_group.sync.aligned 0;", "~{memory}", &[], None)?;
            let aregs = (0..p.pairs_per_iter)
                .map(|step| areg_for(step, 0))
                .collect::<Result<Vec<_>, _>>()?;
            let sbase = if p.async_x {
                async_step(&l)?
            } else {
                let (sbase, xnext) = match early {
                    Some(v) => v,
                    None => ring_now(&l)?,
                };
                if xnext.is_some() {
                    // The stage about to be refilled was read by every warpgroup's wgmmas, and each has only
                    // waited for its own (a single buffer is refilled behind ring_step's own barrier).
                    l.barrier()?;
                }
                ring_store(&l, p, rel, xnext, &store_x)?;
                sbase
            };
            let bytes = l.muli(sbase, l.idx(2)?)?;
            let addr = l.addi(lds_base, bytes)?;
            let addr = l.index_cast(addr, i32t)?;
            let desc0 = wgmma_descriptor(&l, addr, p)?;
            l.inline_asm("wgmma.fence.sync.aligned;", "~{memory}", &[], None)?;
            for (step, areg) in aregs.iter().enumerate() {
                // Each step moves 16 of K: two core matrices, 256 bytes (16 in the descriptor's units).
                let desc = l.addi(desc0, l.const_int(16 * step as i64, l.int(64))?)?;
                let out = wgmma(&l, p, &accs, areg, desc)?;
                accs.copy_from_slice(&out);
            }
            l.inline_asm("wgmma.commit_group.sync.aligned;", "~{memory}", &[], None)?;
        } else {
            let (sbase, xnext) = match early {
                Some(v) => v,
                None => (async_step(&l)?, None),
            };
            for step in 0..p.pairs_per_iter {
                // B fragments of this 16-K step for every token atom.
                let mut bfr = vec![];
                for (pair, off) in b_off.iter().enumerate() {
                    let idx = l.addi(sbase, *off)?;
                    let idx = l.addi(idx, l.idx(i64::from(step * NV_ATOM_K))?)?;
                    let bytes = l.muli(idx, l.idx(2)?)?;
                    let addr = l.addi(lds_base, bytes)?;
                    let addr = l.index_cast(addr, i32t)?;
                    let ptr = l.op1("llvm.inttoptr", &[addr], ptr3, &[])?;
                    // A pair whose second atom is past the warp's tokens (8-token tiles) loads only the first
                    // atom's two matrices (`.x2`, which reads the addresses of lanes 0-15).
                    let single = 2 * pair as u32 + 1 == p.m_tiles;
                    let (num, ty) = if single {
                        ("2 : i32", pair_ty)
                    } else {
                        ("4 : i32", quad)
                    };
                    let m = l.op1(
                        "nvvm.ldmatrix",
                        &[ptr],
                        ty,
                        &[
                            ("num", l.attr(num)?),
                            ("layout", l.attr("#nvvm.mma_layout<row>")?),
                            ("shape", l.attr("#nvvm.ld_st_matrix_shape<m = 8, n = 8>")?),
                            ("eltType", l.attr("#nvvm.ld_st_matrix_elt_type<b16>")?),
                        ],
                    )?;
                    let mut regs = vec![];
                    for i in 0..if single { 2 } else { 4 } {
                        let r = l.op1(
                            "llvm.extractvalue",
                            &[m],
                            i32t,
                            &[(
                                "position",
                                melior::ir::attribute::DenseI64ArrayAttribute::new(l.ctx, &[i])
                                    .into(),
                            )],
                        )?;
                        regs.push(if p.x == DType::F16 {
                            let v1 = l.broadcast(r, v1i)?;
                            l.vbitcast(v1, v2)?
                        } else {
                            r
                        });
                    }
                    bfr.push([regs[0], regs[1]]);
                    if bfr.len() < p.m_tiles as usize {
                        bfr.push([regs[2], regs[3]]);
                    }
                }
                for ns in 0..p.n_tiles as usize {
                    let areg = areg_for(step, ns)?;
                    for (ms, b) in bfr.iter().enumerate() {
                        let base = (ms * p.n_tiles as usize + ns) * 4;
                        let cur = [accs[base], accs[base + 1], accs[base + 2], accs[base + 3]];
                        let out = l.mma_sync(operand, &areg, b, &cur)?;
                        accs[base..base + 4].copy_from_slice(&out);
                    }
                }
            }
            ring_store(&l, p, rel, xnext, &store_x)?;
        }
        accs.extend(carried);
        Ok(accs)
    })?;

    if p.wgmma {
        // The last tile's wgmmas are still in flight.
        e.inline_asm("wgmma.wait_group.sync.aligned 0;", "~{memory}", &[], None)?;
    }
    if p.async_x {
        // So are the clamped copies past the last tile, which must land before the K-wave reduction (behind its
        // barrier) reuses the buffer.
        e.inline_asm("cp.async.wait_group 0;", "~{memory}", &[], None)?;
    }
    let kwave = KWave { kw, wave: warp };
    let results = reduce_k_waves(e, p, a, &kwave, lane, &results[..acc_count], 1)?;

    // Epilogue: c0, c1 are weight row g, tokens 2*t4 and 2*t4+1 of the atom; c2, c3 the same for row g + 8.
    let mut outputs = vec![]; // (token row, output column, value, bias)
    for ms in 0..p.m_tiles {
        for ns in 0..p.n_tiles {
            let base = ((ms * p.n_tiles + ns) * 4) as usize;
            let tok0 = e.muli(wm, c(p.wave_m)?)?;
            let tok0 = e.addi(tok0, m0)?;
            let tok0 = e.addi(tok0, c(ms * NV_ATOM_TOKENS)?)?;
            let t2 = e.muli(t4, c(2)?)?;
            let tok0 = e.addi(tok0, t2)?;
            let col0 = e.muli(wn, c(p.wave_n)?)?;
            let col0 = e.addi(col0, n0)?;
            let col0 = e.addi(col0, c(ns * NV_ATOM_ROWS)?)?;
            let col0 = e.addi(col0, g)?;
            for half in 0..2u32 {
                let col = e.addi(col0, c(8 * half)?)?;
                let bias = match (a.bias, p.bias) {
                    (Some(b), Some(bt)) => {
                        let bv = e.load(b, col, dtype(e, bt))?;
                        Some(e.extf(bv, f32t)?)
                    }
                    _ => None,
                };
                for tk in 0..2u32 {
                    let row = e.addi(tok0, c(tk)?)?;
                    outputs.push((row, col, results[base + (2 * half + tk) as usize], bias));
                }
            }
        }
    }
    // The operand carried element * scale * 2^-epilogue_exp; the tensor scale (NVFP4) joins the same factor.
    let factor = e.f32c(2f64.powi(f.epilogue_exp))?;
    let factor = match a.ts {
        Some(ts) => e.mulf(factor, ts)?,
        None => factor,
    };
    let finish = |e: &Emitter<'c, 'b>,
                  row: Value<'c, 'b>,
                  col: Value<'c, 'b>,
                  v: Value<'c, 'b>,
                  bias: Option<Value<'c, 'b>>|
     -> Result<(), IrError> {
        let mut v = e.mulf(v, factor)?;
        if let Some(b) = bias {
            v = e.addf(v, b)?;
        }
        let o = e.truncf(v, yt)?;
        let in_m = e.cmpi(Cmp::Ult, row, m_idx)?;
        e.if_then(in_m, |e| {
            let idx = e.muli(row, c(p.n)?)?;
            let idx = e.addi(idx, col)?;
            e.store(o, a.y, idx)
        })
    };
    let ids = bz.map(|bz| BlockIds { tid, bx, by, bz });
    finish_outputs(
        e,
        p,
        a,
        ids,
        m_idx,
        &outputs,
        &finish,
        SplitKRows::BelowM,
        kw,
    )?;
    e.op("gpu.return", &[], &[], &[])?;
    Ok(())
}

/// The wgmma matrix descriptor of the activation stage at shared address `addr` (K-major, no swizzle): start
/// address, leading byte offset (to the next 8 of K of the same tokens) and stride byte offset (to the next 8
/// tokens), both read off `Plan::wgmma_x_offset`, each encoded as bytes >> 4.
fn wgmma_descriptor<'c, 'b>(
    e: &Emitter<'c, 'b>,
    addr: Value<'c, 'b>,
    p: &Plan,
) -> Result<Value<'c, 'b>, IrError> {
    let lbo = i64::from(p.wgmma_x_offset(0, 8)) * 2;
    let sbo = i64::from(p.wgmma_x_offset(8, 0)) * 2;
    let start = e.shrui(addr, e.i32c(4)?)?;
    let start = e.andi(start, e.i32c(0x3FFF)?)?;
    let lo = e.ori(start, e.i32c((lbo >> 4) << 16)?)?;
    let lo = e.extui(lo, e.int(64))?;
    e.ori(lo, e.const_int((sbo >> 4) << 32, e.int(64))?)
}

/// One `wgmma.mma_async.m64n{tile_m}k16` (bf16, f32 accumulators, A from registers): `acc` (tile_m / 2 values,
/// in and out), `a` the warp's four A registers, `desc` the B descriptor.
fn wgmma<'c, 'b>(
    e: &Emitter<'c, 'b>,
    p: &Plan,
    acc: &[Value<'c, 'b>],
    a: &[Value<'c, 'b>; 4],
    desc: Value<'c, 'b>,
) -> Result<Vec<Value<'c, 'b>>, IrError> {
    let na = acc.len();
    let d: Vec<String> = (0..na).map(|i| format!("${i}")).collect();
    let asm = format!(
        "{{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\nwgmma.mma_async.sync.aligned.m64n{}k16.f32.bf16.bf16 {{{}}}, \
         {{${}, ${}, ${}, ${}}}, ${}, p, 1, 1, 0;\n}}",
        p.tiling.tile_m,
        d.join(", "),
        2 * na,
        2 * na + 1,
        2 * na + 2,
        2 * na + 3,
        2 * na + 4
    );
    let mut constraints: Vec<String> = (0..na).map(|_| "=f".to_string()).collect();
    constraints.extend((0..na).map(|i| i.to_string()));
    constraints.extend(["r", "r", "r", "r", "l", "~{memory}"].map(String::from));
    let mut operands = acc.to_vec();
    operands.extend_from_slice(a);
    operands.push(desc);
    let fields = vec!["f32"; na].join(", ");
    let st = melior::ir::Type::parse(e.ctx, &format!("!llvm.struct<({fields})>"))
        .ok_or_else(|| ir::emit::build_err("llvm.inline_asm", "wgmma result type"))?;
    let r = e
        .inline_asm(&asm, &constraints.join(","), &operands, Some(st))?
        .ok_or_else(|| ir::emit::build_err("llvm.inline_asm", "wgmma has no result"))?;
    (0..na)
        .map(|i| {
            e.op1(
                "llvm.extractvalue",
                &[r],
                e.f32(),
                &[(
                    "position",
                    melior::ir::attribute::DenseI64ArrayAttribute::new(e.ctx, &[i as i64]).into(),
                )],
            )
        })
        .collect()
}
