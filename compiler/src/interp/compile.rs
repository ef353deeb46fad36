//! Translation of MLIR functions into the interpreter's instruction lists.
//!
//! The module is walked once: every SSA value gets a slot (a fixed range of `u64` words per lane), every op becomes
//! one `Inst` with its operands resolved to slots and its attributes decoded. Execution then never touches MLIR,
//! hashes, or strings.

use std::collections::HashMap;

use melior::ir::{
    attribute::{
        Attribute, AttributeLike, DenseI32ArrayAttribute, DenseI64ArrayAttribute,
        FlatSymbolRefAttribute, IntegerAttribute, StringAttribute, TypeAttribute,
    },
    block::BlockLike,
    operation::{OperationLike, OperationRef},
    r#type::FunctionType,
    BlockRef, Module, RegionLike, Type, TypeLike, Value, ValueLike,
};

use super::types::{float_bits, float_value, ElemType, MemTy, Ty};
use super::InterpError;

pub(crate) type Slot = u32;

#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotInfo {
    /// First word of the slot in units of "words per lane": lane `l` element `e` lives at `base * lanes + l * width + e`.
    pub base: usize,
    pub width: u32,
    pub ty: Ty,
}

/// Where an op came from, for error messages and statistics.
#[derive(Debug, Clone)]
pub(crate) struct OpInfo {
    pub name: String,
    pub func: String,
    pub ordinal: u32,
    /// Index of `name` in `Program::op_names`.
    pub name_id: u32,
}

