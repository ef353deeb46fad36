//! Execution of translated functions over the lanes of one workgroup in lockstep.
//!
//! Each instruction runs for every active lane before the next one starts; `scf.if` narrows the active lane list,
//! `scf.for` requires uniform bounds over it. Wave-level ops (`amdgpu.mfma`) gather operands from the 64 lanes of
//! each wave.

use super::compile::{Conv, FOp, Func, IdKind, Inst, IntOp, Kind, Pos, Program, Slot};
use super::types::{
    float_bits, float_bits_from_f32, float_value, mask, sext, ElemType, MemTy, Space,
};
use super::{InterpError, LaunchStats, RaceKind};

/// A memory object a view can point at.
pub(crate) enum Mem<'b> {
    /// A kernel argument's host buffer.
    Host(&'b mut Vec<u8>),
    /// One workgroup attribution of the current workgroup.
    Lds(Lds),
    /// A scalar kernel argument (no memory).
    None,
}

/// LDS bytes plus the per-byte bookkeeping of the race detector: which lane last wrote / read each byte, and in
/// which barrier epoch. A record from an older epoch is stale (a barrier separated the accesses).
pub(crate) struct Lds {
    pub data: Vec<u8>,
    w_lane: Vec<u32>,
    w_epoch: Vec<u32>,
    r_lane: Vec<u32>,
    r_epoch: Vec<u32>,
}

/// `r_lane` value when more than one lane read the byte in the current epoch.
const MANY: u32 = u32::MAX;

impl Lds {
    pub fn new(bytes: usize, fill: u8) -> Lds {
        Lds {
            data: vec![fill; bytes],
            w_lane: vec![0; bytes],
            w_epoch: vec![0; bytes],
            r_lane: vec![0; bytes],
            r_epoch: vec![0; bytes],
        }
    }

    pub fn reset(&mut self, fill: u8) {
        self.data.fill(fill);
        self.w_epoch.fill(0);
        self.r_epoch.fill(0);
    }
}

pub(crate) struct Machine<'p, 'b> {
    pub prog: &'p Program,
    pub mems: Vec<Mem<'b>>,
    pub wg: [u32; 3],
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Lanes (threads) in the workgroup.
    pub nl: usize,
    pub stats: LaunchStats,
    /// Per op name: wave-level executions.
    pub op_waves: Vec<u64>,
    /// Barrier epoch; starts at 1 for each workgroup so that zeroed records are stale.
    pub epoch: u32,
    depth: u32,
    scratch: Vec<u8>,
    /// See `LaunchOptions::fault_mfma_b_layout`.
    pub fault_mfma_b_layout: bool,
    /// See `LaunchOptions::mfma_flushes_denormals`.
    pub mfma_flushes_denormals: bool,
}

/// Where a block's execution ended.
pub(crate) enum Flow {
    Normal,
    Return(Vec<Slot>),
}

const MAX_CALL_DEPTH: u32 = 64;

impl<'p, 'b> Machine<'p, 'b> {
    pub fn new(
        prog: &'p Program,
        mems: Vec<Mem<'b>>,
        grid: [u32; 3],
        block: [u32; 3],
        nl: usize,
    ) -> Self {
        Machine {
            prog,
            mems,
            wg: [0; 3],
            grid,
            block,
            nl,
            stats: LaunchStats::default(),
            op_waves: vec![0; prog.op_names.len()],
            epoch: 1,
            depth: 0,
            scratch: vec![],
            fault_mfma_b_layout: false,
            mfma_flushes_denormals: false,
        }
    }

    fn lane_err(&self, op: u32, lane: u32, reason: impl Into<String>) -> InterpError {
        InterpError::Runtime {
            op: self.prog.describe(op),
            wg: self.wg,
            thread: lane,
            reason: reason.into(),
        }
    }

    fn div_err(&self, op: u32, reason: impl Into<String>) -> InterpError {
        InterpError::Divergence {
            op: self.prog.describe(op),
            wg: self.wg,
            reason: reason.into(),
        }
    }

