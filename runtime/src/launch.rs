//! Kernel launches from a manifest: the kernarg buffer, its checks against the code object, and [`Kernel`].
//!
//! The kernarg buffer holds the kernel's explicit arguments at the offsets the manifest gives; HIP appends the
//! hidden arguments (block counts, group sizes, ...) itself. Rules, all checked before anything is launched:
//!
//! - Each manifest argument has a kind `ptr` (8 bytes, 8-aligned, `global_buffer` in the code object), `i32` or
//!   `f32` (4 bytes, 4-aligned, `by_value`); its size must be that size and its offset a multiple of it.
//! - Arguments are in increasing, non-overlapping order, end within `kernarg_bytes`, and each role occurs once.
//! - Against the code object's `.args` for the kernel (explicit, i.e. non-`hidden_*`, entries): the same count, and
//!   pairwise the same offset, size and value kind (and name, where the code object records one). The buffer must
//!   end before the first hidden argument, and `kernarg_bytes` must fit `.kernarg_segment_size`.
//! - Values: every argument gets exactly one value of its kind; a buffer's element type must be the manifest's
//!   `elem` (raw `u8` buffers are accepted for any element type) and, for a launch with a given M, it must be at
//!   least as large as the shapes require.
//!
//! The building and checking are pure and tested here; [`Kernel::load`] and [`Kernel::launch`] also need a GPU and
//! have not been run on hardware.

use std::marker::PhantomData;

use thiserror::Error;

use crate::codeobj::{self, CodeObject, CodeObjectError, KernelMeta};
use crate::hip::{self, Device, Function, HipError, Module, Stream};
use crate::manifest::{ArgRole, Manifest};

/// What a kernel argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A global pointer (8 bytes).
    Ptr,
    I32,
    F32,
}

impl ArgKind {
    /// The manifest's spelling: `ptr`, `i32`, `f32`.
    pub fn parse(kind: &str) -> Option<ArgKind> {
        match kind {
            "ptr" => Some(ArgKind::Ptr),
            "i32" => Some(ArgKind::I32),
            "f32" => Some(ArgKind::F32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ArgKind::Ptr => "ptr",
            ArgKind::I32 => "i32",
            ArgKind::F32 => "f32",
        }
    }

    /// Size in bytes, which is also the required alignment.
    pub fn size(self) -> u32 {
        match self {
            ArgKind::Ptr => 8,
            ArgKind::I32 | ArgKind::F32 => 4,
        }
    }

    /// The code object's `.value_kind` for this kind.
    pub fn value_kind(self) -> &'static str {
        match self {
            ArgKind::Ptr => "global_buffer",
            ArgKind::I32 | ArgKind::F32 => "by_value",
        }
    }
}

/// An error building or checking a launch. Every variant displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LaunchError {
    #[error("argument {name}: unknown kind {kind:?} (expected ptr, i32 or f32)")]
    UnknownKind { name: String, kind: String },
    #[error("argument {name}: a {kind} is {expected} bytes, the manifest says {found}")]
    BadSize {
        name: String,
        kind: &'static str,
        expected: u32,
        found: u32,
    },
    #[error("argument {name}: offset {offset} is not a multiple of its alignment {align}")]
    Misaligned {
        name: String,
        offset: u32,
        align: u32,
    },
    #[error("argument {name} at offset {offset} overlaps the previous argument (which ends at {prev_end})")]
    Overlap {
        name: String,
        offset: u32,
        prev_end: u32,
    },
    #[error("arguments end at byte {end}, past kernarg_bytes = {kernarg_bytes}")]
    PastKernargBytes { end: u32, kernarg_bytes: u32 },
    #[error("role {role:?} is taken by two arguments ({first} and {second})")]
    DuplicateRole {
        role: ArgRole,
        first: String,
        second: String,
    },
    #[error("the code object has no kernel {symbol}")]
    NoKernel { symbol: String },
    #[error(
        "kernel {kernel}: the manifest lists {manifest} arguments, the code object {code_object}"
    )]
    ArgCount {
        kernel: String,
        manifest: usize,
        code_object: usize,
    },
    #[error("kernel {kernel}, argument {index} ({name}): {field} is {manifest} in the manifest but {code_object} in the code object")]
    ArgMismatch {
        kernel: String,
        index: usize,
        name: String,
        field: &'static str,
        manifest: String,
        code_object: String,
    },
    #[error("kernel {kernel}: {what}")]
    Inconsistent { kernel: String, what: String },
    #[error("no value for argument {name} ({role:?})")]
    MissingValue { name: String, role: ArgRole },
    #[error("a value is given for {role:?}, which the kernel does not take")]
    UnexpectedValue { role: ArgRole },
    #[error("two values are given for {role:?}")]
    DuplicateValue { role: ArgRole },
    #[error("argument {name}: the kernel takes a {expected}, the value is a {found}")]
    WrongValueKind {
        name: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("argument {name}: the kernel reads {expected} elements, the buffer holds {found}")]
    ElemMismatch {
        name: String,
        expected: String,
        found: &'static str,
    },
    #[error("argument {name}: the buffer has {found} bytes, M = {m} needs at least {needed}")]
    BufferTooSmall {
        name: String,
        m: u32,
        needed: u64,
        found: u64,
    },
    #[error("argument {name}: M is {m} but the i32 value is {value}")]
    MValue { name: String, m: u32, value: i32 },
    #[error("M = {m} is outside the kernel's range {min}..={max}")]
    MOutOfRange { m: u32, min: u32, max: u32 },
    #[error(transparent)]
    Hip(#[from] HipError),
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),
    #[error("code object: {0}")]
    CodeObject(#[from] CodeObjectError),
}