impl OpInfo {
    pub fn describe(&self) -> String {
        format!("{} (op #{} of @{})", self.name, self.ordinal, self.func)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntOp {
    Add,
    Sub,
    Mul,
    DivU,
    RemU,
    DivS,
    RemS,
    And,
    Or,
    Xor,
    Shl,
    ShrU,
    ShrS,
    MinU,
    MaxU,
    MinS,
    MaxS,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    MaxNum,
    MinNum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conv {
    /// Sign-extending or truncating integer resize (index_cast, extsi, trunci).
    IntS,
    /// Zero-extending or truncating integer resize (index_castui, extui).
    IntU,
    /// Same-width reinterpretation (arith.bitcast).
    Bits,
    /// Float widen (exact) or narrow (round to nearest even).
    Float,
    SiToFp,
    UiToFp,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Pos {
    Static(u32),
    Dynamic(Slot),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum IdKind {
    Thread,
    Block,
    BlockDim,
    GridDim,
}

#[derive(Debug)]
pub(crate) struct Inst {
    pub op: u32,
    pub kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Const {
        dst: Slot,
        words: Vec<u64>,
    },
    Id {
        dst: Slot,
        which: IdKind,
        dim: usize,
    },
    IntBin {
        f: IntOp,
        dst: Slot,
        a: Slot,
        b: Slot,
        bits: u32,
        n: u32,
    },
    Cmpi {
        pred: i64,
        dst: Slot,
        a: Slot,
        b: Slot,
        bits: u32,
        n: u32,
    },
    FBin {
        f: FOp,
        dst: Slot,
        a: Slot,
        b: Slot,
        t: ElemType,
        n: u32,
    },
    /// `math.fma` on f32 (one rounding, as the hardware's fused multiply-add).
    Fma {
        dst: Slot,
        a: Slot,
        b: Slot,
        c: Slot,
        n: u32,
    },
    Negf {
        dst: Slot,
        a: Slot,
        t: ElemType,
        n: u32,
    },
    Cmpf {
        pred: i64,
        dst: Slot,
        a: Slot,
        b: Slot,
        t: ElemType,
        n: u32,
    },
    Select {
        dst: Slot,
        c: Slot,
        a: Slot,
        b: Slot,
        n: u32,
        vec_cond: bool,
    },
    Convert {
        f: Conv,
        dst: Slot,
        src: Slot,
        from: ElemType,
        to: ElemType,
        n: u32,
    },
    /// vector.bitcast / arith.bitcast between different element counts: the vector as one little-endian bit string.
    Repack {
        dst: Slot,
        src: Slot,
        from: ElemType,
        from_n: u32,
        to: ElemType,
        to_n: u32,
    },
    Broadcast {
        dst: Slot,
        src: Slot,
        n: u32,
        src_n: u32,
    },
    Extract {
        dst: Slot,
        src: Slot,
        src_n: u32,
        pos: Pos,
    },
    Insert {
        dst: Slot,
        val: Slot,
        dest: Slot,
        n: u32,
        pos: Pos,
    },
    Shuffle {
        dst: Slot,
        a: Slot,
        b: Slot,
        a_n: u32,
        b_n: u32,
        mask: Vec<i64>,
    },
    FromElements {
        dst: Slot,
        srcs: Vec<Slot>,
    },
    Load {
        dst: Slot,
        mem: Slot,
        idx: Slot,
        mt: MemTy,
        n: u32,
    },
    Store {
        val: Slot,
        mem: Slot,
        idx: Slot,
        mt: MemTy,
        n: u32,
    },
    /// memref.reinterpret_cast: element 0 moves by `off` elements.
    View {
        dst: Slot,
        src: Slot,
        off: Result<i64, Slot>,
        esize: u64,
    },
    Copy {
        dst: Slot,
        src: Slot,
        width: u32,
    },
    FatCast {
        dst: Slot,
        src: Slot,
        valid: Option<Slot>,
        bounds_check: bool,
        reset_offset: bool,
        static_bytes: Option<u64>,
    },
    ExtPacked {
        dst: Slot,
        src: Slot,
        from: ElemType,
        src_n: u32,
        index: u32,
        out_n: u32,
    },
    Mfma {
        dst: Slot,
        a: Slot,
        b: Slot,
        c: Slot,
        m: u32,
        n: u32,
        k: u32,
        kl: u32,
        t: ElemType,
        /// f32 operands read as xf32 (`reducePrecision`).
        xf32: bool,
    },
    Bitrev {
        dst: Slot,
        a: Slot,
        bits: u32,
        n: u32,
    },
    Funnel {
        left: bool,
        dst: Slot,
        a: Slot,
        b: Slot,
        c: Slot,
        bits: u32,
        n: u32,
    },
    Barrier,
    /// Memory fences order global memory between workgroups; workgroups run one after another here.
    Fence,
    /// memref.atomic_rmw addi on i32: `dst = old; mem[idx] = old + val`, lane by lane.
    AtomicAdd {
        dst: Slot,
        val: Slot,
        mem: Slot,
        idx: Slot,
        mt: MemTy,
    },
    For {
        lb: Slot,
        ub: Slot,
        step: Slot,
        bits: u32,
        unsigned: bool,
        iv: Slot,
        args: Vec<Slot>,
        inits: Vec<Slot>,
        results: Vec<Slot>,
        yields: Vec<Slot>,
        body: Vec<Inst>,
    },
    If {
        cond: Slot,
        then_body: Vec<Inst>,
        then_yields: Vec<Slot>,
        else_body: Vec<Inst>,
        else_yields: Vec<Slot>,
        results: Vec<Slot>,
    },
    Call {
        func: usize,
        args: Vec<Slot>,
        results: Vec<Slot>,
    },
    Return {
        vals: Vec<Slot>,
    },
}

#[derive(Debug)]
pub(crate) struct KernelInfo {
    pub inputs: usize,
    pub workgroup: Vec<(Slot, MemTy)>,
    pub known_block: Option<[u32; 3]>,
}

#[derive(Debug)]
pub(crate) struct Func {
    pub name: String,
    pub params: Vec<Slot>,
    pub results: Vec<Ty>,
    pub slots: Vec<SlotInfo>,
    /// Words per lane of all slots together.
    pub words: usize,
    pub body: Vec<Inst>,
    pub kernel: Option<KernelInfo>,
}

#[derive(Debug)]
pub(crate) struct Program {
    /// `funcs[0]` is the entry function.
    pub funcs: Vec<Func>,
    pub ops: Vec<OpInfo>,
    pub op_names: Vec<String>,
}

impl Program {
    pub fn describe(&self, op: u32) -> String {
        self.ops
            .get(op as usize)
            .map_or_else(|| format!("op #{op}"), OpInfo::describe)
    }
}

/// Translates `entry` and every function it calls.
pub(crate) fn compile(module: &Module, entry: &str) -> Result<Program, InterpError> {
    let mut table: HashMap<String, Vec<OperationRef>> = HashMap::new();
    collect_funcs(module.body(), &mut table)?;
    let mut c = Compiler {
        table,
        index: HashMap::new(),
        queue: vec![],
        types: HashMap::new(),
        ops: vec![],
        op_names: vec![],
        op_name_ids: HashMap::new(),
        slots: vec![],
        keys: HashMap::new(),
        words: 0,
        func: String::new(),
        ordinal: 0,
    };
    c.func_index(entry)?;
    let mut funcs: Vec<Option<Func>> = vec![];
    while let Some((i, name)) = c.queue.pop() {
        let op = c.lookup(&name)?;
        let f = c.function(op, &name)?;
        if funcs.len() <= i {
            funcs.resize_with(i + 1, || None);
        }
        funcs[i] = Some(f);
    }
    let funcs = funcs
        .into_iter()
        .enumerate()
        .map(|(i, f)| f.ok_or_else(|| InterpError::UnknownFunction(format!("#{i}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Program {
        funcs,
        ops: c.ops,
        op_names: c.op_names,
    })
}

fn op_name(op: &OperationRef) -> String {
    op.name()
        .as_string_ref()
        .as_str()
        .unwrap_or("<non-utf8>")
        .to_string()
}

/// Functions by symbol name, in the module and in nested `builtin.module` / `gpu.module` bodies.
fn collect_funcs<'c, 'a>(
    block: BlockRef<'c, 'a>,
    out: &mut HashMap<String, Vec<OperationRef<'c, 'a>>>,
) -> Result<(), InterpError> {
    let mut next = block.first_operation();
    while let Some(op) = next {
        let name = op_name(&op);
        match name.as_str() {
            "func.func" | "gpu.func" => {
                if let Ok(sym) = op.attribute("sym_name").and_then(StringAttribute::try_from) {
                    out.entry(sym.value().to_string()).or_default().push(op);
                }
            }
            "builtin.module" | "gpu.module" => {
                for region in op.regions() {
                    if let Some(b) = region.first_block() {
                        collect_funcs(b, out)?;
                    }
                }
            }
            _ => {}
        }
        next = op.next_in_block();
    }
    Ok(())
}

struct Compiler<'c, 'a> {
    table: HashMap<String, Vec<OperationRef<'c, 'a>>>,
    index: HashMap<String, usize>,
    queue: Vec<(usize, String)>,
    types: HashMap<usize, Ty>,
    ops: Vec<OpInfo>,
    op_names: Vec<String>,
    op_name_ids: HashMap<String, u32>,
    // Per function:
    slots: Vec<SlotInfo>,
    keys: HashMap<usize, Slot>,
    words: usize,
    func: String,
    ordinal: u32,
}

fn malformed(op: &str, reason: impl Into<String>) -> InterpError {
    InterpError::Malformed {
        op: op.to_string(),
        reason: reason.into(),
    }
}

fn unsupported(op: &str, reason: impl Into<String>) -> InterpError {
    InterpError::Unsupported {
        op: op.to_string(),
        reason: reason.into(),
    }
}

fn key<'c, 'a>(v: impl ValueLike<'c> + Copy) -> usize {
    v.to_raw().ptr as usize
}

impl<'c, 'a> Compiler<'c, 'a> {
    fn func_index(&mut self, name: &str) -> Result<usize, InterpError> {
        if let Some(i) = self.index.get(name) {
            return Ok(*i);
        }
        self.lookup(name)?;
        let i = self.index.len();
        self.index.insert(name.to_string(), i);
        self.queue.push((i, name.to_string()));
        Ok(i)
    }

    fn lookup(&self, name: &str) -> Result<OperationRef<'c, 'a>, InterpError> {
        match self.table.get(name).map(Vec::as_slice) {
            Some([op]) => Ok(*op),
            Some([]) | None => Err(InterpError::UnknownFunction(name.to_string())),
            Some(_) => Err(unsupported(
                "func.call",
                format!("symbol @{name} is defined more than once in the module"),
            )),
        }
    }

    fn ty(&mut self, t: Type<'c>) -> Result<Ty, InterpError> {
        let k = t.to_raw().ptr as usize;
        if let Some(ty) = self.types.get(&k) {
            return Ok(*ty);
        }
        let ty = Ty::parse(&t.to_string())?;
        self.types.insert(k, ty);
        Ok(ty)
    }

    fn def(&mut self, v: impl ValueLike<'c> + Copy) -> Result<Slot, InterpError> {
        let ty = self.ty(v.r#type())?;
        let s = self.slots.len() as Slot;
        self.slots.push(SlotInfo {
            base: self.words,
            width: ty.width(),
            ty,
        });
        self.words += ty.width() as usize;
        self.keys.insert(key(v), s);
        Ok(s)
    }

    fn slot_ty(&self, s: Slot) -> Ty {
        self.slots[s as usize].ty
    }

    fn function(&mut self, op: OperationRef<'c, 'a>, name: &str) -> Result<Func, InterpError> {
        self.slots.clear();
        self.keys.clear();
        self.words = 0;
        self.func = name.to_string();
        self.ordinal = 0;
        let kind = op_name(&op);
        let region = op
            .region(0)
            .map_err(|_| malformed(&kind, format!("@{name} has no body")))?;
        let block = region.first_block().ok_or_else(|| {
            unsupported(&kind, format!("@{name} is a declaration without a body"))
        })?;
        if block.next_in_region().is_some() {
            return Err(unsupported(
                &kind,
                format!("@{name} has more than one block (unstructured control flow)"),
            ));
        }
        let nargs = block.argument_count();
        let mut args = vec![];
        for i in 0..nargs {
            let a = block
                .argument(i)
                .map_err(|e| malformed(&kind, e.to_string()))?;
            args.push(self.def(a)?);
        }
        let inputs = match op
            .attribute("function_type")
            .and_then(TypeAttribute::try_from)
        {
            Ok(t) => FunctionType::try_from(t.value())
                .map_err(|e| malformed(&kind, e.to_string()))?
                .input_count(),
            Err(_) => nargs,
        };
        let kernel = if kind == "gpu.func" {
            let nwg = op
                .attribute("workgroup_attributions")
                .ok()
                .and_then(|a| IntegerAttribute::try_from(a).ok())
                .map_or(0, |a| a.value()) as usize;
            if inputs + nwg != nargs {
                return Err(unsupported(&kind, "private memory attributions"));
            }
            let mut workgroup = vec![];
            for s in &args[inputs..] {
                match self.slot_ty(*s) {
                    Ty::MemRef(mt) if mt.len.is_some() => workgroup.push((*s, mt)),
                    t => {
                        return Err(unsupported(
                            &kind,
                            format!("workgroup attribution of type {}", t.name()),
                        ))
                    }
                }
            }
            let known_block = match op.attribute("known_block_size") {
                Ok(a) => {
                    let d = DenseI32ArrayAttribute::try_from(a)
                        .map_err(|e| malformed(&kind, e.to_string()))?;
                    let mut out = [1u32; 3];
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = d.element(i).map_err(|e| malformed(&kind, e.to_string()))? as u32;
                    }
                    Some(out)
                }
                Err(_) => None,
            };
            Some(KernelInfo {
                inputs,
                workgroup,
                known_block,
            })
        } else {
            None
        };
        let (body, _yields, ret) = self.block(block)?;
        let results = match ret {
            Some(vals) => vals.iter().map(|s| self.slot_ty(*s)).collect(),
            None => {
                return Err(malformed(
                    &kind,
                    format!("@{name} does not end in a return"),
                ))
            }
        };
        Ok(Func {
            name: name.to_string(),
            params: args[..inputs].to_vec(),
            results,
            slots: std::mem::take(&mut self.slots),
            words: self.words,
            body,
            kernel,
        })
    }

    fn use_(&self, op: &str, v: Value<'c, '_>) -> Result<Slot, InterpError> {
        self.keys
            .get(&key(v))
            .copied()
            .ok_or_else(|| malformed(op, "operand defined outside the function"))
    }

    fn operands(&self, op: &OperationRef<'c, 'a>, name: &str) -> Result<Vec<Slot>, InterpError> {
        op.operands().map(|v| self.use_(name, v)).collect()
    }

    fn results(&mut self, op: &OperationRef<'c, 'a>) -> Result<Vec<Slot>, InterpError> {
        let mut out = vec![];
        for r in op.results() {
            out.push(self.def(r)?);
        }
        Ok(out)
    }

    fn op_id(&mut self, name: &str) -> u32 {
        let name_id = match self.op_name_ids.get(name) {
            Some(i) => *i,
            None => {
                let i = self.op_names.len() as u32;
                self.op_names.push(name.to_string());
                self.op_name_ids.insert(name.to_string(), i);
                i
            }
        };
        self.ordinal += 1;
        self.ops.push(OpInfo {
            name: name.to_string(),
            func: self.func.clone(),
            ordinal: self.ordinal,
            name_id,
        });
        (self.ops.len() - 1) as u32
    }

    /// Translates a block; returns its instructions, its `scf.yield` operands and its `*.return` operands.
    #[allow(clippy::type_complexity)]
    fn block(
        &mut self,
        block: BlockRef<'c, 'a>,
    ) -> Result<(Vec<Inst>, Vec<Slot>, Option<Vec<Slot>>), InterpError> {
        let mut insts = vec![];
        let mut yields = vec![];
        let mut ret = None;
        let mut next = block.first_operation();
        while let Some(op) = next {
            next = op.next_in_block();
            let name = op_name(&op);
            match name.as_str() {
                "scf.yield" => {
                    yields = self.operands(&op, &name)?;
                }
                "func.return" | "gpu.return" => {
                    let vals = self.operands(&op, &name)?;
                    let id = self.op_id(&name);
                    insts.push(Inst {
                        op: id,
                        kind: Kind::Return { vals: vals.clone() },
                    });
                    ret = Some(vals);
                }
                _ => {
                    let id = self.op_id(&name);
                    let kind = self.op(&op, &name)?;
                    insts.push(Inst { op: id, kind });
                }
            }
        }
        Ok((insts, yields, ret))
    }

    fn attr(
        &self,
        op: &OperationRef<'c, 'a>,
        name: &str,
        attr: &str,
    ) -> Result<Attribute<'c>, InterpError> {
        op.attribute(attr)
            .map_err(|_| malformed(name, format!("missing attribute {attr}")))
    }

    fn int_attr(
        &self,
        op: &OperationRef<'c, 'a>,
        name: &str,
        attr: &str,
    ) -> Result<i64, InterpError> {
        let a = self.attr(op, name, attr)?;
        IntegerAttribute::try_from(a)
            .map(|i| i.value())
            .map_err(|_| malformed(name, format!("attribute {attr} is not an integer: {a}")))
    }

    fn i64_array(
        &self,
        op: &OperationRef<'c, 'a>,
        name: &str,
        attr: &str,
    ) -> Result<Vec<i64>, InterpError> {
        let a = self.attr(op, name, attr)?;
        let d = DenseI64ArrayAttribute::try_from(a).map_err(|e| malformed(name, e.to_string()))?;
        (0..d.len())
            .map(|i| d.element(i).map_err(|e| malformed(name, e.to_string())))
            .collect()
    }

    fn op(&mut self, op: &OperationRef<'c, 'a>, name: &str) -> Result<Kind, InterpError> {
        let ops = self.operands(op, name)?;
        let arity = |n: usize| -> Result<(), InterpError> {
            if ops.len() == n {
                Ok(())
            } else {
                Err(malformed(
                    name,
                    format!("expected {n} operands, found {}", ops.len()),
                ))
            }
        };
        // Ops below that index their operands without an exact arity check need at least this many.
        let need = match name {
            "vector.extract" | "memref.reinterpret_cast" | "amdgpu.fat_raw_buffer_cast" => 1,
            "vector.insert" => 2,
            _ => 0,
        };
        if ops.len() < need {
            return Err(malformed(
                name,
                format!("expected at least {need} operands"),
            ));
        }
        let int_bin = |f: IntOp| Some(f);
        let ibin = match name {
            "arith.addi" => int_bin(IntOp::Add),
            "arith.subi" => int_bin(IntOp::Sub),
            "arith.muli" => int_bin(IntOp::Mul),
            "arith.divui" => int_bin(IntOp::DivU),
            "arith.remui" => int_bin(IntOp::RemU),
            "arith.divsi" => int_bin(IntOp::DivS),
            "arith.remsi" => int_bin(IntOp::RemS),
            "arith.andi" => int_bin(IntOp::And),
            "arith.ori" => int_bin(IntOp::Or),
            "arith.xori" => int_bin(IntOp::Xor),
            "arith.shli" => int_bin(IntOp::Shl),
            "arith.shrui" => int_bin(IntOp::ShrU),
            "arith.shrsi" => int_bin(IntOp::ShrS),
            "arith.minui" => int_bin(IntOp::MinU),
            "arith.maxui" => int_bin(IntOp::MaxU),
            "arith.minsi" => int_bin(IntOp::MinS),
            "arith.maxsi" => int_bin(IntOp::MaxS),
            _ => None,
        };
        if let Some(f) = ibin {
            arity(2)?;
            let dst = self.results(op)?[0];
            let (e, n) = self.int_shape(name, dst)?;
            return Ok(Kind::IntBin {
                f,
                dst,
                a: ops[0],
                b: ops[1],
                bits: e.bits(),
                n,
            });
        }
        let fbin = match name {
            "arith.addf" => Some(FOp::Add),
            "arith.subf" => Some(FOp::Sub),
            "arith.mulf" => Some(FOp::Mul),
            "arith.divf" => Some(FOp::Div),
            "arith.maximumf" => Some(FOp::Maximum),
            "arith.minimumf" => Some(FOp::Minimum),
            "arith.maxnumf" => Some(FOp::MaxNum),
            "arith.minnumf" => Some(FOp::MinNum),
            _ => None,
        };
        if let Some(f) = fbin {
            arity(2)?;
            let dst = self.results(op)?[0];
            let (t, n) = self.float_shape(name, dst)?;
            return Ok(Kind::FBin {
                f,
                dst,
                a: ops[0],
                b: ops[1],
                t,
                n,
            });
        }
        if name == "math.fma" {
            arity(3)?;
            let dst = self.results(op)?[0];
            let (t, n) = self.float_shape(name, dst)?;
            if t != ElemType::F32 {
                return Err(malformed(name, "only f32 fma is supported"));
            }
            return Ok(Kind::Fma {
                dst,
                a: ops[0],
                b: ops[1],
                c: ops[2],
                n,
            });
        }
        let conv = match name {
            "arith.index_cast" | "arith.extsi" | "arith.trunci" => Some(Conv::IntS),
            "arith.index_castui" | "arith.extui" => Some(Conv::IntU),
            "arith.extf" | "arith.truncf" => Some(Conv::Float),
            "arith.sitofp" => Some(Conv::SiToFp),
            "arith.uitofp" => Some(Conv::UiToFp),
            "arith.bitcast" => Some(Conv::Bits),
            _ => None,
        };
        if let Some(f) = conv {
            arity(1)?;
            let dst = self.results(op)?[0];
            let (from, fnn) =
                shape(self.slot_ty(ops[0])).ok_or_else(|| malformed(name, "non-value operand"))?;
            let (to, n) =
                shape(self.slot_ty(dst)).ok_or_else(|| malformed(name, "non-value result"))?;
            if fnn != n {
                return Err(malformed(name, "operand and result lengths differ"));
            }
            if f == Conv::Float {
                if let Ok(a) = op.attribute("roundingmode") {
                    if !a.to_string().contains("to_nearest_even") {
                        return Err(unsupported(name, format!("rounding mode {a}")));
                    }
                }
                if from.is_int() || to.is_int() {
                    return Err(malformed(name, "integer operand"));
                }
                if from.bits() > to.bits() && float_bits(to, 0.0).is_none() {
                    return Err(unsupported(name, format!("truncation to {}", to.name())));
                }
            }
            if f == Conv::Bits && from.bits() != to.bits() {
                return Err(malformed(name, "bitcast between different widths"));
            }
            if matches!(f, Conv::SiToFp | Conv::UiToFp) && float_bits(to, 0.0).is_none() {
                return Err(unsupported(name, format!("conversion to {}", to.name())));
            }
            return Ok(Kind::Convert {
                f,
                dst,
                src: ops[0],
                from,
                to,
                n,
            });
        }
        match name {
            "arith.constant" => {
                let dst = self.results(op)?[0];
                let ty = self.slot_ty(dst);
                let a = self.attr(op, name, "value")?;
                let words = const_words(name, a, ty)?;
                Ok(Kind::Const { dst, words })
            }
            "ub.poison" => {
                // Poison is any value; zero keeps runs deterministic.
                let dst = self.results(op)?[0];
                let words = vec![0; self.slot_ty(dst).width() as usize];
                Ok(Kind::Const { dst, words })
            }
            "arith.cmpi" => {
                arity(2)?;
                let dst = self.results(op)?[0];
                let pred = self.int_attr(op, name, "predicate")?;
                if !(0..=9).contains(&pred) {
                    return Err(malformed(name, format!("predicate {pred}")));
                }
                let (e, n) = shape(self.slot_ty(ops[0]))
                    .ok_or_else(|| malformed(name, "non-value operand"))?;
                Ok(Kind::Cmpi {
                    pred,
                    dst,
                    a: ops[0],
                    b: ops[1],
                    bits: e.bits(),
                    n,
                })
            }
            "arith.cmpf" => {
                arity(2)?;
                let dst = self.results(op)?[0];
                let pred = self.int_attr(op, name, "predicate")?;
                if !(0..=15).contains(&pred) {
                    return Err(malformed(name, format!("predicate {pred}")));
                }
                let (t, n) = shape(self.slot_ty(ops[0]))
                    .ok_or_else(|| malformed(name, "non-value operand"))?;
                Ok(Kind::Cmpf {
                    pred,
                    dst,
                    a: ops[0],
                    b: ops[1],
                    t,
                    n,
                })
            }
            "arith.negf" => {
                arity(1)?;
                let dst = self.results(op)?[0];
                let (t, n) = self.float_shape(name, dst)?;
                Ok(Kind::Negf {
                    dst,
                    a: ops[0],
                    t,
                    n,
                })
            }
            "arith.select" => {
                arity(3)?;
                let dst = self.results(op)?[0];
                let n = self.slot_ty(dst).width();
                let vec_cond = matches!(self.slot_ty(ops[0]), Ty::Vector(..));
                Ok(Kind::Select {
                    dst,
                    c: ops[0],
                    a: ops[1],
                    b: ops[2],
                    n,
                    vec_cond,
                })
            }
            "vector.bitcast" => {
                arity(1)?;
                let dst = self.results(op)?[0];
                let (from, from_n) =
                    shape(self.slot_ty(ops[0])).ok_or_else(|| malformed(name, "non-vector"))?;
                let (to, to_n) =
                    shape(self.slot_ty(dst)).ok_or_else(|| malformed(name, "non-vector"))?;
                if from.bits() * from_n != to.bits() * to_n {
                    return Err(malformed(name, "bit widths differ"));
                }
                Ok(Kind::Repack {
                    dst,
                    src: ops[0],
                    from,
                    from_n,
                    to,
                    to_n,
                })
            }
            "vector.broadcast" | "vector.splat" => {
                arity(1)?;
                let dst = self.results(op)?[0];
                let n = self.slot_ty(dst).width();
                let src_n = self.slot_ty(ops[0]).width();
                if src_n != 1 && src_n != n {
                    return Err(unsupported(name, "broadcast of a vector to another length"));
                }
                Ok(Kind::Broadcast {
                    dst,
                    src: ops[0],
                    n,
                    src_n,
                })
            }
            "vector.extract" => {
                let dst = self.results(op)?[0];
                if !matches!(self.slot_ty(dst), Ty::Scalar(_)) {
                    return Err(unsupported(name, "extracting a sub-vector"));
                }
                let src_n = self.slot_ty(ops[0]).width();
                let pos = self.i64_array(op, name, "static_position")?;
                let pos = match (pos.as_slice(), ops.len()) {
                    ([i64::MIN], 2) => Pos::Dynamic(ops[1]),
                    ([p], 1) if (0..i64::from(src_n)).contains(p) => Pos::Static(*p as u32),
                    _ => return Err(unsupported(name, format!("position {pos:?}"))),
                };
                Ok(Kind::Extract {
                    dst,
                    src: ops[0],
                    src_n,
                    pos,
                })
            }
            "vector.insert" => {
                let dst = self.results(op)?[0];
                if !matches!(self.slot_ty(ops[0]), Ty::Scalar(_)) {
                    return Err(unsupported(name, "inserting a sub-vector"));
                }
                let n = self.slot_ty(dst).width();
                let pos = self.i64_array(op, name, "static_position")?;
                let pos = match (pos.as_slice(), ops.len()) {
                    ([i64::MIN], 3) => Pos::Dynamic(ops[2]),
                    ([p], 2) if (0..i64::from(n)).contains(p) => Pos::Static(*p as u32),
                    _ => return Err(unsupported(name, format!("position {pos:?}"))),
                };
                Ok(Kind::Insert {
                    dst,
                    val: ops[0],
                    dest: ops[1],
                    n,
                    pos,
                })
            }
            "vector.shuffle" => {
                arity(2)?;
                let dst = self.results(op)?[0];
                let a_n = self.slot_ty(ops[0]).width();
                let b_n = self.slot_ty(ops[1]).width();
                if !matches!(self.slot_ty(ops[0]), Ty::Vector(..)) {
                    return Err(unsupported(name, "0-d shuffle"));
                }
                let mask = self.i64_array(op, name, "mask")?;
                if mask.len() != self.slot_ty(dst).width() as usize
                    || mask
                        .iter()
                        .any(|m| *m != -1 && !(0..i64::from(a_n + b_n)).contains(m))
                {
                    return Err(malformed(name, format!("mask {mask:?}")));
                }
                Ok(Kind::Shuffle {
                    dst,
                    a: ops[0],
                    b: ops[1],
                    a_n,
                    b_n,
                    mask,
                })
            }
            "vector.from_elements" => {
                let dst = self.results(op)?[0];
                if ops.len() != self.slot_ty(dst).width() as usize {
                    return Err(malformed(name, "element count"));
                }
                Ok(Kind::FromElements { dst, srcs: ops })
            }
            "vector.load" | "memref.load" => {
                arity(2)?;
                let dst = self.results(op)?[0];
                let mt = self.memref(name, ops[0])?;
                let (e, n) = shape(self.slot_ty(dst)).ok_or_else(|| malformed(name, "result"))?;
                if e != mt.elem {
                    return Err(unsupported(name, "element type differs from the memref's"));
                }
                Ok(Kind::Load {
                    dst,
                    mem: ops[0],
                    idx: ops[1],
                    mt,
                    n,
                })
            }
            "llvm.fence" => Ok(Kind::Fence),
            "memref.atomic_rmw" => {
                arity(3)?;
                // MLIR's AtomicRMWKind: 1 is addi.
                if self.int_attr(op, name, "kind")? != 1 {
                    return Err(unsupported(name, "only addi"));
                }
                let mt = self.memref(name, ops[1])?;
                if mt.elem != ElemType::Int(32) {
                    return Err(unsupported(name, "only i32"));
                }
                Ok(Kind::AtomicAdd {
                    dst: self.results(op)?[0],
                    val: ops[0],
                    mem: ops[1],
                    idx: ops[2],
                    mt,
                })
            }
            "vector.store" | "memref.store" => {
                arity(3)?;
                let mt = self.memref(name, ops[1])?;
                let (e, n) = shape(self.slot_ty(ops[0])).ok_or_else(|| malformed(name, "value"))?;
                if e != mt.elem {
                    return Err(unsupported(name, "element type differs from the memref's"));
                }
                Ok(Kind::Store {
                    val: ops[0],
                    mem: ops[1],
                    idx: ops[2],
                    mt,
                    n,
                })
            }
            "memref.cast" => {
                arity(1)?;
                let dst = self.results(op)?[0];
                let a = self.memref(name, ops[0])?;
                let b = self.memref(name, dst)?;
                if a.space != b.space || a.elem != b.elem {
                    return Err(unsupported(name, "cast across spaces or element types"));
                }
                Ok(Kind::Copy {
                    dst,
                    src: ops[0],
                    width: super::types::VIEW_WORDS,
                })
            }
            "memref.reinterpret_cast" => {
                let dst = self.results(op)?[0];
                let mt = self.memref(name, ops[0])?;
                let offs = self.i64_array(op, name, "static_offsets")?;
                let strides = self.i64_array(op, name, "static_strides")?;
                if strides != [1] {
                    return Err(unsupported(name, format!("strides {strides:?}")));
                }
                let off = match offs.as_slice() {
                    [i64::MIN] => Err(*ops
                        .get(1)
                        .ok_or_else(|| malformed(name, "dynamic offset operand"))?),
                    [o] => Ok(*o),
                    _ => return Err(unsupported(name, format!("offsets {offs:?}"))),
                };
                Ok(Kind::View {
                    dst,
                    src: ops[0],
                    off,
                    esize: u64::from(mt.elem.bits() / 8),
                })
            }
            "amdgpu.fat_raw_buffer_cast" => {
                let dst = self.results(op)?[0];
                let mt = self.memref(name, ops[0])?;
                // Operand segments: source, optional validBytes, optional cacheSwizzleStride.
                let seg = match op.attribute("operandSegmentSizes") {
                    Ok(a) => {
                        let d = DenseI32ArrayAttribute::try_from(a)
                            .map_err(|e| malformed(name, e.to_string()))?;
                        (0..d.len())
                            .map(|i| d.element(i).unwrap_or(0))
                            .collect::<Vec<_>>()
                    }
                    Err(_) => vec![1, (ops.len() > 1) as i32, 0],
                };
                let valid = if seg.get(1).copied().unwrap_or(0) == 1 {
                    Some(
                        *ops.get(1)
                            .ok_or_else(|| malformed(name, "validBytes operand"))?,
                    )
                } else {
                    None
                };
                let bounds_check = match op.attribute("boundsCheck") {
                    Ok(a) => melior::ir::attribute::BoolAttribute::try_from(a)
                        .map(|b| b.value())
                        .unwrap_or(true),
                    Err(_) => true,
                };
                Ok(Kind::FatCast {
                    dst,
                    src: ops[0],
                    valid,
                    bounds_check,
                    reset_offset: op.has_attribute("resetOffset"),
                    static_bytes: mt
                        .len
                        .map(|l| l.saturating_mul(u64::from(mt.elem.bits() / 8))),
                })
            }
            "amdgpu.ext_packed_fp8" => {
                arity(1)?;
                let dst = self.results(op)?[0];
                let (from, src_n) =
                    shape(self.slot_ty(ops[0])).ok_or_else(|| malformed(name, "source"))?;
                if from.bits() != 8 || from.is_int() {
                    return Err(unsupported(name, format!("source element {}", from.name())));
                }
                let (to, out_n) =
                    shape(self.slot_ty(dst)).ok_or_else(|| malformed(name, "result"))?;
                if to != ElemType::F32 || out_n > 2 {
                    return Err(unsupported(name, "result must be f32 or vector<2xf32>"));
                }
                let index = self.int_attr(op, name, "index")?;
                let first = index * i64::from(out_n);
                if index < 0 || first + i64::from(out_n) > i64::from(src_n) {
                    return Err(malformed(
                        name,
                        format!("index {index} reads past the {src_n}-element source"),
                    ));
                }
                Ok(Kind::ExtPacked {
                    dst,
                    src: ops[0],
                    from,
                    src_n,
                    index: index as u32,
                    out_n,
                })
            }
            "amdgpu.mfma" => {
                arity(3)?;
                let dst = self.results(op)?[0];
                let m = self.int_attr(op, name, "m")? as u32;
                let n = self.int_attr(op, name, "n")? as u32;
                let k = self.int_attr(op, name, "k")? as u32;
                let blocks = self.int_attr(op, name, "blocks").unwrap_or(1);
                let cbsz = self.int_attr(op, name, "cbsz").unwrap_or(0);
                let abid = self.int_attr(op, name, "abid").unwrap_or(0);
                let blgp_ok = op
                    .attribute("blgp")
                    .map_or(true, |a| a.to_string().contains("none"));
                if blocks != 1 || cbsz != 0 || abid != 0 || !blgp_ok {
                    return Err(unsupported(
                        name,
                        "blocks/cbsz/abid/blgp other than the defaults",
                    ));
                }
                for flag in ["negateA", "negateB", "negateC"] {
                    if op.has_attribute(flag) {
                        return Err(unsupported(name, flag));
                    }
                }
                let xf32 = op.has_attribute("reducePrecision");
                let (t, kl) = shape(self.slot_ty(ops[0])).ok_or_else(|| malformed(name, "A"))?;
                let (tb, klb) = shape(self.slot_ty(ops[1])).ok_or_else(|| malformed(name, "B"))?;
                let (tc, cn) = shape(self.slot_ty(ops[2])).ok_or_else(|| malformed(name, "C"))?;
                let operands_ok = if xf32 {
                    t == ElemType::F32
                } else {
                    matches!(t, ElemType::Bf16 | ElemType::F16)
                };
                if !operands_ok || tb != t || klb != kl || tc != ElemType::F32 {
                    return Err(unsupported(
                        name,
                        "operands other than bf16/f16 (or f32 with reducePrecision) with f32 accumulators",
                    ));
                }
                // The two bf16 atoms whose layouts are documented (shared/reference/mfma-layouts.md), and xf32
                // 16x16x8, whose layout is the same pattern with two elements per lane (see `Exec::mfma`).
                let ok = if xf32 {
                    (m, n, k, kl, cn) == (16, 16, 8, 2, 4)
                } else {
                    matches!((m, n, k, kl, cn), (16, 16, 16, 4, 4) | (32, 32, 8, 4, 16))
                };
                if !ok {
                    return Err(unsupported(
                        name,
                        format!("{m}x{n}x{k} with {kl}-element operands and {cn} accumulators"),
                    ));
                }
                Ok(Kind::Mfma {
                    dst,
                    a: ops[0],
                    b: ops[1],
                    c: ops[2],
                    m,
                    n,
                    k,
                    kl,
                    t,
                    xf32,
                })
            }
            "llvm.intr.bitreverse" => {
                arity(1)?;
                let dst = self.results(op)?[0];
                let (e, n) = self.int_shape(name, dst)?;
                Ok(Kind::Bitrev {
                    dst,
                    a: ops[0],
                    bits: e.bits(),
                    n,
                })
            }
            "llvm.intr.fshl" | "llvm.intr.fshr" => {
                arity(3)?;
                let dst = self.results(op)?[0];
                let (e, n) = self.int_shape(name, dst)?;
                Ok(Kind::Funnel {
                    left: name == "llvm.intr.fshl",
                    dst,
                    a: ops[0],
                    b: ops[1],
                    c: ops[2],
                    bits: e.bits(),
                    n,
                })
            }
            "gpu.thread_id" | "gpu.block_id" | "gpu.block_dim" | "gpu.grid_dim" => {
                let dst = self.results(op)?[0];
                let d = self.attr(op, name, "dimension")?.to_string();
                let dim = if d.contains("dim x") {
                    0
                } else if d.contains("dim y") {
                    1
                } else if d.contains("dim z") {
                    2
                } else {
                    return Err(malformed(name, format!("dimension {d}")));
                };
                let which = match name {
                    "gpu.thread_id" => IdKind::Thread,
                    "gpu.block_id" => IdKind::Block,
                    "gpu.block_dim" => IdKind::BlockDim,
                    _ => IdKind::GridDim,
                };
                Ok(Kind::Id { dst, which, dim })
            }
            // `amdgpu.lds_barrier` waits for LDS traffic and the workgroup barrier: the same synchronization here.
            "gpu.barrier" | "amdgpu.lds_barrier" => Ok(Kind::Barrier),
            "scf.for" => {
                if ops.len() < 3 {
                    return Err(malformed(name, "bounds"));
                }
                let results = self.results(op)?;
                let region = op.region(0).map_err(|e| malformed(name, e.to_string()))?;
                let block = region
                    .first_block()
                    .ok_or_else(|| malformed(name, "empty body"))?;
                let iv = self.def(
                    block
                        .argument(0)
                        .map_err(|e| malformed(name, e.to_string()))?,
                )?;
                let mut args = vec![];
                for i in 1..block.argument_count() {
                    args.push(
                        self.def(
                            block
                                .argument(i)
                                .map_err(|e| malformed(name, e.to_string()))?,
                        )?,
                    );
                }
                let (body, yields, ret) = self.block(block)?;
                if ret.is_some() {
                    return Err(unsupported(name, "return inside a loop"));
                }
                let inits = ops[3..].to_vec();
                if inits.len() != args.len()
                    || yields.len() != args.len()
                    || results.len() != args.len()
                {
                    return Err(malformed(name, "iter_args / yield / results counts differ"));
                }
                let bits = match self.slot_ty(ops[0]) {
                    Ty::Scalar(e) if e.is_int() => e.bits(),
                    _ => return Err(malformed(name, "bounds must be integers")),
                };
                Ok(Kind::For {
                    lb: ops[0],
                    ub: ops[1],
                    step: ops[2],
                    bits,
                    unsigned: op.has_attribute("unsignedCmp"),
                    iv,
                    args,
                    inits,
                    results,
                    yields,
                    body,
                })
            }
            "scf.if" => {
                arity(1)?;
                let results = self.results(op)?;
                let mut bodies = vec![];
                for r in 0..2 {
                    let region = op.region(r).map_err(|e| malformed(name, e.to_string()))?;
                    match region.first_block() {
                        Some(b) => {
                            let (body, yields, ret) = self.block(b)?;
                            if ret.is_some() {
                                return Err(unsupported(name, "return inside scf.if"));
                            }
                            if yields.len() != results.len() {
                                return Err(malformed(name, "yield count"));
                            }
                            bodies.push((body, yields));
                        }
                        None => bodies.push((vec![], vec![])),
                    }
                }
                let (else_body, else_yields) = bodies.pop().unwrap_or_default();
                let (then_body, then_yields) = bodies.pop().unwrap_or_default();
                Ok(Kind::If {
                    cond: ops[0],
                    then_body,
                    then_yields,
                    else_body,
                    else_yields,
                    results,
                })
            }
            "func.call" => {
                let a = self.attr(op, name, "callee")?;
                let callee = FlatSymbolRefAttribute::try_from(a)
                    .map_err(|e| malformed(name, e.to_string()))?
                    .value()
                    .to_string();
                let func = self.func_index(&callee)?;
                let results = self.results(op)?;
                Ok(Kind::Call {
                    func,
                    args: ops,
                    results,
                })
            }
            _ => Err(unsupported(
                name,
                "operation not implemented by the interpreter",
            )),
        }
    }

    fn memref(&self, name: &str, s: Slot) -> Result<MemTy, InterpError> {
        match self.slot_ty(s) {
            Ty::MemRef(m) => Ok(m),
            t => Err(malformed(
                name,
                format!("expected a memref, found {}", t.name()),
            )),
        }
    }

    fn int_shape(&self, name: &str, s: Slot) -> Result<(ElemType, u32), InterpError> {
        match shape(self.slot_ty(s)) {
            Some((e, n)) if e.is_int() => Ok((e, n)),
            _ => Err(malformed(name, "expected integers")),
        }
    }

    fn float_shape(&self, name: &str, s: Slot) -> Result<(ElemType, u32), InterpError> {
        match shape(self.slot_ty(s)) {
            Some((e, n)) if e.is_float() => {
                if float_bits(e, 0.0).is_none() {
                    return Err(unsupported(name, format!("arithmetic on {}", e.name())));
                }
                Ok((e, n))
            }
            _ => Err(malformed(name, "expected floats")),
        }
    }
}

fn shape(t: Ty) -> Option<(ElemType, u32)> {
    match t {
        Ty::Scalar(e) => Some((e, 1)),
        Ty::Vector(e, n) => Some((e, n)),
        Ty::MemRef(_) => None,
    }
}

/// The words of an `arith.constant` value: integer, float, or dense (splat or not) elements.
fn const_words(name: &str, a: Attribute, ty: Ty) -> Result<Vec<u64>, InterpError> {
    let (e, n) = shape(ty).ok_or_else(|| unsupported(name, "memref constants"))?;
    let raw = a.to_raw();
    // SAFETY: `raw` is a live attribute of the module being translated; the queries below only read it, and
    // element indices stay below the element count the attribute reports.
    unsafe {
        if mlir_sys::mlirAttributeIsADenseElements(raw) {
            let count = mlir_sys::mlirElementsAttrGetNumElements(raw);
            if mlir_sys::mlirDenseElementsAttrIsSplat(raw) {
                let w = scalar_word(
                    name,
                    Attribute::from_raw(mlir_sys::mlirDenseElementsAttrGetSplatValue(raw)),
                    e,
                )?;
                return Ok(vec![w; n as usize]);
            }
            if count != i64::from(n) {
                return Err(malformed(name, "element count differs from the type"));
            }
            let mut out = vec![];
            for i in 0..count {
                let mut idx = [i as u64];
                let el = mlir_sys::mlirElementsAttrGetValue(raw, 1, idx.as_mut_ptr());
                out.push(scalar_word(name, Attribute::from_raw(el), e)?);
            }
            return Ok(out);
        }
    }
    if n != 1 || !matches!(ty, Ty::Scalar(_)) {
        return Err(unsupported(name, format!("constant {a}")));
    }
    Ok(vec![scalar_word(name, a, e)?])
}

fn scalar_word(name: &str, a: Attribute, e: ElemType) -> Result<u64, InterpError> {
    if let Ok(i) = IntegerAttribute::try_from(a) {
        // Signless and index attributes hold their value sign-extended; the slot keeps the low bits.
        return Ok((i.value() as u64) & e.mask());
    }
    if let Ok(b) = melior::ir::attribute::BoolAttribute::try_from(a) {
        return Ok(u64::from(b.value()));
    }
    if a.is_float() {
        // SAFETY: `a` is a float attribute of the module being translated.
        let v = unsafe { mlir_sys::mlirFloatAttrGetValueDouble(a.to_raw()) };
        if let Some(w) = float_bits(e, v) {
            return Ok(w);
        }
        // Minifloat constants are exact: find the code with this value.
        if e.bits() <= 8 {
            for code in 0..(1u64 << e.bits()) {
                let cv = float_value(e, code);
                if cv == v && cv.is_sign_negative() == v.is_sign_negative()
                    || (cv.is_nan() && v.is_nan())
                {
                    return Ok(code);
                }
            }
        }
        return Err(unsupported(
            name,
            format!("constant {a} of type {}", e.name()),
        ));
    }
    Err(unsupported(name, format!("constant attribute {a}")))
}