    /// Runs `body` of `f` with frame `regs` over `lanes` (sorted, non-empty).
    pub fn run(
        &mut self,
        f: &Func,
        regs: &mut [u64],
        body: &[Inst],
        lanes: &[u32],
    ) -> Result<Flow, InterpError> {
        let nl = self.nl;
        let at = |s: Slot, l: u32| -> usize {
            let si = &f.slots[s as usize];
            si.base * nl + l as usize * si.width as usize
        };
        // Waves with at least one active lane: the unit of instruction counts.
        let mut waves = 0u64;
        let mut last = u32::MAX;
        for &l in lanes {
            if l / 64 != last {
                waves += 1;
                last = l / 64;
            }
        }
        for inst in body {
            let op = inst.op;
            self.op_waves[self.prog.ops[op as usize].name_id as usize] += waves;
            self.stats.lane_ops += lanes.len() as u64;
            match &inst.kind {
                Kind::Const { dst, words } => {
                    for &l in lanes {
                        let d = at(*dst, l);
                        regs[d..d + words.len()].copy_from_slice(words);
                    }
                }
                Kind::Id { dst, which, dim } => {
                    let (bx, by) = (self.block[0], self.block[1]);
                    for &l in lanes {
                        let v = match which {
                            IdKind::Thread => [l % bx, (l / bx) % by, l / (bx * by)][*dim],
                            IdKind::Block => self.wg[*dim],
                            IdKind::BlockDim => self.block[*dim],
                            IdKind::GridDim => self.grid[*dim],
                        };
                        regs[at(*dst, l)] = u64::from(v);
                    }
                }
                Kind::IntBin {
                    f: fo,
                    dst,
                    a,
                    b,
                    bits,
                    n,
                } => {
                    let m = mask(*bits);
                    for &l in lanes {
                        let (da, db, dd) = (at(*a, l), at(*b, l), at(*dst, l));
                        for i in 0..*n as usize {
                            let v = int_bin(*fo, regs[da + i], regs[db + i], *bits)
                                .map_err(|r| self.lane_err(op, l, r))?;
                            regs[dd + i] = v & m;
                        }
                    }
                }
                Kind::Cmpi {
                    pred,
                    dst,
                    a,
                    b,
                    bits,
                    n,
                } => {
                    for &l in lanes {
                        let (da, db, dd) = (at(*a, l), at(*b, l), at(*dst, l));
                        for i in 0..*n as usize {
                            let (x, y) = (regs[da + i], regs[db + i]);
                            let (sx, sy) = (sext(x, *bits), sext(y, *bits));
                            let r = match pred {
                                0 => x == y,
                                1 => x != y,
                                2 => sx < sy,
                                3 => sx <= sy,
                                4 => sx > sy,
                                5 => sx >= sy,
                                6 => x < y,
                                7 => x <= y,
                                8 => x > y,
                                _ => x >= y,
                            };
                            regs[dd + i] = u64::from(r);
                        }
                    }
                }
                Kind::FBin {
                    f: fo,
                    dst,
                    a,
                    b,
                    t,
                    n,
                } => {
                    for &l in lanes {
                        let (da, db, dd) = (at(*a, l), at(*b, l), at(*dst, l));
                        for i in 0..*n as usize {
                            regs[dd + i] = float_bin(*fo, *t, regs[da + i], regs[db + i]);
                        }
                    }
                }
                Kind::Fma { dst, a, b, c, n } => {
                    for &l in lanes {
                        let (da, db, dc, dd) = (at(*a, l), at(*b, l), at(*c, l), at(*dst, l));
                        for i in 0..*n as usize {
                            let f = |s: usize| f32::from_bits(regs[s + i] as u32);
                            let r = f(da).mul_add(f(db), f(dc));
                            regs[dd + i] = u64::from(r.to_bits());
                        }
                    }
                }
                Kind::Negf { dst, a, t, n } => {
                    let sign = 1u64 << (t.bits() - 1);
                    for &l in lanes {
                        let (da, dd) = (at(*a, l), at(*dst, l));
                        for i in 0..*n as usize {
                            regs[dd + i] = regs[da + i] ^ sign;
                        }
                    }
                }
                Kind::Cmpf {
                    pred,
                    dst,
                    a,
                    b,
                    t,
                    n,
                } => {
                    for &l in lanes {
                        let (da, db, dd) = (at(*a, l), at(*b, l), at(*dst, l));
                        for i in 0..*n as usize {
                            let x = float_value(*t, regs[da + i]);
                            let y = float_value(*t, regs[db + i]);
                            regs[dd + i] = u64::from(cmpf(*pred, x, y));
                        }
                    }
                }
                Kind::Select {
                    dst,
                    c,
                    a,
                    b,
                    n,
                    vec_cond,
                } => {
                    for &l in lanes {
                        let (dc, da, db, dd) = (at(*c, l), at(*a, l), at(*b, l), at(*dst, l));
                        for i in 0..*n as usize {
                            let cond = regs[dc + if *vec_cond { i } else { 0 }] & 1 == 1;
                            regs[dd + i] = if cond { regs[da + i] } else { regs[db + i] };
                        }
                    }
                }
                Kind::Convert {
                    f: fc,
                    dst,
                    src,
                    from,
                    to,
                    n,
                } => {
                    for &l in lanes {
                        let (ds, dd) = (at(*src, l), at(*dst, l));
                        for i in 0..*n as usize {
                            regs[dd + i] = convert(*fc, *from, *to, regs[ds + i]);
                        }
                    }
                }
                Kind::Repack {
                    dst,
                    src,
                    from,
                    from_n,
                    to,
                    to_n,
                } => {
                    let (fb, tb) = (from.bits(), to.bits());
                    for &l in lanes {
                        let (ds, dd) = (at(*src, l), at(*dst, l));
                        for j in 0..*to_n {
                            // Output element j is bits [j*tb, (j+1)*tb) of the source's little-endian bit string.
                            let mut w = 0u64;
                            let mut got = 0;
                            while got < tb {
                                let p = j * tb + got;
                                let (si, off) = (p / fb, p % fb);
                                let take = (fb - off).min(tb - got);
                                let chunk = (regs[ds + si as usize] >> off) & mask(take);
                                w |= chunk << got;
                                got += take;
                            }
                            regs[dd + j as usize] = w;
                        }
                        let _ = from_n;
                    }
                }
                Kind::Broadcast { dst, src, n, src_n } => {
                    for &l in lanes {
                        let (ds, dd) = (at(*src, l), at(*dst, l));
                        for i in 0..*n as usize {
                            regs[dd + i] = regs[ds + if *src_n == 1 { 0 } else { i }];
                        }
                    }
                }
                Kind::Extract {
                    dst,
                    src,
                    src_n,
                    pos,
                } => {
                    for &l in lanes {
                        let p = match pos {
                            Pos::Static(p) => *p as usize,
                            Pos::Dynamic(s) => {
                                let p = regs[at(*s, l)];
                                if p >= u64::from(*src_n) {
                                    return Err(self.lane_err(
                                        op,
                                        l,
                                        format!("dynamic position {p} out of range"),
                                    ));
                                }
                                p as usize
                            }
                        };
                        regs[at(*dst, l)] = regs[at(*src, l) + p];
                    }
                }
                Kind::Insert {
                    dst,
                    val,
                    dest,
                    n,
                    pos,
                } => {
                    for &l in lanes {
                        let p = match pos {
                            Pos::Static(p) => *p as usize,
                            Pos::Dynamic(s) => {
                                let p = regs[at(*s, l)];
                                if p >= u64::from(*n) {
                                    return Err(self.lane_err(
                                        op,
                                        l,
                                        format!("dynamic position {p} out of range"),
                                    ));
                                }
                                p as usize
                            }
                        };
                        let (ds, dd) = (at(*dest, l), at(*dst, l));
                        for i in 0..*n as usize {
                            regs[dd + i] = regs[ds + i];
                        }
                        regs[dd + p] = regs[at(*val, l)];
                    }
                }
                Kind::Shuffle {
                    dst,
                    a,
                    b,
                    a_n,
                    b_n,
                    mask: sel,
                } => {
                    let _ = b_n;
                    for &l in lanes {
                        let (da, db, dd) = (at(*a, l), at(*b, l), at(*dst, l));
                        for (i, m) in sel.iter().enumerate() {
                            let v = if *m < 0 {
                                0 // poison lane of the mask
                            } else if (*m as u32) < *a_n {
                                regs[da + *m as usize]
                            } else {
                                regs[db + (*m as u32 - *a_n) as usize]
                            };
                            regs[dd + i] = v;
                        }
                    }
                }
                Kind::FromElements { dst, srcs } => {
                    for &l in lanes {
                        let dd = at(*dst, l);
                        for (i, s) in srcs.iter().enumerate() {
                            regs[dd + i] = regs[at(*s, l)];
                        }
                    }
                }
                Kind::Copy { dst, src, width } => {
                    for &l in lanes {
                        let (ds, dd) = (at(*src, l), at(*dst, l));
                        for i in 0..*width as usize {
                            regs[dd + i] = regs[ds + i];
                        }
                    }
                }
                Kind::View {
                    dst,
                    src,
                    off,
                    esize,
                } => {
                    for &l in lanes {
                        let (ds, dd) = (at(*src, l), at(*dst, l));
                        let o = match off {
                            Ok(o) => *o,
                            // An index operand: 32-bit, signed.
                            Err(s) => sext(regs[at(*s, l)], 32),
                        };
                        let base = o
                            .checked_mul(*esize as i64)
                            .and_then(|b| b.checked_add(regs[ds + 1] as i64))
                            .unwrap_or(-1);
                        if base < 0 {
                            return Err(self.lane_err(
                                op,
                                l,
                                format!("view offset {o} moves before the buffer"),
                            ));
                        }
                        regs[dd] = regs[ds];
                        regs[dd + 1] = base as u64;
                        // A new view of a fat buffer would lose its descriptor: only plain memrefs are re-viewed.
                        regs[dd + 2] = u64::MAX;
                    }
                }
                Kind::FatCast {
                    dst,
                    src,
                    valid,
                    bounds_check,
                    reset_offset,
                    static_bytes,
                } => {
                    for &l in lanes {
                        let (ds, dd) = (at(*src, l), at(*dst, l));
                        if !*reset_offset && regs[ds + 1] != 0 {
                            return Err(self.lane_err(
                                op,
                                l,
                                "non-zero source offset without resetOffset",
                            ));
                        }
                        let limit = if !*bounds_check {
                            u64::MAX
                        } else if let Some(v) = valid {
                            regs[at(*v, l)]
                        } else {
                            static_bytes.unwrap_or(u64::MAX)
                        };
                        regs[dd] = regs[ds];
                        regs[dd + 1] = regs[ds + 1];
                        regs[dd + 2] = limit;
                    }
                }
                Kind::Load {
                    dst,
                    mem,
                    idx,
                    mt,
                    n,
                } => {
                    if mt.space == Space::Workgroup {
                        self.count_lds(
                            op,
                            lanes,
                            |l| {
                                let (dm, di) = (at(*mem, l), at(*idx, l));
                                (regs[dm + 1], regs[di])
                            },
                            mt,
                            *n,
                        );
                    }
                    for &l in lanes {
                        let (dm, di) = (at(*mem, l), at(*idx, l));
                        let view = [regs[dm], regs[dm + 1], regs[dm + 2]];
                        let index = regs[di];
                        let mut bytes = std::mem::take(&mut self.scratch);
                        let r = self.access(op, l, view, index, mt, *n, &mut bytes, false);
                        if let Err(e) = r {
                            self.scratch = bytes;
                            return Err(e);
                        }
                        let es = (mt.elem.bits() / 8) as usize;
                        let dd = at(*dst, l);
                        for i in 0..*n as usize {
                            let mut w = 0u64;
                            for k in 0..es {
                                w |= u64::from(bytes[i * es + k]) << (8 * k);
                            }
                            regs[dd + i] = w;
                        }
                        self.scratch = bytes;
                    }
                }
                Kind::Store {
                    val,
                    mem,
                    idx,
                    mt,
                    n,
                } => {
                    if mt.space == Space::Workgroup {
                        self.count_lds(
                            op,
                            lanes,
                            |l| {
                                let (dm, di) = (at(*mem, l), at(*idx, l));
                                (regs[dm + 1], regs[di])
                            },
                            mt,
                            *n,
                        );
                    }
                    for &l in lanes {
                        let (dm, di, dv) = (at(*mem, l), at(*idx, l), at(*val, l));
                        let view = [regs[dm], regs[dm + 1], regs[dm + 2]];
                        let index = regs[di];
                        let mut bytes = std::mem::take(&mut self.scratch);
                        bytes.clear();
                        let es = (mt.elem.bits() / 8) as usize;
                        for i in 0..*n as usize {
                            let w = regs[dv + i];
                            for k in 0..es {
                                bytes.push((w >> (8 * k)) as u8);
                            }
                        }
                        let r = self.access(op, l, view, index, mt, *n, &mut bytes, true);
                        self.scratch = bytes;
                        r?;
                    }
                }
                Kind::ExtPacked {
                    dst,
                    src,
                    from,
                    src_n,
                    index,
                    out_n,
                } => {
                    let _ = src_n;
                    for &l in lanes {
                        let (ds, dd) = (at(*src, l), at(*dst, l));
                        for i in 0..*out_n as usize {
                            let b = regs[ds + (*index * *out_n) as usize + i];
                            // Every fp8 value is exact in f32.
                            regs[dd + i] = u64::from((float_value(*from, b) as f32).to_bits());
                        }
                    }
                }
                Kind::Mfma {
                    dst,
                    a,
                    b,
                    c,
                    m,
                    n,
                    k,
                    kl,
                    t,
                    xf32,
                } => {
                    self.mfma(
                        op,
                        f,
                        regs,
                        lanes,
                        [*dst, *a, *b, *c],
                        (*m, *n, *k, *kl),
                        (*t, *xf32),
                    )?;
                }
                Kind::Bitrev { dst, a, bits, n } => {
                    for &l in lanes {
                        let (da, dd) = (at(*a, l), at(*dst, l));
                        for i in 0..*n as usize {
                            regs[dd + i] = regs[da + i].reverse_bits() >> (64 - bits);
                        }
                    }
                }
                Kind::Funnel {
                    left,
                    dst,
                    a,
                    b,
                    c,
                    bits,
                    n,
                } => {
                    let m = mask(*bits);
                    for &l in lanes {
                        let (da, db, dc, dd) = (at(*a, l), at(*b, l), at(*c, l), at(*dst, l));
                        for i in 0..*n as usize {
                            // Funnel shifts: the concatenation a:b shifted by c mod width.
                            let (x, y) = (u128::from(regs[da + i]), u128::from(regs[db + i]));
                            let s = (regs[dc + i] % u64::from(*bits)) as u32;
                            let cat = (x << bits) | y;
                            let r = if *left { (cat << s) >> bits } else { cat >> s };
                            regs[dd + i] = (r as u64) & m;
                        }
                    }
                }
                Kind::Fence => {}
                Kind::AtomicAdd {
                    dst,
                    val,
                    mem,
                    idx,
                    mt,
                } => {
                    // Lanes in order: each sees the previous lanes' additions, as some serialization of the atomics.
                    for &l in lanes {
                        let (dm, di) = (at(*mem, l), at(*idx, l));
                        let view = [regs[dm], regs[dm + 1], regs[dm + 2]];
                        let index = regs[di];
                        let mut bytes = std::mem::take(&mut self.scratch);
                        let r = self.access(op, l, view, index, mt, 1, &mut bytes, false);
                        if let Err(e) = r {
                            self.scratch = bytes;
                            return Err(e);
                        }
                        let old = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                        let new = old.wrapping_add(regs[at(*val, l)] as u32);
                        bytes.clear();
                        bytes.extend_from_slice(&new.to_le_bytes());
                        let r = self.access(op, l, view, index, mt, 1, &mut bytes, true);
                        self.scratch = bytes;
                        r?;
                        regs[at(*dst, l)] = u64::from(old);
                    }
                }
                Kind::Barrier => {
                    if lanes.len() != self.nl {
                        return Err(self.div_err(
                            op,
                            format!("barrier reached by {} of {} threads", lanes.len(), self.nl),
                        ));
                    }
                    self.epoch += 1;
                    self.stats.barriers += 1;
                }
                Kind::For {
                    lb,
                    ub,
                    step,
                    bits,
                    unsigned,
                    iv,
                    args,
                    inits,
                    results,
                    yields,
                    body,
                } => {
                    let uniform = |s: Slot| -> Result<u64, InterpError> {
                        let v = regs[at(s, lanes[0])];
                        if lanes.iter().any(|&l| regs[at(s, l)] != v) {
                            return Err(self.div_err(op, "loop bounds differ between active lanes"));
                        }
                        Ok(v)
                    };
                    let num = |v: u64| -> i128 {
                        if *unsigned {
                            i128::from(v)
                        } else {
                            i128::from(sext(v, *bits))
                        }
                    };
                    let (lo, hi, st) =
                        (num(uniform(*lb)?), num(uniform(*ub)?), num(uniform(*step)?));
                    if st <= 0 {
                        return Err(self.div_err(op, format!("non-positive step {st}")));
                    }
                    copy_slots(f, nl, regs, args, inits, lanes);
                    let mut i = lo;
                    while i < hi {
                        for &l in lanes {
                            regs[at(*iv, l)] = (i as u64) & mask(*bits);
                        }
                        if let Flow::Return(v) = self.run(f, regs, body, lanes)? {
                            return Ok(Flow::Return(v));
                        }
                        copy_slots(f, nl, regs, args, yields, lanes);
                        i += st;
                    }
                    copy_slots(f, nl, regs, results, args, lanes);
                }
                Kind::If {
                    cond,
                    then_body,
                    then_yields,
                    else_body,
                    else_yields,
                    results,
                } => {
                    let (mut on, mut off) = (vec![], vec![]);
                    for &l in lanes {
                        if regs[at(*cond, l)] & 1 == 1 {
                            on.push(l);
                        } else {
                            off.push(l);
                        }
                    }
                    for (sel, body, yields) in [
                        (&on, then_body, then_yields),
                        (&off, else_body, else_yields),
                    ] {
                        if sel.is_empty() {
                            continue;
                        }
                        if let Flow::Return(v) = self.run(f, regs, body, sel)? {
                            return Ok(Flow::Return(v));
                        }
                        copy_slots(f, nl, regs, results, yields, sel);
                    }
                }
                Kind::Call {
                    func,
                    args,
                    results,
                } => {
                    let callee = &self.prog.funcs[*func];
                    if self.depth >= MAX_CALL_DEPTH {
                        return Err(self.div_err(op, "call depth limit exceeded"));
                    }
                    let mut cregs = vec![0u64; callee.words * nl];
                    for (p, a) in callee.params.iter().zip(args) {
                        let (ps, as_) = (&callee.slots[*p as usize], &f.slots[*a as usize]);
                        let w = ps.width as usize;
                        for &l in lanes {
                            let s = as_.base * nl + l as usize * w;
                            let d = ps.base * nl + l as usize * w;
                            cregs[d..d + w].copy_from_slice(&regs[s..s + w]);
                        }
                    }
                    self.depth += 1;
                    let flow = self.run(callee, &mut cregs, &callee.body, lanes);
                    self.depth -= 1;
                    match flow? {
                        Flow::Return(vals) => {
                            for (r, v) in results.iter().zip(&vals) {
                                let (rs, vs) = (&f.slots[*r as usize], &callee.slots[*v as usize]);
                                let w = rs.width as usize;
                                for &l in lanes {
                                    let s = vs.base * nl + l as usize * w;
                                    let d = rs.base * nl + l as usize * w;
                                    regs[d..d + w].copy_from_slice(&cregs[s..s + w]);
                                }
                            }
                        }
                        Flow::Normal => {
                            return Err(self
                                .div_err(op, format!("@{} ended without a return", callee.name)))
                        }
                    }
                }
                Kind::Return { vals } => return Ok(Flow::Return(vals.clone())),
            }
        }
        Ok(Flow::Normal)
    }