/// A device buffer passed as a pointer argument: its address, size and element type. Borrows the buffer, so the
/// buffer outlives every [`Kernargs`] that refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferArg<'a> {
    addr: u64,
    bytes: usize,
    elem: &'static str,
    _buffer: PhantomData<&'a ()>,
}

impl BufferArg<'_> {
    /// A buffer argument from raw parts. Safe code gets one from [`hip::DeviceBuffer::as_arg`].
    ///
    /// # Safety
    /// `addr` must be a device allocation of at least `bytes` bytes holding elements of type `elem`, alive for the
    /// lifetime of the value (and until any kernel launched with it has completed).
    pub unsafe fn from_raw(addr: u64, bytes: usize, elem: &'static str) -> Self {
        BufferArg {
            addr,
            bytes,
            elem,
            _buffer: PhantomData,
        }
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn elem(&self) -> &'static str {
        self.elem
    }
}

/// The value of one kernel argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArgValue<'a> {
    Buffer(BufferArg<'a>),
    I32(i32),
    F32(f32),
}

impl ArgValue<'_> {
    fn kind(&self) -> ArgKind {
        match self {
            ArgValue::Buffer(_) => ArgKind::Ptr,
            ArgValue::I32(_) => ArgKind::I32,
            ArgValue::F32(_) => ArgKind::F32,
        }
    }
}

/// One explicit argument of the kernarg buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgSlot {
    pub name: String,
    pub role: ArgRole,
    pub kind: ArgKind,
    pub elem: Option<String>,
    pub offset: u32,
}

/// The validated kernarg layout of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernargLayout {
    kernel: String,
    symbol: String,
    /// Invariant (established by `from_manifest`): in increasing offset order, each slot aligned and ending
    /// within `size`.
    slots: Vec<ArgSlot>,
    size: u32,
}

impl KernargLayout {
    pub fn kernel(&self) -> &str {
        &self.kernel
    }

    /// The kernel symbol the manifest names.
    pub fn symbol(&self) -> &str {
        &self.symbol
    }

    pub fn slots(&self) -> &[ArgSlot] {
        &self.slots
    }

    /// Buffer size in bytes (`kernarg_bytes`).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Validates the manifest's argument list (see the module docs for the rules).
    pub fn from_manifest(m: &Manifest) -> Result<KernargLayout, LaunchError> {
        let mut slots: Vec<ArgSlot> = Vec::with_capacity(m.args.len());
        let mut prev_end = 0u32;
        for a in &m.args {
            let kind = ArgKind::parse(&a.kind).ok_or_else(|| LaunchError::UnknownKind {
                name: a.name.clone(),
                kind: a.kind.clone(),
            })?;
            if a.size != kind.size() {
                return Err(LaunchError::BadSize {
                    name: a.name.clone(),
                    kind: kind.name(),
                    expected: kind.size(),
                    found: a.size,
                });
            }
            if a.offset % kind.size() != 0 {
                return Err(LaunchError::Misaligned {
                    name: a.name.clone(),
                    offset: a.offset,
                    align: kind.size(),
                });
            }
            if a.offset < prev_end {
                return Err(LaunchError::Overlap {
                    name: a.name.clone(),
                    offset: a.offset,
                    prev_end,
                });
            }
            if let Some(first) = slots.iter().find(|s| s.role == a.role) {
                return Err(LaunchError::DuplicateRole {
                    role: a.role,
                    first: first.name.clone(),
                    second: a.name.clone(),
                });
            }
            // offset is at most u32::MAX - 7 here only if it is aligned; use checked arithmetic regardless.
            prev_end = a
                .offset
                .checked_add(kind.size())
                .ok_or(LaunchError::PastKernargBytes {
                    end: u32::MAX,
                    kernarg_bytes: m.kernarg_bytes,
                })?;
            slots.push(ArgSlot {
                name: a.name.clone(),
                role: a.role,
                kind,
                elem: a.elem.clone(),
                offset: a.offset,
            });
        }
        if prev_end > m.kernarg_bytes {
            return Err(LaunchError::PastKernargBytes {
                end: prev_end,
                kernarg_bytes: m.kernarg_bytes,
            });
        }
        Ok(KernargLayout {
            kernel: m.kernel.clone(),
            symbol: m.symbol.clone(),
            slots,
            size: m.kernarg_bytes,
        })
    }

