//! A thin typed layer over `OperationBuilder`: one method per op the stages emit, each taking and returning
//! `Value`s, so the IR builders read like the kernel they describe.

use melior::{
    ir::{
        attribute::{
            DenseElementsAttribute, DenseI32ArrayAttribute, DenseI64ArrayAttribute,
            FlatSymbolRefAttribute, FloatAttribute, IntegerAttribute, StringAttribute,
            TypeAttribute,
        },
        operation::{OperationBuilder, OperationLike, OperationRef},
        r#type::{DimSize, FunctionType, IntegerType, MemRefType, ShapedTypeLike},
        Attribute, Block, BlockLike, BlockRef, Identifier, Location, Operation, Region, RegionLike,
        Type, Value, ValueLike,
    },
    Context,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IrError {
    #[error("building `{op}`: {message}")]
    Build { op: String, message: String },
    #[error("the {stage} module does not verify")]
    Verify { stage: &'static str },
    #[error("cannot parse attribute `{0}`")]
    Attribute(String),
}

/// Comparison predicates of `arith.cmpi`, by their MLIR enum value.
#[derive(Debug, Clone, Copy)]
pub enum Cmp {
    Eq = 0,
    Ne = 1,
    Slt = 2,
    Ult = 6,
    Uge = 9,
}

/// Whether LLVM may unroll a loop. The kernels' K loop says `Disable` (AMD): its body is already wide and
/// software-pipelined, and a short split-K trip count would otherwise become straight-line code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroll {
    Allow,
    Disable,
    /// `llvm.loop.unroll.count`: LLVM unrolls the loop this many times (with a remainder loop where the trip count
    /// is not a multiple).
    Count(u32),
}

/// Emits ops at the end of one block. Cheap to copy; nested regions get their own `Emitter`.
#[derive(Clone, Copy)]
pub struct Emitter<'c, 'b> {
    pub ctx: &'c Context,
    pub loc: Location<'c>,
    pub block: BlockRef<'c, 'b>,
    /// When set, ops are inserted before this op instead of at the end of the block (used by rewrites).
    pub anchor: Option<OperationRef<'c, 'b>>,
}

impl<'c, 'b> Emitter<'c, 'b> {
    pub fn new(ctx: &'c Context, loc: Location<'c>, block: BlockRef<'c, 'b>) -> Self {
        Emitter {
            ctx,
            loc,
            block,
            anchor: None,
        }
    }

    pub fn at(&self, block: BlockRef<'c, 'b>) -> Self {
        Emitter {
            block,
            anchor: None,
            ..*self
        }
    }

    /// An emitter that inserts before `op`, in `op`'s block.
    pub fn before(ctx: &'c Context, op: OperationRef<'c, 'b>) -> Option<Self> {
        let block = op.block()?;
        Some(Emitter {
            ctx,
            loc: op.location(),
            block,
            anchor: Some(op),
        })
    }

    // ---- types ----
    pub fn index(&self) -> Type<'c> {
        Type::index(self.ctx)
    }
    pub fn int(&self, bits: u32) -> Type<'c> {
        IntegerType::new(self.ctx, bits).into()
    }
    pub fn f32(&self) -> Type<'c> {
        Type::float32(self.ctx)
    }
    pub fn vector(&self, n: u64, elem: Type<'c>) -> Type<'c> {
        Type::vector(&[n], elem)
    }

    pub fn attr(&self, text: &str) -> Result<Attribute<'c>, IrError> {
        Attribute::parse(self.ctx, text).ok_or_else(|| IrError::Attribute(text.to_string()))
    }

    pub fn ident(&self, name: &str) -> Identifier<'c> {
        Identifier::new(self.ctx, name)
    }

    /// Builds and appends a generic op, returning all its results.
    pub fn op(
        &self,
        name: &str,
        operands: &[Value<'c, 'b>],
        results: &[Type<'c>],
        attrs: &[(&str, Attribute<'c>)],
    ) -> Result<Vec<Value<'c, 'b>>, IrError> {
        let attrs: Vec<_> = attrs.iter().map(|(k, v)| (self.ident(k), *v)).collect();
        let op = OperationBuilder::new(name, self.loc)
            .add_operands(operands)
            .add_results(results)
            .add_attributes(&attrs)
            .build()
            .map_err(|e| IrError::Build {
                op: name.to_string(),
                message: e.to_string(),
            })?;
        Ok(self.append(op))
    }

    /// Appends a finished op and returns its results.
    pub fn append(&self, op: Operation<'c>) -> Vec<Value<'c, 'b>> {
        let op = match self.anchor {
            Some(anchor) => self.block.insert_operation_before(anchor, op),
            None => self.block.append_operation(op),
        };
        op.results().map(Value::from).collect()
    }

    /// An op with exactly one result.
    pub fn op1(
        &self,
        name: &str,
        operands: &[Value<'c, 'b>],
        result: Type<'c>,
        attrs: &[(&str, Attribute<'c>)],
    ) -> Result<Value<'c, 'b>, IrError> {
        let r = self.op(name, operands, &[result], attrs)?;
        // op() appends exactly the result types requested.
        Ok(r[0])
    }

    // ---- arith ----
    pub fn const_int(&self, value: i64, ty: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1(
            "arith.constant",
            &[],
            ty,
            &[("value", IntegerAttribute::new(ty, value).into())],
        )
    }
    pub fn idx(&self, value: i64) -> Result<Value<'c, 'b>, IrError> {
        self.const_int(value, self.index())
    }
    pub fn i32c(&self, value: i64) -> Result<Value<'c, 'b>, IrError> {
        self.const_int(value, self.int(32))
    }
    pub fn f32c(&self, value: f64) -> Result<Value<'c, 'b>, IrError> {
        let ty = self.f32();
        self.op1(
            "arith.constant",
            &[],
            ty,
            &[("value", FloatAttribute::new(self.ctx, ty, value).into())],
        )
    }
    /// A dense splat constant of a vector type.
    pub fn splat_f32(&self, n: u64, value: f32) -> Result<Value<'c, 'b>, IrError> {
        let ty = self.vector(n, self.f32());
        let attr = DenseElementsAttribute::f32_splat(ty, value);
        self.op1("arith.constant", &[], ty, &[("value", attr.into())])
    }
    pub fn splat_i32(&self, n: u64, value: i32) -> Result<Value<'c, 'b>, IrError> {
        let ty = self.vector(n, self.int(32));
        let attr = DenseElementsAttribute::i32_splat(ty, value);
        self.op1("arith.constant", &[], ty, &[("value", attr.into())])
    }

    fn binary(
        &self,
        name: &str,
        a: Value<'c, 'b>,
        b: Value<'c, 'b>,
    ) -> Result<Value<'c, 'b>, IrError> {
        self.op1(name, &[a, b], a.r#type(), &[])
    }
    pub fn addi(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.addi", a, b)
    }
    pub fn subi(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.subi", a, b)
    }
    pub fn muli(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.muli", a, b)
    }
    pub fn divui(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.divui", a, b)
    }
    pub fn remui(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.remui", a, b)
    }
    pub fn andi(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.andi", a, b)
    }
    pub fn ori(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.ori", a, b)
    }
    pub fn xori(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.xori", a, b)
    }
    pub fn shli(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.shli", a, b)
    }
    pub fn shrui(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.shrui", a, b)
    }
    pub fn addf(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.addf", a, b)
    }
    pub fn mulf(&self, a: Value<'c, 'b>, b: Value<'c, 'b>) -> Result<Value<'c, 'b>, IrError> {
        self.binary("arith.mulf", a, b)
    }
    pub fn cmpi(
        &self,
        pred: Cmp,
        a: Value<'c, 'b>,
        b: Value<'c, 'b>,
    ) -> Result<Value<'c, 'b>, IrError> {
        let i64t = self.int(64);
        let i1 = self.int(1);
        self.op1(
            "arith.cmpi",
            &[a, b],
            i1,
            &[("predicate", IntegerAttribute::new(i64t, pred as i64).into())],
        )
    }
    pub fn select(
        &self,
        c: Value<'c, 'b>,
        a: Value<'c, 'b>,
        b: Value<'c, 'b>,
    ) -> Result<Value<'c, 'b>, IrError> {
        self.op1("arith.select", &[c, a, b], a.r#type(), &[])
    }
    pub fn index_cast(&self, v: Value<'c, 'b>, to: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1("arith.index_cast", &[v], to, &[])
    }
    pub fn bitcast(&self, v: Value<'c, 'b>, to: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1("arith.bitcast", &[v], to, &[])
    }
    pub fn extf(&self, v: Value<'c, 'b>, to: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1("arith.extf", &[v], to, &[])
    }
    pub fn truncf(&self, v: Value<'c, 'b>, to: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1("arith.truncf", &[v], to, &[])
    }
    pub fn extui(&self, v: Value<'c, 'b>, to: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1("arith.extui", &[v], to, &[])
    }
    pub fn trunci(&self, v: Value<'c, 'b>, to: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1("arith.trunci", &[v], to, &[])
    }
    pub fn uitofp(&self, v: Value<'c, 'b>, to: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1("arith.uitofp", &[v], to, &[])
    }

    // ---- vector ----
    pub fn vbitcast(&self, v: Value<'c, 'b>, to: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1("vector.bitcast", &[v], to, &[])
    }
    pub fn broadcast(&self, v: Value<'c, 'b>, to: Type<'c>) -> Result<Value<'c, 'b>, IrError> {
        self.op1("vector.broadcast", &[v], to, &[])
    }
    pub fn extract(
        &self,
        v: Value<'c, 'b>,
        pos: i64,
        elem: Type<'c>,
    ) -> Result<Value<'c, 'b>, IrError> {
        self.op1(
            "vector.extract",
            &[v],
            elem,
            &[(
                "static_position",
                DenseI64ArrayAttribute::new(self.ctx, &[pos]).into(),
            )],
        )
    }
    pub fn shuffle(
        &self,
        a: Value<'c, 'b>,
        b: Value<'c, 'b>,
        mask: &[i64],
        elem: Type<'c>,
    ) -> Result<Value<'c, 'b>, IrError> {
        let ty = self.vector(mask.len() as u64, elem);
        self.op1(
            "vector.shuffle",
            &[a, b],
            ty,
            &[("mask", DenseI64ArrayAttribute::new(self.ctx, mask).into())],
        )
    }
    pub fn from_elements(
        &self,
        elems: &[Value<'c, 'b>],
        ty: Type<'c>,
    ) -> Result<Value<'c, 'b>, IrError> {
        self.op1("vector.from_elements", elems, ty, &[])
    }
    pub fn vload(
        &self,
        mem: Value<'c, 'b>,
        idx: Value<'c, 'b>,
        ty: Type<'c>,
    ) -> Result<Value<'c, 'b>, IrError> {
        self.op1("vector.load", &[mem, idx], ty, &[])
    }
    /// `vector.load` with a known byte alignment (NVPTX emits one wide load only when the alignment is known).
    pub fn vload_aligned(
        &self,
        mem: Value<'c, 'b>,
        idx: Value<'c, 'b>,
        ty: Type<'c>,
        align: u32,
    ) -> Result<Value<'c, 'b>, IrError> {
        let a = IntegerAttribute::new(self.int(64), i64::from(align)).into();
        self.op1("vector.load", &[mem, idx], ty, &[("alignment", a)])
    }
    pub fn vstore_aligned(
        &self,
        v: Value<'c, 'b>,
        mem: Value<'c, 'b>,
        idx: Value<'c, 'b>,
        align: u32,
    ) -> Result<(), IrError> {
        let a = IntegerAttribute::new(self.int(64), i64::from(align)).into();
        self.op("vector.store", &[v, mem, idx], &[], &[("alignment", a)])?;
        Ok(())
    }
    pub fn vstore(
        &self,
        v: Value<'c, 'b>,
        mem: Value<'c, 'b>,
        idx: Value<'c, 'b>,
    ) -> Result<(), IrError> {
        self.op("vector.store", &[v, mem, idx], &[], &[])?;
        Ok(())
    }
    pub fn load(
        &self,
        mem: Value<'c, 'b>,
        idx: Value<'c, 'b>,
        ty: Type<'c>,
    ) -> Result<Value<'c, 'b>, IrError> {
        self.op1("memref.load", &[mem, idx], ty, &[])
    }
    pub fn store(
        &self,
        v: Value<'c, 'b>,
        mem: Value<'c, 'b>,
        idx: Value<'c, 'b>,
    ) -> Result<(), IrError> {
        self.op("memref.store", &[v, mem, idx], &[], &[])?;
        Ok(())
    }

    // ---- gpu / amdgpu ----
    pub fn thread_id(&self, dim: char) -> Result<Value<'c, 'b>, IrError> {
        let a = self.attr(&format!("#gpu<dim {dim}>"))?;
        self.op1("gpu.thread_id", &[], self.index(), &[("dimension", a)])
    }
    pub fn block_id(&self, dim: char) -> Result<Value<'c, 'b>, IrError> {
        let a = self.attr(&format!("#gpu<dim {dim}>"))?;
        self.op1("gpu.block_id", &[], self.index(), &[("dimension", a)])
    }
    pub fn barrier(&self) -> Result<(), IrError> {
        self.op("gpu.barrier", &[], &[], &[])?;
        Ok(())
    }

    /// `amdgpu.fat_raw_buffer_cast`: a bounds-checked buffer view of `mem` whose reads past `valid_bytes` return 0 and
    /// whose writes there are dropped.
    pub fn fat_buffer(
        &self,
        mem: Value<'c, 'b>,
        valid_bytes: Value<'c, 'b>,
    ) -> Result<Value<'c, 'b>, IrError> {
        let mt = MemRefType::try_from(mem.r#type()).map_err(|e| IrError::Build {
            op: "amdgpu.fat_raw_buffer_cast".into(),
            message: e.to_string(),
        })?;
        let space = self.attr("#amdgpu.address_space<fat_raw_buffer>")?;
        let dims: Vec<i64> = (0..mt.rank())
            .map(|i| {
                mt.dim_size(i).map(|d| match d {
                    DimSize::Static(n) => n as i64,
                    DimSize::Dynamic => i64::MIN,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| IrError::Build {
                op: "amdgpu.fat_raw_buffer_cast".into(),
                message: e.to_string(),
            })?;
        let to = MemRefType::new(mt.element(), &dims, None, Some(space));
        self.op1(
            "amdgpu.fat_raw_buffer_cast",
            &[mem, valid_bytes],
            to.into(),
            &[
                ("boundsCheck", self.attr("true")?),
                (
                    "operandSegmentSizes",
                    DenseI32ArrayAttribute::new(self.ctx, &[1, 1, 0]).into(),
                ),
                ("resetOffset", Attribute::unit(self.ctx)),
            ],
        )
    }

    /// A bounds-checked buffer view of `mem` starting `offset` elements in: `memref.reinterpret_cast` to a dynamic
    /// offset, then `fat_raw_buffer_cast` with `resetOffset`. The offset becomes part of the (scalar) buffer base, so
    /// per-lane indices into the window stay loop-invariant; `valid_bytes` counts from the window's start.
    pub fn window(
        &self,
        mem: Value<'c, 'b>,
        offset: Value<'c, 'b>,
        valid_bytes: Value<'c, 'b>,
    ) -> Result<Value<'c, 'b>, IrError> {
        let op = "memref.reinterpret_cast";
        let mt = MemRefType::try_from(mem.r#type()).map_err(|e| build_err(op, e))?;
        let size = match mt.dim_size(0).map_err(|e| build_err(op, e))? {
            DimSize::Static(n) => n as i64,
            DimSize::Dynamic => return Err(build_err(op, "window of a dynamic memref")),
        };
        let layout = self.attr("strided<[1], offset: ?>")?;
        let view = MemRefType::new(mt.element(), &[size], Some(layout), mt.memory_space());
        let v = self.op1(
            op,
            &[mem, offset],
            view.into(),
            &[
                (
                    "operandSegmentSizes",
                    DenseI32ArrayAttribute::new(self.ctx, &[1, 1, 0, 0]).into(),
                ),
                (
                    "static_offsets",
                    DenseI64ArrayAttribute::new(self.ctx, &[i64::MIN]).into(),
                ),
                (
                    "static_sizes",
                    DenseI64ArrayAttribute::new(self.ctx, &[size]).into(),
                ),
                (
                    "static_strides",
                    DenseI64ArrayAttribute::new(self.ctx, &[1]).into(),
                ),
            ],
        )?;
        self.fat_buffer(v, valid_bytes)
    }

    /// `amdgpu.mfma` with an `m x n x k` shape (one block), `acc += a * b`. f32 operands (`vector<2xf32>`) are read
    /// as xf32 (`reducePrecision`: `v_mfma_f32_16x16x8_xf32` on gfx942); nibble never uses the full-f32 MFMAs.
    pub fn mfma(
        &self,
        shape: (u32, u32, u32),
        a: Value<'c, 'b>,
        b: Value<'c, 'b>,
        acc: Value<'c, 'b>,
    ) -> Result<Value<'c, 'b>, IrError> {
        let reduce_precision = a.r#type() == self.vector(2, self.f32());
        let i32t = self.int(32);
        let int = |v: u32| -> Attribute<'c> { IntegerAttribute::new(i32t, i64::from(v)).into() };
        let mut attrs = vec![
            ("m", int(shape.0)),
            ("n", int(shape.1)),
            ("k", int(shape.2)),
            ("blocks", int(1)),
            ("cbsz", int(0)),
            ("abid", int(0)),
            ("blgp", self.attr("#amdgpu<mfma_perm_b none>")?),
        ];
        if reduce_precision {
            attrs.push(("reducePrecision", Attribute::unit(self.ctx)));
        }
        self.op1("amdgpu.mfma", &[a, b, acc], acc.r#type(), &attrs)
    }

    /// `nvvm.mma.sync` m16n8k16 with bf16/f16 operands (A: 4 x i32, B: 2 x i32) and f32 accumulators;
    /// returns the four accumulator values.
    pub fn mma_sync(
        &self,
        operand: &str,
        a: &[Value<'c, 'b>; 4],
        b: &[Value<'c, 'b>; 2],
        c: &[Value<'c, 'b>; 4],
    ) -> Result<[Value<'c, 'b>; 4], IrError> {
        let f32t = self.f32();
        let st = Type::parse(self.ctx, "!llvm.struct<(f32, f32, f32, f32)>")
            .ok_or_else(|| build_err("nvvm.mma.sync", "result type"))?;
        let mut operands = a.to_vec();
        operands.extend_from_slice(b);
        operands.extend_from_slice(c);
        let r = self.op1(
            "nvvm.mma.sync",
            &operands,
            st,
            &[
                ("layoutA", self.attr("#nvvm.mma_layout<row>")?),
                ("layoutB", self.attr("#nvvm.mma_layout<col>")?),
                ("shape", self.attr("#nvvm.shape<m = 16, n = 8, k = 16>")?),
                (
                    "multiplicandAPtxType",
                    self.attr(&format!("#nvvm.mma_type<{operand}>"))?,
                ),
                (
                    "multiplicandBPtxType",
                    self.attr(&format!("#nvvm.mma_type<{operand}>"))?,
                ),
                (
                    "operandSegmentSizes",
                    DenseI32ArrayAttribute::new(self.ctx, &[4, 2, 4]).into(),
                ),
            ],
        )?;
        let get = |i: i64| {
            self.op1(
                "llvm.extractvalue",
                &[r],
                f32t,
                &[(
                    "position",
                    DenseI64ArrayAttribute::new(self.ctx, &[i]).into(),
                )],
            )
        };
        Ok([get(0)?, get(1)?, get(2)?, get(3)?])
    }

    /// `llvm.inline_asm` with side effects (never removed or merged). `result`: the op's one result
    /// (a struct for several outputs), `None` for none.
    pub fn inline_asm(
        &self,
        asm: &str,
        constraints: &str,
        operands: &[Value<'c, 'b>],
        result: Option<Type<'c>>,
    ) -> Result<Option<Value<'c, 'b>>, IrError> {
        let results: Vec<Type<'c>> = result.into_iter().collect();
        let r = self.op(
            "llvm.inline_asm",
            operands,
            &results,
            &[
                ("asm_string", self.string(asm)),
                ("constraints", self.string(constraints)),
                ("has_side_effects", self.attr("unit")?),
            ],
        )?;
        Ok(r.first().copied())
    }

    // ---- structured control flow ----

    /// `scf.for %iv = lb to ub step step iter_args(inits)`; `body` gets the body emitter, the induction variable and
    /// the iteration arguments and returns the values to yield; `unroll` says whether LLVM may unroll the loop.
    pub fn for_loop<F>(
        &self,
        lb: Value<'c, 'b>,
        ub: Value<'c, 'b>,
        step: Value<'c, 'b>,
        inits: &[Value<'c, 'b>],
        unroll: Unroll,
        body: F,
    ) -> Result<Vec<Value<'c, 'b>>, IrError>
    where
        F: FnOnce(
            Emitter<'c, 'b>,
            Value<'c, 'b>,
            Vec<Value<'c, 'b>>,
        ) -> Result<Vec<Value<'c, 'b>>, IrError>,
    {
        let mut args = vec![(self.index(), self.loc)];
        args.extend(inits.iter().map(|v| (v.r#type(), self.loc)));
        let block = Block::new(&args);
        let region = Region::new();
        let block_ref = detach(region.append_block(block));
        {
            let inner = Emitter::new(self.ctx, self.loc, block_ref);
            let iv: Value = block_ref
                .argument(0)
                .map_err(|e| build_err("scf.for", e))?
                .into();
            let iter: Vec<Value> = (1..=inits.len())
                .map(|i| block_ref.argument(i).map(Value::from))
                .collect::<Result<_, _>>()
                .map_err(|e| build_err("scf.for", e))?;
            let yields = body(inner, iv, iter)?;
            inner.op("scf.yield", &yields, &[], &[])?;
        }
        let mut operands = vec![lb, ub, step];
        operands.extend_from_slice(inits);
        let types: Vec<Type> = inits.iter().map(|v| v.r#type()).collect();
        let mut builder = OperationBuilder::new("scf.for", self.loc)
            .add_operands(&operands)
            .add_results(&types)
            .add_regions([region]);
        // scf-to-cf carries the for's discardable attributes onto the latch branch, and the LLVM translation turns
        // this one into the branch's loop metadata.
        let annotation = match unroll {
            Unroll::Allow => None,
            Unroll::Disable => Some("#llvm.loop_annotation<unroll = <disable = true>>".to_string()),
            Unroll::Count(n) => Some(format!(
                "#llvm.loop_annotation<unroll = <count = {n} : i32>>"
            )),
        };
        if let Some(a) = annotation {
            builder = builder.add_attributes(&[(self.ident("loop_annotation"), self.attr(&a)?)]);
        }
        let op = builder.build().map_err(|e| build_err("scf.for", e))?;
        Ok(self.append(op))
    }

    /// `scf.if %cond { then }` without results.
    pub fn if_then<F>(&self, cond: Value<'c, 'b>, then: F) -> Result<(), IrError>
    where
        F: FnOnce(Emitter<'c, 'b>) -> Result<(), IrError>,
    {
        let then_region = Region::new();
        let block_ref = detach(then_region.append_block(Block::new(&[])));
        {
            let inner = Emitter::new(self.ctx, self.loc, block_ref);
            then(inner)?;
            inner.op("scf.yield", &[], &[], &[])?;
        }
        let op = OperationBuilder::new("scf.if", self.loc)
            .add_operands(&[cond])
            .add_regions([then_region, Region::new()])
            .build()
            .map_err(|e| build_err("scf.if", e))?;
        self.append(op);
        Ok(())
    }

    pub fn call(
        &self,
        callee: &str,
        args: &[Value<'c, 'b>],
        results: &[Type<'c>],
    ) -> Result<Vec<Value<'c, 'b>>, IrError> {
        self.op(
            "func.call",
            args,
            results,
            &[(
                "callee",
                FlatSymbolRefAttribute::new(self.ctx, callee).into(),
            )],
        )
    }

    pub fn func_type(&self, inputs: &[Type<'c>], results: &[Type<'c>]) -> Attribute<'c> {
        TypeAttribute::new(FunctionType::new(self.ctx, inputs, results).into()).into()
    }

    pub fn string(&self, s: &str) -> Attribute<'c> {
        StringAttribute::new(self.ctx, s).into()
    }
}

/// Gives a block reference the lifetime of the module being built.
///
/// melior ties a `BlockRef` to the borrow of its region, but the region is moved into its op right after the body is
/// built and the op into the module, whose lifetime is `'b`; the block itself never moves or dies before the module.
/// Builders never erase ops while building, so every reference stays valid.
pub(crate) fn detach<'c, 'x, 'b>(block: BlockRef<'c, 'x>) -> BlockRef<'c, 'b> {
    // SAFETY: see above: the block is owned by the module for as long as 'b.
    unsafe { BlockRef::from_raw(block.to_raw()) }
}

pub(crate) fn build_err(op: &str, e: impl std::fmt::Display) -> IrError {
    IrError::Build {
        op: op.to_string(),
        message: e.to_string(),
    }
}