    /// Bank-conflict accounting of one LDS op, wave by wave (`super::lds_conflict_cycles`). `addr` gives a lane's
    /// view base byte and element index.
    fn count_lds(
        &mut self,
        op: u32,
        lanes: &[u32],
        addr: impl Fn(u32) -> (u64, u64),
        mt: &MemTy,
        n: u32,
    ) {
        let es = u64::from(mt.elem.bits() / 8);
        let len = u64::from(n) * es;
        let mut i = 0;
        let mut executions = 0;
        let mut conflicts = 0;
        let mut wave: Vec<(u32, u64, u64)> = vec![];
        while i < lanes.len() {
            let w = lanes[i] / 64;
            wave.clear();
            while i < lanes.len() && lanes[i] / 64 == w {
                let (base, index) = addr(lanes[i]);
                wave.push((
                    lanes[i] % 64,
                    base.wrapping_add(index.wrapping_mul(es)),
                    len,
                ));
                i += 1;
            }
            executions += 1;
            conflicts += super::lds_conflict_cycles(&wave);
        }
        let e = self
            .stats
            .lds_ops
            .entry(self.prog.describe(op))
            .or_default();
        e.executions += executions;
        e.conflict_cycles += conflicts;
    }

    /// One lane's access of `n` elements at element `index` of `view`; loads fill `bytes`, stores write it.
    #[allow(clippy::too_many_arguments)]
    fn access(
        &mut self,
        op: u32,
        lane: u32,
        view: [u64; 3],
        index: u64,
        mt: &MemTy,
        n: u32,
        bytes: &mut Vec<u8>,
        store: bool,
    ) -> Result<(), InterpError> {
        let es = u64::from(mt.elem.bits() / 8);
        let len = u64::from(n) * es;
        if !store {
            bytes.clear();
            bytes.resize(len as usize, 0);
        }
        // Indices are unsigned 32-bit: a negative index is a huge offset, out of every bound.
        let rel = index.saturating_mul(es);
        let oob = |this: &Self, byte: u64, size: u64, space: &str| InterpError::OutOfBounds {
            op: this.prog.describe(op),
            space: space.to_string(),
            wg: this.wg,
            thread: lane,
            byte,
            end: byte.saturating_add(len),
            size,
        };
        let id = view[0] as usize;
        match mt.space {
            Space::Fat => {
                // Buffer-descriptor bounds check, per component: the access is split into dwords (or the whole
                // access when smaller); a component whose bytes do not all lie below the view's valid byte count
                // reads 0 and is not written. In-range components must lie inside the host buffer.
                let comp = len.min(4);
                let mut c = 0;
                while c < len {
                    let r = rel.saturating_add(c);
                    if r.saturating_add(comp) <= view[2] {
                        let abs = view[1].saturating_add(r);
                        self.host(
                            op,
                            lane,
                            id,
                            abs,
                            comp,
                            &mut bytes[c as usize..(c + comp) as usize],
                            store,
                            "fat buffer",
                        )?;
                    }
                    c += comp;
                }
            }
            Space::Global => {
                if let Some(n_el) = mt.len {
                    let size = n_el * es;
                    if rel.saturating_add(len) > size {
                        return Err(oob(self, rel, size, "memref"));
                    }
                }
                let abs = view[1].saturating_add(rel);
                self.host(op, lane, id, abs, len, bytes, store, "global")?;
            }
            Space::Workgroup => {
                let abs = view[1].saturating_add(rel);
                let lds = match self.mems.get_mut(id) {
                    Some(Mem::Lds(l)) => l,
                    _ => return Err(self.lane_err(op, lane, "workgroup view of a non-LDS buffer")),
                };
                let size = mt.len.map_or(lds.data.len() as u64, |n_el| {
                    (n_el * es).min(lds.data.len() as u64)
                });
                if abs.saturating_add(len) > size || rel.saturating_add(len) > size {
                    return Err(oob(self, abs, size, "LDS"));
                }
                let me = lane + 1;
                let epoch = self.epoch;
                for b in abs..abs + len {
                    let b = b as usize;
                    let writer = if lds.w_epoch[b] == epoch {
                        lds.w_lane[b]
                    } else {
                        0
                    };
                    let reader = if lds.r_epoch[b] == epoch {
                        lds.r_lane[b]
                    } else {
                        0
                    };
                    let race = if !store {
                        (writer != 0 && writer != me)
                            .then(|| (RaceKind::ReadAfterWrite, writer - 1))
                    } else if writer != 0 && writer != me {
                        Some((RaceKind::WriteAfterWrite, writer - 1))
                    } else if reader != 0 && reader != me {
                        Some((
                            RaceKind::WriteAfterRead,
                            if reader == MANY { u32::MAX } else { reader - 1 },
                        ))
                    } else {
                        None
                    };
                    if let Some((kind, other)) = race {
                        return Err(InterpError::Race {
                            op: self.prog.describe(op),
                            wg: self.wg,
                            thread: lane,
                            other,
                            byte: b as u64,
                            kind,
                        });
                    }
                    if store {
                        lds.w_lane[b] = me;
                        lds.w_epoch[b] = epoch;
                    } else if reader == 0 {
                        lds.r_lane[b] = me;
                        lds.r_epoch[b] = epoch;
                    } else if reader != me {
                        lds.r_lane[b] = MANY;
                    }
                }
                let (s, e) = (abs as usize, (abs + len) as usize);
                if store {
                    lds.data[s..e].copy_from_slice(bytes);
                    self.stats.lds_bytes_written += len;
                } else {
                    bytes.copy_from_slice(&lds.data[s..e]);
                    self.stats.lds_bytes_read += len;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn host(
        &mut self,
        op: u32,
        lane: u32,
        id: usize,
        abs: u64,
        len: u64,
        bytes: &mut [u8],
        store: bool,
        space: &str,
    ) -> Result<(), InterpError> {
        let buf = match self.mems.get_mut(id) {
            Some(Mem::Host(b)) => b,
            _ => {
                return Err(self.lane_err(
                    op,
                    lane,
                    "global view of a buffer that is not a kernel argument",
                ))
            }
        };
        let size = buf.len() as u64;
        if abs.saturating_add(len) > size {
            return Err(InterpError::OutOfBounds {
                op: self.prog.describe(op),
                space: format!("{space} (host buffer of argument {id})"),
                wg: self.wg,
                thread: lane,
                byte: abs,
                end: abs.saturating_add(len),
                size,
            });
        }
        let (s, e) = (abs as usize, (abs + len) as usize);
        if store {
            buf[s..e].copy_from_slice(bytes);
            self.stats.global_bytes_written += len;
        } else {
            bytes.copy_from_slice(&buf[s..e]);
            self.stats.global_bytes_read += len;
        }
        Ok(())
    }

    /// An MFMA input or result as the unit sees it: on gfx90a, denormals (below 2^-126 in magnitude) are flushed to
    /// zero of the same sign.
    fn mfma_in(&self, v: f32) -> f32 {
        if self.mfma_flushes_denormals && v != 0.0 && v.abs() < f32::MIN_POSITIVE {
            0.0f32.copysign(v)
        } else {
            v
        }
    }

    /// `D = A * B + C` for every wave with active lanes; all 64 lanes of such a wave must be active.
    /// Accumulation order: for each output, `acc = C; for k in 0..K { acc = acc + A[i][k] * B[k][j] }`, each product
    /// and each sum rounded to f32 (products of bf16 / f16 operands are exact in f32 unless they underflow).
    /// xf32 (f32 operands, `reducePrecision`): the unit reads 1 + 8 + 10 bits of each f32. How it drops the other
    /// 13 is not modelled; an operand with any of them set is an error, so a kernel is only accepted when it feeds
    /// values xf32 holds exactly (their products are then exact in f32, as for bf16). The layout is the 16x16x16
    /// one with two elements per lane (A[l % 16][2 * (l / 16) + e]); nibble's kernels rely only on what every MFMA
    /// layout shares: A's row and B's column are l % 16, and A and B use the same K mapping.
    #[allow(clippy::too_many_arguments)]
    fn mfma(
        &mut self,
        op: u32,
        f: &Func,
        regs: &mut [u64],
        lanes: &[u32],
        [dst, a, b, c]: [Slot; 4],
        (m, n, k, kl): (u32, u32, u32, u32),
        (t, xf32): (ElemType, bool),
    ) -> Result<(), InterpError> {
        let nl = self.nl;
        let at = |s: Slot, l: u32| -> usize {
            let si = &f.slots[s as usize];
            si.base * nl + l as usize * si.width as usize
        };
        let (mu, nu, ku) = (m as usize, n as usize, k as usize);
        let mut am = vec![0f32; mu * ku];
        let mut bm = vec![0f32; ku * nu];
        let mut i = 0;
        while i < lanes.len() {
            let w = lanes[i] / 64;
            let start = i;
            while i < lanes.len() && lanes[i] / 64 == w {
                i += 1;
            }
            if i - start != 64 {
                return Err(self.div_err(
                    op,
                    format!(
                        "wave {w} executes amdgpu.mfma with {} of 64 lanes active",
                        i - start
                    ),
                ));
            }
            let base = w * 64;
            if xf32 {
                for ln in 0..64u32 {
                    let (da, db) = (at(a, base + ln), at(b, base + ln));
                    for e in 0..kl as usize {
                        for (which, bits) in [("A", regs[da + e]), ("B", regs[db + e])] {
                            if bits as u32 & 0x1FFF != 0 {
                                return Err(self.div_err(
                                    op,
                                    format!(
                                        "xf32 operand {which} of lane {ln} (element {e}) is {} (0x{:08x}), not \
                                         exactly representable in xf32",
                                        f32::from_bits(bits as u32),
                                        bits as u32
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            for ln in 0..64u32 {
                let (da, db) = (at(a, base + ln), at(b, base + ln));
                for e in 0..kl {
                    // A: lane l, element e holds A[l % m][kl * (l / m) + e]; B: B[kl * (l / n) + e][l % n].
                    let (ai, ak) = ((ln % m) as usize, (kl * (ln / m) + e) as usize);
                    am[ai * ku + ak] = self.mfma_in(float_value(t, regs[da + e as usize]) as f32);
                    let group = if self.fault_mfma_b_layout {
                        (ln / n) ^ 1
                    } else {
                        ln / n
                    };
                    let (bk, bj) = ((kl * group + e) as usize, (ln % n) as usize);
                    bm[bk * nu + bj] = self.mfma_in(float_value(t, regs[db + e as usize]) as f32);
                }
            }
            for ln in 0..64u32 {
                let (dc, dd) = (at(c, base + ln), at(dst, base + ln));
                for r in 0..(m * n / 64) {
                    let (row, col) = acc_pos(m, ln, r);
                    let mut acc = f32::from_bits(regs[dc + r as usize] as u32);
                    for kk in 0..ku {
                        acc += am[row * ku + kk] * bm[kk * nu + col];
                    }
                    regs[dd + r as usize] = u64::from(self.mfma_in(acc).to_bits());
                }
            }
            self.stats.mfma += 1;
        }
        Ok(())
    }
}

/// Row and column of accumulator register `r` of lane `l` (mfma-layouts.md).
pub(crate) fn acc_pos(m: u32, l: u32, r: u32) -> (usize, usize) {
    if m == 32 {
        (
            (8 * (r / 4) + 4 * (l / 32) + r % 4) as usize,
            (l % 32) as usize,
        )
    } else {
        ((4 * (l / 16) + r) as usize, (l % 16) as usize)
    }
}

/// Copies slots `src[i]` to `dst[i]` for `lanes`, through a temporary so that permutations (a loop yielding its
/// own iter args in another order) read the old values.
fn copy_slots(f: &Func, nl: usize, regs: &mut [u64], dst: &[Slot], src: &[Slot], lanes: &[u32]) {
    let mut tmp = vec![];
    for s in src {
        let si = &f.slots[*s as usize];
        let w = si.width as usize;
        for &l in lanes {
            let o = si.base * nl + l as usize * w;
            tmp.extend_from_slice(&regs[o..o + w]);
        }
    }
    let mut p = 0;
    for d in dst {
        let si = &f.slots[*d as usize];
        let w = si.width as usize;
        for &l in lanes {
            let o = si.base * nl + l as usize * w;
            regs[o..o + w].copy_from_slice(&tmp[p..p + w]);
            p += w;
        }
    }
}

fn int_bin(f: IntOp, x: u64, y: u64, bits: u32) -> Result<u64, String> {
    let (sx, sy) = (sext(x, bits), sext(y, bits));
    let shift_ok = |what: &str| {
        if y >= u64::from(bits) {
            Err(format!("{what} by {y} >= bit width {bits} (poison)"))
        } else {
            Ok(())
        }
    };
    Ok(match f {
        IntOp::Add => x.wrapping_add(y),
        IntOp::Sub => x.wrapping_sub(y),
        IntOp::Mul => x.wrapping_mul(y),
        IntOp::DivU | IntOp::RemU | IntOp::DivS | IntOp::RemS if y == 0 => {
            return Err("division by zero".into());
        }
        IntOp::DivU => x / y,
        IntOp::RemU => x % y,
        IntOp::DivS => sx.wrapping_div(sy) as u64,
        IntOp::RemS => sx.wrapping_rem(sy) as u64,
        IntOp::And => x & y,
        IntOp::Or => x | y,
        IntOp::Xor => x ^ y,
        IntOp::Shl => {
            shift_ok("shift left")?;
            x << y
        }
        IntOp::ShrU => {
            shift_ok("shift right")?;
            x >> y
        }
        IntOp::ShrS => {
            shift_ok("shift right")?;
            (sx >> y) as u64
        }
        IntOp::MinU => x.min(y),
        IntOp::MaxU => x.max(y),
        IntOp::MinS => sx.min(sy) as u64,
        IntOp::MaxS => sx.max(sy) as u64,
    })
}

fn float_bin(f: FOp, t: ElemType, x: u64, y: u64) -> u64 {
    if t == ElemType::F32 {
        // Native f32: IEEE round-to-nearest-even with subnormals (Rust never enables flush-to-zero).
        let (a, b) = (f32::from_bits(x as u32), f32::from_bits(y as u32));
        let r = match f {
            FOp::Add => a + b,
            FOp::Sub => a - b,
            FOp::Mul => a * b,
            FOp::Div => a / b,
            FOp::Maximum => maximum(a.into(), b.into()) as f32,
            FOp::Minimum => minimum(a.into(), b.into()) as f32,
            FOp::MaxNum => a.max(b),
            FOp::MinNum => a.min(b),
        };
        return u64::from(r.to_bits());
    }
    // Narrow floats: compute in f64 (exact for products; sums of f16 too) and round once to the type.
    let (a, b) = (float_value(t, x), float_value(t, y));
    let r = match f {
        FOp::Add => a + b,
        FOp::Sub => a - b,
        FOp::Mul => a * b,
        FOp::Div => a / b,
        FOp::Maximum => maximum(a, b),
        FOp::Minimum => minimum(a, b),
        FOp::MaxNum => a.max(b),
        FOp::MinNum => a.min(b),
    };
    float_bits(t, r).unwrap_or(0)
}

/// IEEE maximum: NaN-propagating, -0 < +0.
fn maximum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == b {
        if a.is_sign_negative() {
            b
        } else {
            a
        }
    } else {
        a.max(b)
    }
}

fn minimum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == b {
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else {
        a.min(b)
    }
}

fn cmpf(pred: i64, x: f64, y: f64) -> bool {
    let uno = x.is_nan() || y.is_nan();
    match pred {
        0 => false,
        1 => !uno && x == y,
        2 => !uno && x > y,
        3 => !uno && x >= y,
        4 => !uno && x < y,
        5 => !uno && x <= y,
        6 => !uno && x != y,
        7 => !uno,
        8 => uno || x == y,
        9 => uno || x > y,
        10 => uno || x >= y,
        11 => uno || x < y,
        12 => uno || x <= y,
        13 => uno || x != y,
        14 => uno,
        _ => true,
    }
}

fn convert(f: Conv, from: ElemType, to: ElemType, v: u64) -> u64 {
    match f {
        Conv::IntS => (sext(v, from.bits()) as u64) & to.mask(),
        Conv::IntU => v & from.mask() & to.mask(),
        Conv::Bits => v & to.mask(),
        Conv::Float => {
            if from == ElemType::F32 {
                float_bits_from_f32(to, f32::from_bits(v as u32)).unwrap_or(0)
            } else {
                // Every source type is exact in f64; widening is exact, narrowing rounds once.
                float_bits(to, float_value(from, v)).unwrap_or(0)
            }
        }
        Conv::SiToFp => float_bits(to, sext(v, from.bits()) as f64).unwrap_or(0),
        Conv::UiToFp => float_bits(to, v as f64).unwrap_or(0),
    }
}