    /// Finds this layout's kernel in `code` (by function name or `.kd` symbol) and checks that its explicit
    /// `.args` agree with the layout: count, offsets, sizes, value kinds, and names where recorded.
    pub fn check_code_object<'c>(
        &self,
        code: &'c CodeObject,
    ) -> Result<&'c KernelMeta, LaunchError> {
        let k = code
            .kernels
            .iter()
            .find(|k| k.name == self.symbol || k.symbol == self.symbol)
            .ok_or_else(|| LaunchError::NoKernel {
                symbol: self.symbol.clone(),
            })?;
        let explicit: Vec<_> = k
            .args
            .iter()
            .filter(|a| !a.value_kind.starts_with("hidden_"))
            .collect();
        if explicit.len() != self.slots.len() {
            return Err(LaunchError::ArgCount {
                kernel: k.name.clone(),
                manifest: self.slots.len(),
                code_object: explicit.len(),
            });
        }
        for (index, (s, a)) in self.slots.iter().zip(&explicit).enumerate() {
            let mismatch = |field: &'static str, manifest: String, code_object: String| {
                LaunchError::ArgMismatch {
                    kernel: k.name.clone(),
                    index,
                    name: s.name.clone(),
                    field,
                    manifest,
                    code_object,
                }
            };
            if a.value_kind != s.kind.value_kind() {
                return Err(mismatch(
                    "value kind",
                    format!("{} ({})", s.kind.value_kind(), s.kind.name()),
                    a.value_kind.clone(),
                ));
            }
            if a.size != s.kind.size() {
                return Err(mismatch(
                    "size",
                    s.kind.size().to_string(),
                    a.size.to_string(),
                ));
            }
            if a.offset != s.offset {
                return Err(mismatch(
                    "offset",
                    s.offset.to_string(),
                    a.offset.to_string(),
                ));
            }
            if let Some(n) = &a.name {
                if *n != s.name {
                    return Err(mismatch("name", s.name.clone(), n.clone()));
                }
            }
        }
        let inconsistent = |what: String| LaunchError::Inconsistent {
            kernel: k.name.clone(),
            what,
        };
        if let Some(h) = k
            .args
            .iter()
            .filter(|a| a.value_kind.starts_with("hidden_"))
            .map(|a| a.offset)
            .min()
        {
            if self.size > h {
                return Err(inconsistent(format!(
                    "kernarg_bytes {} runs into the hidden arguments, which start at offset {h}",
                    self.size
                )));
            }
        }
        if self.size > k.kernarg_segment_size {
            return Err(inconsistent(format!(
                "kernarg_bytes {} exceeds the code object's kernarg segment of {} bytes",
                self.size, k.kernarg_segment_size
            )));
        }
        Ok(k)
    }

    /// Writes every value at its slot. `values` must give exactly one value per argument, by role, of the
    /// argument's kind; buffers must have the argument's element type (or be raw `u8`).
    pub fn build<'a>(
        &self,
        values: &[(ArgRole, ArgValue<'a>)],
    ) -> Result<Kernargs<'a>, LaunchError> {
        for (i, (role, _)) in values.iter().enumerate() {
            if values[..i].iter().any(|(r, _)| r == role) {
                return Err(LaunchError::DuplicateValue { role: *role });
            }
            if !self.slots.iter().any(|s| s.role == *role) {
                return Err(LaunchError::UnexpectedValue { role: *role });
            }
        }
        let mut k = Kernargs::zeroed(self.size as usize);
        for s in &self.slots {
            let v = values
                .iter()
                .find(|(r, _)| *r == s.role)
                .map(|(_, v)| v)
                .ok_or_else(|| LaunchError::MissingValue {
                    name: s.name.clone(),
                    role: s.role,
                })?;
            if v.kind() != s.kind {
                return Err(LaunchError::WrongValueKind {
                    name: s.name.clone(),
                    expected: s.kind.name(),
                    found: v.kind().name(),
                });
            }
            let at = s.offset as usize;
            match v {
                ArgValue::Buffer(b) => {
                    if let Some(e) = &s.elem {
                        if b.elem != "u8" && b.elem != e {
                            return Err(LaunchError::ElemMismatch {
                                name: s.name.clone(),
                                expected: e.clone(),
                                found: b.elem,
                            });
                        }
                    }
                    k.put(at, &b.addr.to_le_bytes());
                }
                ArgValue::I32(x) => k.put(at, &x.to_le_bytes()),
                ArgValue::F32(x) => k.put(at, &x.to_le_bytes()),
            }
        }
        Ok(k)
    }
}

/// A filled kernarg buffer, 8-byte aligned; borrows the buffers it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernargs<'a> {
    /// Backing store in 8-byte words so the bytes are 8-byte aligned.
    words: Vec<u64>,
    len: usize,
    _buffers: PhantomData<&'a ()>,
}

impl Kernargs<'_> {
    fn zeroed(len: usize) -> Self {
        Kernargs {
            words: vec![0; len.div_ceil(8)],
            len,
            _buffers: PhantomData,
        }
    }

    /// Copies `bytes` to byte offset `at`. Only called from `KernargLayout::build`, whose slots end within `len`
    /// (the layout invariant), so the indexing cannot go out of bounds.
    fn put(&mut self, at: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let p = at + i;
            let shift = 8 * (p % 8);
            let w = &mut self.words[p / 8];
            *w = (*w & !(0xffu64 << shift)) | (u64::from(b) << shift);
        }
    }

    /// The buffer's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `words` holds `len.div_ceil(8) * 8 >= len` initialized bytes; u8 has no alignment requirement
        // and any byte is a valid u8. Words store byte p at bits 8*(p%8) and the targets are little-endian
        // (x86_64/aarch64 hosts, AMDGPU), so memory order equals byte order.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn dtype_bytes(name: &str) -> Option<u64> {
    match name {
        "bf16" | "f16" => Some(2),
        "f32" | "u32" | "i32" => Some(4),
        _ => None,
    }
}

/// The smallest buffer, in bytes, that the argument with `role` needs for a launch with `m` rows, from the
/// manifest's shapes and layouts; `None` for scalars and unknown element types.
pub fn required_bytes(manifest: &Manifest, role: ArgRole, m: u32) -> Option<u64> {
    let s = &manifest.shapes;
    let (workspace, counters) = manifest.split_k_bytes(m);
    let (m, n, k) = (u64::from(m), u64::from(s.n), u64::from(s.k));
    match role {
        ArgRole::Workspace => Some(workspace),
        ArgRole::Counters => Some(counters),
        ArgRole::X => Some(m * k * dtype_bytes(&s.x_dtype)?),
        ArgRole::Y => Some(m * n * dtype_bytes(&s.y_dtype)?),
        ArgRole::Bias => Some(n * dtype_bytes(s.bias_dtype.as_deref()?)?),
        // 4-bit elements, packed eight to a u32 word.
        ArgRole::Weight => Some(n * k / 2),
        ArgRole::Scales => {
            let group = u64::from(manifest.format.group.max(1));
            let id = manifest.scale_layout.id.as_str();
            let exp = id == crate::numerics::repack::MMA_SCALE_EXP_LAYOUT_ID;
            if id == crate::numerics::repack::MMA_SCALE_LAYOUT_ID || exp {
                // 16-bit values or exponent bytes, `max(1, kc / group)` per row and chunk of
                // kc = 16 * words_per_lane.
                let kc = 16 * u64::from(manifest.weight_layout.words_per_lane.max(1));
                Some(n * (k / kc) * (kc / group).max(1) * if exp { 1 } else { 2 })
            } else {
                // f32 [N][K / group].
                Some(n * (k / group) * 4)
            }
        }
        ArgRole::M | ArgRole::TensorScale => None,
    }
}

/// Checks `m` against the manifest's range, the M argument's value, and every buffer's size.
pub fn check_values(
    manifest: &Manifest,
    layout: &KernargLayout,
    m: u32,
    values: &[(ArgRole, ArgValue<'_>)],
) -> Result<(), LaunchError> {
    let s = &manifest.shapes;
    if m < s.m_min || m > s.m_max {
        return Err(LaunchError::MOutOfRange {
            m,
            min: s.m_min,
            max: s.m_max,
        });
    }
    for slot in &layout.slots {
        let Some((_, v)) = values.iter().find(|(r, _)| *r == slot.role) else {
            continue;
        };
        match (slot.role, v) {
            (ArgRole::M, ArgValue::I32(x)) if i64::from(*x) != i64::from(m) => {
                return Err(LaunchError::MValue {
                    name: slot.name.clone(),
                    m,
                    value: *x,
                })
            }
            (role, ArgValue::Buffer(b)) => {
                if let Some(needed) = required_bytes(manifest, role, m) {
                    if (b.bytes as u64) < needed {
                        return Err(LaunchError::BufferTooSmall {
                            name: slot.name.clone(),
                            m,
                            needed,
                            found: b.bytes as u64,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A compiled kernel loaded on a device, with its manifest and checked kernarg layout.
///
/// Not run on hardware.
pub struct Kernel {
    manifest: Manifest,
    layout: KernargLayout,
    module: Module,
    function: Function,
}

impl Kernel {
    /// Checks the device arch against the manifest (first, before anything else), parses the code object, checks
    /// its arch and its `.args` against the manifest, then loads it and looks up the kernel.
    pub fn load(
        device: &Device,
        manifest: &Manifest,
        code_object: &[u8],
    ) -> Result<Kernel, LaunchError> {
        hip::check_arch(device.arch(), manifest)?;
        let code = codeobj::parse(code_object)?;
        code.check_arch(hip::arch_base(&manifest.arch))?;
        let layout = KernargLayout::from_manifest(manifest)?;
        let meta = layout.check_code_object(&code)?;
        check_geometry(device, manifest, meta)?;
        let module = Module::load(device, code_object, &manifest.kernel)?;
        let function = module.function(&meta.name)?;
        Ok(Kernel {
            manifest: manifest.clone(),
            layout,
            module,
            function,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn layout(&self) -> &KernargLayout {
        &self.layout
    }

    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Enqueues the kernel for `m` rows on `stream`. If `values` has no value for the M argument, `m` is used.
    /// Every check of [`check_values`] and [`KernargLayout::build`] runs before the launch.
    ///
    /// Buffers must stay alive until the kernel completes; dropping a [`hip::DeviceBuffer`] frees it with
    /// `hipFree`, which waits for the device first. Not run on hardware.
    pub fn launch(
        &self,
        stream: &Stream,
        m: u32,
        values: &[(ArgRole, ArgValue<'_>)],
    ) -> Result<(), LaunchError> {
        let mut all = values.to_vec();
        if let Some(slot) = self.layout.slots.iter().find(|s| s.role == ArgRole::M) {
            if !all.iter().any(|(r, _)| *r == ArgRole::M) {
                let v = i32::try_from(m).map_err(|_| LaunchError::MValue {
                    name: slot.name.clone(),
                    m,
                    value: i32::MAX,
                })?;
                all.push((ArgRole::M, ArgValue::I32(v)));
            }
        }
        check_values(&self.manifest, &self.layout, m, &all)?;
        let kernargs = self.layout.build(&all)?;
        let grid = self.manifest.launch.grid_for(m);
        if grid.contains(&0) {
            // Nothing to do (M = 0 with a CeilDivM grid).
            return Ok(());
        }
        if stream.device().info().index != self.module.device().info().index {
            return Err(LaunchError::Hip(HipError::InvalidArgument(
                "the stream belongs to another device than the kernel".into(),
            )));
        }
        // SAFETY: the kernarg layout was checked against the code object's `.args` at load time and filled from
        // values of the right kinds; every buffer is a live allocation (borrowed by `values`) at least as large as
        // the manifest's shapes require for `m`, which is within the kernel's M range; the stream is on the
        // module's device (checked above).
        unsafe {
            self.function.launch_raw(
                stream,
                grid,
                self.manifest.launch.block,
                0,
                kernargs.as_bytes(),
            )?;
        }
        Ok(())
    }
}

/// Launch geometry consistency between manifest and code object.
fn check_geometry(device: &Device, manifest: &Manifest, k: &KernelMeta) -> Result<(), LaunchError> {
    let inconsistent = |what: String| LaunchError::Inconsistent {
        kernel: k.name.clone(),
        what,
    };
    let threads: u32 = manifest.launch.block.iter().product();
    if k.max_flat_workgroup_size != 0 && threads > k.max_flat_workgroup_size {
        return Err(inconsistent(format!(
            "block of {threads} lanes exceeds the code object's max_flat_workgroup_size {}",
            k.max_flat_workgroup_size
        )));
    }
    // Static LDS is allocated from the code object's value (the launch passes no dynamic LDS).
    let lds_max = device.info().max_lds_per_block;
    if lds_max != 0 && k.group_segment_fixed_size > lds_max {
        return Err(inconsistent(format!(
            "the kernel needs {} bytes of LDS, the device allows {lds_max} per workgroup",
            k.group_segment_fixed_size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::KernelArg;

    // Built by tests-data/regen.sh. `mfma_loop(ptr addrspace(1) a, ptr addrspace(1) b, ptr addrspace(1) c, i32 n)`:
    // explicit args a@0, b@8, c@16 (global_buffer, 8 bytes), n@24 (by_value, 4 bytes); hidden args from 32;
    // kernarg segment 288 bytes (llvm-readelf --notes).
    const GFX942: &[u8] = include_bytes!("../tests-data/mfma_loop_gfx942.hsaco");

    fn arg(
        name: &str,
        role: ArgRole,
        kind: &str,
        elem: Option<&str>,
        offset: u32,
        size: u32,
    ) -> KernelArg {
        KernelArg {
            name: name.into(),
            role,
            kind: kind.into(),
            elem: elem.map(str::to_string),
            offset,
            size,
        }
    }

    /// A manifest whose argument list matches the `mfma_loop` fixture.
    fn manifest() -> Manifest {
        let text = r#"{"schema_version":1,"compiler_version":"nibble test","source_hash":"0","kernel":"mfma",
          "symbol":"mfma_loop","arch":"gfx942","code_object":"mfma_loop.hsaco","kernel_ir":"k.mlir",
          "shapes":{"n":64,"k":128,"m_min":1,"m_max":256,"x_dtype":"bf16","y_dtype":"bf16","bias_dtype":null},
          "format":{"name":"mxfp4","element":{"name":"e2m1","exp_bits":2,"man_bits":1,"bias":1},"scale":"e8m0",
            "group":32,"tensor_scale":false},
          "tiling":{"tile_m":16,"tile_n":32,"tile_k":64,"waves_m":1,"waves_n":2,"mma":"16x16x16","stages":2},
          "launch":{"block":[128,1,1],"grid":[{"kind":"const","value":2},{"kind":"ceil_div_m","divisor":16},
            {"kind":"const","value":1}],"lds_bytes":2048},
          "args":[],"kernarg_bytes":28,
          "weight_layout":{"id":"nibble.mfma_pairs.v1","atom_n":16,"atom_k":16,"words_per_lane":1,"mag_shift":1,
            "second_half":"bitreverse","mask":2391707278},
          "scale_layout":{"id":"nibble.scales_f32.v1","group":32,"exp_offset":15}}"#;
        let mut m = Manifest::from_json("test", text).unwrap();
        m.args = vec![
            arg("a", ArgRole::X, "ptr", Some("bf16"), 0, 8),
            arg("b", ArgRole::Weight, "ptr", Some("u32"), 8, 8),
            arg("c", ArgRole::Y, "ptr", Some("bf16"), 16, 8),
            arg("n", ArgRole::M, "i32", None, 24, 4),
        ];
        m.validate().unwrap();
        m
    }

    #[test]
    fn dynamic_shared_memory_is_an_nvidia_launch_setting() {
        let mut m = manifest();
        m.launch.dynamic_lds_bytes = 65536;
        let e = m
            .validate()
            .expect_err("an AMD kernel with dynamic shared memory");
        assert!(
            e.contains("dynamic_lds_bytes") && e.contains("gfx942"),
            "{e}"
        );
        // It round-trips through JSON, and is left out when zero.
        m.arch = "sm_90a".into();
        let text = serde_json::to_string(&m.launch).unwrap();
        assert!(text.contains(r#""dynamic_lds_bytes":65536"#), "{text}");
        m.launch.dynamic_lds_bytes = 0;
        let text = serde_json::to_string(&m.launch).unwrap();
        assert!(!text.contains("dynamic_lds_bytes"), "{text}");
    }

    fn buf(addr: u64, bytes: usize, elem: &'static str) -> ArgValue<'static> {
        // SAFETY: these values are only written into kernarg buffers in tests, never launched.
        ArgValue::Buffer(unsafe { BufferArg::from_raw(addr, bytes, elem) })
    }

    fn values(m: i32) -> Vec<(ArgRole, ArgValue<'static>)> {
        vec![
            (ArgRole::X, buf(0x7f00_0000_1000, 64 * 128 * 2, "bf16")),
            (ArgRole::Weight, buf(0x7f00_0000_2000, 64 * 128 / 2, "u32")),
            (ArgRole::Y, buf(0x7f00_0000_3000, 64 * 64 * 2, "bf16")),
            (ArgRole::M, ArgValue::I32(m)),
        ]
    }

    #[test]
    fn layout_matches_the_gfx942_fixture_and_builds_the_buffer() {
        let m = manifest();
        let layout = KernargLayout::from_manifest(&m).unwrap();
        let code = codeobj::parse(GFX942).unwrap();
        let k = layout.check_code_object(&code).unwrap();
        assert_eq!(k.name, "mfma_loop");
        assert_eq!(layout.size(), 28);
        assert_eq!(layout.slots().len(), 4);

        let args = layout.build(&values(40)).unwrap();
        assert_eq!(args.len(), 28);
        let b = args.as_bytes();
        assert_eq!(
            b.as_ptr() as usize % 8,
            0,
            "kernarg buffer is 8-byte aligned"
        );
        assert_eq!(&b[0..8], &0x7f00_0000_1000u64.to_le_bytes());
        assert_eq!(&b[8..16], &0x7f00_0000_2000u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x7f00_0000_3000u64.to_le_bytes());
        assert_eq!(&b[24..28], &40i32.to_le_bytes());
        check_values(&m, &layout, 40, &values(40)).unwrap();
    }

    #[test]
    fn padding_between_arguments_is_zero_and_scalars_are_little_endian() {
        let mut m = manifest();
        // n moved to 28 (4-byte aligned, leaving a 4-byte hole), plus an f32 at 32.
        m.args[3].offset = 28;
        m.args
            .push(arg("t", ArgRole::TensorScale, "f32", None, 32, 4));
        m.kernarg_bytes = 36;
        let layout = KernargLayout::from_manifest(&m).unwrap();
        let mut v = values(-2);
        v.push((ArgRole::TensorScale, ArgValue::F32(1.5)));
        let args = layout.build(&v).unwrap();
        let b = args.as_bytes();
        assert_eq!(&b[24..28], &[0, 0, 0, 0]);
        assert_eq!(&b[28..32], &[0xfe, 0xff, 0xff, 0xff]);
        assert_eq!(&b[32..36], &1.5f32.to_le_bytes());
    }

    #[test]
    fn manifest_layout_errors() {
        let mut m = manifest();
        m.args[1].size = 4;
        assert_eq!(
            KernargLayout::from_manifest(&m).unwrap_err().to_string(),
            "argument b: a ptr is 8 bytes, the manifest says 4"
        );
        let mut m = manifest();
        m.args[3].offset = 26;
        m.kernarg_bytes = 30;
        assert_eq!(
            KernargLayout::from_manifest(&m).unwrap_err(),
            LaunchError::Misaligned {
                name: "n".into(),
                offset: 26,
                align: 4
            }
        );
        let mut m = manifest();
        m.args[2].offset = 4;
        assert!(matches!(
            KernargLayout::from_manifest(&m).unwrap_err(),
            LaunchError::Misaligned { .. }
        ));
        let mut m = manifest();
        m.args[2].offset = 8;
        assert!(matches!(
            KernargLayout::from_manifest(&m).unwrap_err(),
            LaunchError::Overlap { .. }
        ));
        let mut m = manifest();
        m.args[3].kind = "i64".into();
        assert!(matches!(
            KernargLayout::from_manifest(&m).unwrap_err(),
            LaunchError::UnknownKind { .. }
        ));
        let mut m = manifest();
        m.kernarg_bytes = 24;
        assert_eq!(
            KernargLayout::from_manifest(&m).unwrap_err(),
            LaunchError::PastKernargBytes {
                end: 28,
                kernarg_bytes: 24
            }
        );
        let mut m = manifest();
        m.args[2].role = ArgRole::X;
        assert!(matches!(
            KernargLayout::from_manifest(&m).unwrap_err(),
            LaunchError::DuplicateRole { .. }
        ));
    }

    #[test]
    fn code_object_mismatches_are_detected() {
        let code = codeobj::parse(GFX942).unwrap();
        let check = |m: &Manifest| {
            KernargLayout::from_manifest(m)
                .unwrap()
                .check_code_object(&code)
                .map(|_| ())
        };

        // Wrong count: an extra f32 argument.
        let mut m = manifest();
        m.args
            .push(arg("t", ArgRole::TensorScale, "f32", None, 28, 4));
        m.kernarg_bytes = 32;
        assert_eq!(
            check(&m).unwrap_err().to_string(),
            "kernel mfma_loop: the manifest lists 5 arguments, the code object 4"
        );
        // Wrong count: one missing.
        let mut m = manifest();
        m.args.pop();
        assert!(matches!(
            check(&m).unwrap_err(),
            LaunchError::ArgCount { .. }
        ));

        // Pointer vs by_value: n declared as a pointer.
        let mut m = manifest();
        m.args[3] = arg("n", ArgRole::M, "ptr", None, 24, 8);
        m.kernarg_bytes = 32;
        assert_eq!(
            check(&m).unwrap_err().to_string(),
            "kernel mfma_loop, argument 3 (n): value kind is global_buffer (ptr) in the manifest but by_value in \
             the code object"
        );
        // by_value vs pointer: c declared as an f32 (the f32 at 16 has the wrong size for the code object too,
        // but the kind is reported first).
        let mut m = manifest();
        m.args[2] = arg("c", ArgRole::Y, "f32", None, 16, 4);
        assert!(matches!(
            check(&m).unwrap_err(),
            LaunchError::ArgMismatch {
                field: "value kind",
                ..
            }
        ));

        // Wrong offset.
        let mut m = manifest();
        m.args[3].offset = 28;
        m.kernarg_bytes = 32;
        assert_eq!(
            check(&m).unwrap_err(),
            LaunchError::ArgMismatch {
                kernel: "mfma_loop".into(),
                index: 3,
                name: "n".into(),
                field: "offset",
                manifest: "28".into(),
                code_object: "24".into(),
            }
        );

        // Wrong name (the fixture records names).
        let mut m = manifest();
        m.args[0].name = "x".into();
        assert!(matches!(
            check(&m).unwrap_err(),
            LaunchError::ArgMismatch { field: "name", .. }
        ));

        // kernarg_bytes running into the hidden arguments (which start at 32).
        let mut m = manifest();
        m.kernarg_bytes = 40;
        assert!(check(&m)
            .unwrap_err()
            .to_string()
            .contains("runs into the hidden arguments, which start at offset 32"));

        // Unknown kernel symbol.
        let mut m = manifest();
        m.symbol = "fp4_gemm".into();
        assert_eq!(
            check(&m).unwrap_err().to_string(),
            "the code object has no kernel fp4_gemm"
        );
        // The .kd symbol names the kernel too.
        let mut m = manifest();
        m.symbol = "mfma_loop.kd".into();
        check(&m).unwrap();
    }

    #[test]
    fn gfx90a_fixture_does_not_match_a_gfx942_manifest() {
        let code = codeobj::parse(include_bytes!("../tests-data/straight_gfx90a.hsaco")).unwrap();
        let m = manifest();
        assert_eq!(
            code.check_arch(crate::hip::arch_base(&m.arch))
                .unwrap_err()
                .to_string(),
            "code object is for gfx90a, expected gfx942"
        );
    }

    #[test]
    fn value_errors() {
        let layout = KernargLayout::from_manifest(&manifest()).unwrap();
        // Missing value.
        let mut v = values(1);
        v.remove(1);
        assert_eq!(
            layout.build(&v).unwrap_err().to_string(),
            "no value for argument b (Weight)"
        );
        // Duplicate and unexpected values.
        let mut v = values(1);
        v.push((ArgRole::M, ArgValue::I32(1)));
        assert_eq!(
            layout.build(&v).unwrap_err(),
            LaunchError::DuplicateValue { role: ArgRole::M }
        );
        let mut v = values(1);
        v.push((ArgRole::Bias, buf(0x1000, 128, "bf16")));
        assert_eq!(
            layout.build(&v).unwrap_err(),
            LaunchError::UnexpectedValue {
                role: ArgRole::Bias
            }
        );
        // Scalar where a pointer is expected and vice versa.
        let mut v = values(1);
        v[0].1 = ArgValue::I32(0);
        assert_eq!(
            layout.build(&v).unwrap_err().to_string(),
            "argument a: the kernel takes a ptr, the value is a i32"
        );
        let mut v = values(1);
        v[3].1 = ArgValue::F32(1.0);
        assert!(matches!(
            layout.build(&v).unwrap_err(),
            LaunchError::WrongValueKind { .. }
        ));
        // Element type mismatch; raw bytes are accepted.
        let mut v = values(1);
        v[0].1 = buf(0x1000, 64 * 128 * 2, "f16");
        assert_eq!(
            layout.build(&v).unwrap_err().to_string(),
            "argument a: the kernel reads bf16 elements, the buffer holds f16"
        );
        let mut v = values(1);
        v[0].1 = buf(0x1000, 64 * 128 * 2, "u8");
        layout.build(&v).unwrap();
    }

    #[test]
    fn launch_value_checks() {
        let m = manifest();
        let layout = KernargLayout::from_manifest(&m).unwrap();
        // M out of range.
        assert_eq!(
            check_values(&m, &layout, 0, &values(0)).unwrap_err(),
            LaunchError::MOutOfRange {
                m: 0,
                min: 1,
                max: 256
            }
        );
        assert!(check_values(&m, &layout, 257, &values(257)).is_err());
        // M argument disagreeing with m.
        assert!(matches!(
            check_values(&m, &layout, 8, &values(9)).unwrap_err(),
            LaunchError::MValue { .. }
        ));
        // x holds 64 rows of K = 128 bf16: 65 rows do not fit.
        assert_eq!(
            check_values(&m, &layout, 65, &values(65))
                .unwrap_err()
                .to_string(),
            "argument a: the buffer has 16384 bytes, M = 65 needs at least 16640"
        );
        // The weight buffer must hold N * K / 2 bytes.
        let mut v = values(8);
        v[1].1 = buf(0x2000, 64 * 128 / 2 - 4, "u32");
        assert!(matches!(
            check_values(&m, &layout, 8, &v).unwrap_err(),
            LaunchError::BufferTooSmall { .. }
        ));
        assert_eq!(required_bytes(&m, ArgRole::Scales, 1), Some(64 * 4 * 4));
        // The mma_sync layouts: 2 slots per row and 64-K chunk, 16-bit values or exponent bytes.
        let mut nv = m.clone();
        nv.weight_layout.words_per_lane = 4;
        nv.scale_layout.id = crate::numerics::repack::MMA_SCALE_LAYOUT_ID.into();
        assert_eq!(
            required_bytes(&nv, ArgRole::Scales, 1),
            Some(64 * 2 * 2 * 2)
        );
        nv.scale_layout.id = crate::numerics::repack::MMA_SCALE_EXP_LAYOUT_ID.into();
        assert_eq!(required_bytes(&nv, ArgRole::Scales, 1), Some(64 * 2 * 2));
        assert_eq!(required_bytes(&m, ArgRole::Bias, 1), None);
        assert_eq!(required_bytes(&m, ArgRole::M, 1), None);
    }
}
