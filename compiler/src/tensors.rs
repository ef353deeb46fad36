//! safetensors files for `nibble quantize` and `nibble run`: reading tensors with their dtypes and shapes checked,
//! quantizing a float weight to checkpoint MXFP4/NVFP4, loading one layer's inputs in checkpoint layout against a
//! manifest, and writing results atomically (a temporary file in the destination's directory, then a rename, so a
//! failed write never leaves a partial file).
//!
//! Every error names the file or the tensor and says what was expected and what was found, in one line.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use nibble_runtime::manifest::Manifest;
use nibble_runtime::numerics::quantize::{
    quantize_mxfp4, quantize_nvfp4, QuantError, MXFP4_GROUP, NVFP4_GROUP,
};
use nibble_runtime::numerics::{ScaleData, ScaleType};
pub use safetensors::tensor::Dtype;
use safetensors::tensor::{SafeTensors, View};
use thiserror::Error;

use crate::run::{Half16, LayerInputs};

#[derive(Debug, Error)]
pub enum TensorError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: no tensor `{name}` (tensors: {available})")]
    Missing {
        path: String,
        name: String,
        available: String,
    },
    #[error("{path}: {message}")]
    NoWeight { path: String, message: String },
    #[error("tensor `{name}`: dtype {found}, expected {expected}")]
    Dtype {
        name: String,
        expected: String,
        found: String,
    },
    #[error("tensor `{name}`: shape {found}, expected {expected}")]
    Shape {
        name: String,
        expected: String,
        found: String,
    },
    #[error("tensor `{name}`: {message}")]
    Value { name: String, message: String },
    #[error("tensor `{name}`: {source}")]
    Quantize {
        name: String,
        #[source]
        source: QuantError,
    },
    #[error("refusing to write {path}: it is the {what}")]
    SamePath { path: String, what: &'static str },
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
}

impl TensorError {
    /// The message, prefixed with `path` unless it names a file already.
    pub fn in_file(&self, path: &Path) -> String {
        match self {
            TensorError::Dtype { .. }
            | TensorError::Shape { .. }
            | TensorError::Value { .. }
            | TensorError::Quantize { .. } => format!("{}: {self}", path.display()),
            _ => self.to_string(),
        }
    }
}

fn shape_str(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// One tensor of a [`TensorFile`], borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Tensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl Tensor<'_> {
    /// Checks the dtype against a list of accepted ones.
    pub fn expect_dtype(&self, accepted: &[Dtype]) -> Result<(), TensorError> {
        if accepted.contains(&self.dtype) {
            return Ok(());
        }
        let names: Vec<String> = accepted.iter().map(Dtype::to_string).collect();
        Err(TensorError::Dtype {
            name: self.name.clone(),
            expected: names.join(" or "),
            found: self.dtype.to_string(),
        })
    }

    /// Checks the shape; `expected` is how the message spells the expected shape, e.g. `[N=128, K/2=128]`.
    pub fn expect_shape(&self, want: &[usize], expected: &str) -> Result<(), TensorError> {
        if self.shape == want {
            Ok(())
        } else {
            Err(TensorError::Shape {
                name: self.name.clone(),
                expected: expected.to_string(),
                found: shape_str(&self.shape),
            })
        }
    }

    /// 16-bit elements as bit patterns (little endian).
    pub fn u16s(&self) -> Vec<u16> {
        self.data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    /// 32-bit float elements (little endian).
    pub fn f32s(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Elements of a BF16, F16 or F32 tensor as f32 (exactly); `None` for other dtypes.
    pub fn floats(&self) -> Option<Vec<f32>> {
        match self.dtype {
            Dtype::BF16 => Some(
                self.u16s()
                    .into_iter()
                    .map(|b| half::bf16::from_bits(b).to_f32())
                    .collect(),
            ),
            Dtype::F16 => Some(
                self.u16s()
                    .into_iter()
                    .map(|b| half::f16::from_bits(b).to_f32())
                    .collect(),
            ),
            Dtype::F32 => Some(self.f32s()),
            _ => None,
        }
    }
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::BF16 | Dtype::F16 | Dtype::F32)
}

/// A safetensors file read into memory and checked to parse.
pub struct TensorFile {
    pub path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<TensorFile, TensorError> {
        let bytes = std::fs::read(path).map_err(|source| TensorError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let file = TensorFile {
            path: path.to_path_buf(),
            bytes,
        };
        file.parsed()?;
        Ok(file)
    }

    fn parsed(&self) -> Result<SafeTensors<'_>, TensorError> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| TensorError::Parse {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parsed()
            .map(|st| st.names().into_iter().map(str::to_string).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The tensor `name`, if the file has one.
    pub fn get(&self, name: &str) -> Result<Option<Tensor<'_>>, TensorError> {
        let st = self.parsed()?;
        match st.tensor(name) {
            Ok(v) => Ok(Some(Tensor {
                name: name.to_string(),
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data(),
            })),
            Err(_) => Ok(None),
        }
    }

    /// The tensor `name`, or an error listing the file's tensors.
    pub fn require(&self, name: &str) -> Result<Tensor<'_>, TensorError> {
        self.get(name)?.ok_or_else(|| TensorError::Missing {
            path: self.path.display().to_string(),
            name: name.to_string(),
            available: self.names().join(", "),
        })
    }
}

/// A tensor to write.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OwnedTensor {
    pub fn u16s(dtype: Dtype, shape: Vec<usize>, v: &[u16]) -> OwnedTensor {
        OwnedTensor {
            dtype,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn f32s(shape: Vec<usize>, v: &[f32]) -> OwnedTensor {
        OwnedTensor {
            dtype: Dtype::F32,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    fn copy_of(t: &Tensor<'_>) -> OwnedTensor {
        OwnedTensor {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: t.data.to_vec(),
        }
    }
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Whether `a` and `b` name the same file (`b` need not exist; then its directory is resolved).
pub fn same_file(a: &Path, b: &Path) -> bool {
    fn resolve(p: &Path) -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            if ma.dev() == mb.dev() && ma.ino() == mb.ino() {
                return true;
            }
        }
    }
    match (resolve(a), resolve(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Writes `tensors` as a safetensors file at `path`: to a temporary file in the same directory first, renamed over
/// `path` only once complete.
pub fn write_atomic(path: &Path, tensors: &[(String, OwnedTensor)]) -> Result<(), TensorError> {
    let werr = |message: String| TensorError::Write {
        path: path.display().to_string(),
        message,
    };
    let bytes = safetensors::tensor::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| werr(e.to_string()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".nibble-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| werr(e.to_string()))?;
    tmp.write_all(&bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| werr(e.to_string()))?;
    // On failure the temporary file is removed when the error drops it.
    tmp.persist(path).map_err(|e| werr(e.error.to_string()))?;
    Ok(())
}

/// The checkpoint formats `nibble quantize` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantFormat {
    /// OCP MXFP4 (Quark): E2M1 elements, one E8M0 scale (U8) per 32 elements along K.
    Mxfp4,
    /// NVFP4 (ModelOpt): E2M1 elements, one E4M3 scale per 16 elements, one F32 tensor scale.
    Nvfp4,
}

impl QuantFormat {
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Mxfp4 => "mxfp4",
            QuantFormat::Nvfp4 => "nvfp4",
        }
    }

    pub fn group(self) -> usize {
        match self {
            QuantFormat::Mxfp4 => MXFP4_GROUP,
            QuantFormat::Nvfp4 => NVFP4_GROUP,
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`quantize_file`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantSummary {
    /// The source tensor's name and dtype.
    pub source: String,
    pub source_dtype: Dtype,
    pub n: usize,
    pub k: usize,
    pub format: QuantFormat,
    /// NVFP4's `weight_scale_2`.
    pub tensor_scale: Option<f32>,
    /// The name of the bias tensor copied, if any.
    pub bias: Option<String>,
}

/// Picks the weight to quantize: `name` if given, else `weight`, else the only 2-D float tensor.
fn pick_weight<'a>(file: &'a TensorFile, name: Option<&str>) -> Result<Tensor<'a>, TensorError> {
    if let Some(n) = name {
        return file.require(n);
    }
    if let Some(t) = file.get("weight")? {
        return Ok(t);
    }
    let mut candidates = vec![];
    for n in file.names() {
        if let Some(t) = file.get(&n)? {
            if t.shape.len() == 2 && is_float(t.dtype) {
                candidates.push(t);
            }
        }
    }
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(TensorError::NoWeight {
            path: file.path.display().to_string(),
            message: format!(
                "no tensor `weight` and no 2-D BF16/F16/F32 tensor (tensors: {}); name one with --tensor",
                file.names().join(", ")
            ),
        }),
        _ => {
            let names: Vec<&str> = candidates.iter().map(|t| t.name.as_str()).collect();
            Err(TensorError::NoWeight {
                path: file.path.display().to_string(),
                message: format!(
                    "no tensor `weight` and several 2-D float tensors ({}); name one with --tensor",
                    names.join(", ")
                ),
            })
        }
    }
}

/// Quantizes the float weight `[N, K]` of `input` (see [`pick_weight`] for which one) to `format` and writes
/// `output` with `weight` (U8 `[N, K/2]`), `weight_scale` (U8 `[N, K/32]` for MXFP4, F8_E4M3 `[N, K/16]` for NVFP4),
/// `weight_scale_2` (F32 `[]`, NVFP4 only) and a copy of the layer's 1-D bias of length N if `input` has one
/// (`bias`, or `<prefix>bias` for a weight named `<prefix>weight`).
pub fn quantize_file(
    input: &Path,
    output: &Path,
    format: QuantFormat,
    tensor: Option<&str>,
) -> Result<QuantSummary, TensorError> {
    if same_file(input, output) {
        return Err(TensorError::SamePath {
            path: output.display().to_string(),
            what: "input file",
        });
    }
    let file = TensorFile::open(input)?;
    let w = pick_weight(&file, tensor)?;
    w.expect_dtype(&[Dtype::BF16, Dtype::F16, Dtype::F32])?;
    let [n, k] = w.shape[..] else {
        return Err(TensorError::Shape {
            name: w.name.clone(),
            expected: "a 2-D [N, K] weight".into(),
            found: shape_str(&w.shape),
        });
    };
    let group = format.group();
    if k == 0 || n == 0 || !k.is_multiple_of(group) {
        return Err(TensorError::Shape {
            name: w.name.clone(),
            expected: format!(
                "[N, K] with N > 0 and K a positive multiple of the {format} group size {group}"
            ),
            found: shape_str(&w.shape),
        });
    }
    let values = w.floats().ok_or_else(|| TensorError::Dtype {
        name: w.name.clone(),
        expected: "BF16 or F16 or F32".into(),
        found: w.dtype.to_string(),
    })?;
    let qerr = |source| TensorError::Quantize {
        name: w.name.clone(),
        source,
    };
    let mut out: Vec<(String, OwnedTensor)> = vec![];
    let weight_shape = vec![n, k / 2];
    let scale_shape = vec![n, k / group];
    let tensor_scale = match format {
        QuantFormat::Mxfp4 => {
            let q = quantize_mxfp4(&values, n, k).map_err(qerr)?;
            out.push((
                "weight".into(),
                bytes_tensor(Dtype::U8, weight_shape, q.weight),
            ));
            out.push((
                "weight_scale".into(),
                bytes_tensor(Dtype::U8, scale_shape, q.scale),
            ));
            None
        }
        QuantFormat::Nvfp4 => {
            let q = quantize_nvfp4(&values, n, k).map_err(qerr)?;
            out.push((
                "weight".into(),
                bytes_tensor(Dtype::U8, weight_shape, q.weight),
            ));
            out.push((
                "weight_scale".into(),
                bytes_tensor(Dtype::F8_E4M3, scale_shape, q.scale),
            ));
            out.push((
                "weight_scale_2".into(),
                OwnedTensor::f32s(vec![], &[q.tensor_scale]),
            ));
            Some(q.tensor_scale)
        }
    };
    let bias_name = match w.name.strip_suffix("weight") {
        Some(prefix) => format!("{prefix}bias"),
        None => "bias".to_string(),
    };
    let mut bias = None;
    if let Some(b) = file.get(&bias_name)? {
        b.expect_dtype(&[Dtype::BF16, Dtype::F16, Dtype::F32])?;
        b.expect_shape(&[n], &format!("[N={n}]"))?;
        out.push(("bias".into(), OwnedTensor::copy_of(&b)));
        bias = Some(bias_name);
    }
    write_atomic(output, &out)?;
    Ok(QuantSummary {
        source: w.name.clone(),
        source_dtype: w.dtype,
        n,
        k,
        format,
        tensor_scale,
        bias,
    })
}

fn bytes_tensor(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> OwnedTensor {
    OwnedTensor { dtype, shape, data }
}

/// The safetensors dtype of a manifest's `bf16`/`f16`.
pub fn half_dtype(name: &str) -> Option<Dtype> {
    match name {
        "bf16" => Some(Dtype::BF16),
        "f16" => Some(Dtype::F16),
        _ => None,
    }
}

fn manifest_dtype(what: &str, name: &str) -> Result<Dtype, TensorError> {
    half_dtype(name).ok_or_else(|| TensorError::Value {
        name: what.to_string(),
        message: format!("the manifest's dtype {name:?} is not bf16 or f16"),
    })
}

/// Reads one layer's inputs in checkpoint layout from `file` and checks every name, dtype, shape and block-scale
/// value against `manifest` (`x` `[M, K]`; `weight` U8 `[N, K/2]`; `weight_scale` `[N, K/group]` in the format's
/// scale type, E8M0/E4M3 codes also as U8; `weight_scale_2` F32 `[]` or `[1]` exactly when the format has a tensor
/// scale; `bias` `[N]` exactly when the kernel takes one). Other tensors are ignored. `M`'s range and the tensor
/// scale's value are checked by [`crate::run::validate`].
pub fn load_layer_inputs(file: &TensorFile, m: &Manifest) -> Result<LayerInputs, TensorError> {
    let s = &m.shapes;
    let (n, k) = (s.n as usize, s.k as usize);
    let group = m.format.group as usize;

    let x = file.require("x")?;
    let x_dt = manifest_dtype("x", &s.x_dtype)?;
    x.expect_dtype(&[x_dt])?;
    let rows = match x.shape[..] {
        [rows, kk] if kk == k => rows,
        _ => {
            return Err(TensorError::Shape {
                name: "x".into(),
                expected: format!("[M, K={k}]"),
                found: shape_str(&x.shape),
            })
        }
    };
    let rows = u32::try_from(rows).map_err(|_| TensorError::Shape {
        name: "x".into(),
        expected: format!("[M, K={k}] with M <= {}", s.m_max),
        found: shape_str(&x.shape),
    })?;

    let w = file.require("weight")?;
    w.expect_dtype(&[Dtype::U8])?;
    w.expect_shape(&[n, k / 2], &format!("[N={n}, K/2={}]", k / 2))?;

    let st = ScaleType::parse(&m.format.scale).ok_or_else(|| TensorError::Value {
        name: "weight_scale".into(),
        message: format!(
            "format {} has an unknown scale type {:?}",
            m.format.name, m.format.scale
        ),
    })?;
    let sc = file.require("weight_scale")?;
    sc.expect_dtype(match st {
        ScaleType::E8m0 => &[Dtype::U8, Dtype::F8_E8M0],
        ScaleType::E4m3 => &[Dtype::F8_E4M3, Dtype::U8],
        ScaleType::F16 => &[Dtype::F16],
        ScaleType::Bf16 => &[Dtype::BF16],
        ScaleType::F32 => &[Dtype::F32],
    })?;
    let groups = k / group;
    sc.expect_shape(&[n, groups], &format!("[N={n}, K/{group}={groups}]"))?;
    let scales = match st {
        ScaleType::E8m0 | ScaleType::E4m3 => ScaleData::Bytes(sc.data.to_vec()),
        ScaleType::F16 => ScaleData::F16(sc.u16s()),
        ScaleType::Bf16 => ScaleData::Bf16(sc.u16s()),
        ScaleType::F32 => ScaleData::F32(sc.f32s()),
    };
    for i in 0..scales.len() {
        let Some((v, raw)) = scales.value(st, i) else {
            continue;
        };
        let problem = if v.is_nan() {
            "NaN"
        } else if v.is_infinite() {
            "infinite"
        } else if v < 0.0 {
            "negative"
        } else {
            continue;
        };
        return Err(TensorError::Value {
            name: "weight_scale".into(),
            message: format!(
                "block scale at row {}, group {} ({raw}) is {problem}",
                i / groups,
                i % groups
            ),
        });
    }

    let ts = file.get("weight_scale_2")?;
    let tensor_scale = match (m.format.tensor_scale, ts) {
        (true, None) => {
            return Err(TensorError::Missing {
                path: file.path.display().to_string(),
                name: "weight_scale_2".into(),
                available: file.names().join(", "),
            })
        }
        (false, Some(_)) => {
            return Err(TensorError::Value {
                name: "weight_scale_2".into(),
                message: format!(
                    "format {} has no per-tensor scale, but the file has one",
                    m.format.name
                ),
            })
        }
        (false, None) => None,
        (true, Some(t)) => {
            t.expect_dtype(&[Dtype::F32])?;
            if !(t.shape.is_empty() || t.shape == [1]) {
                return Err(TensorError::Shape {
                    name: t.name.clone(),
                    expected: "[] or [1]".into(),
                    found: shape_str(&t.shape),
                });
            }
            t.f32s().first().copied()
        }
    };

    let b = file.get("bias")?;
    let bias = match (&s.bias_dtype, b) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(TensorError::Value {
                name: "bias".into(),
                message: format!("kernel {} takes no bias, but the file has one", m.kernel),
            })
        }
        (Some(_), None) => {
            return Err(TensorError::Missing {
                path: file.path.display().to_string(),
                name: "bias".into(),
                available: file.names().join(", "),
            })
        }
        (Some(dt), Some(b)) => {
            b.expect_dtype(&[manifest_dtype("bias", dt)?])?;
            b.expect_shape(&[n], &format!("[N={n}]"))?;
            Some(Half16 {
                dtype: dt.clone(),
                bits: b.u16s(),
            })
        }
    };

    Ok(LayerInputs {
        m: rows,
        x: Half16 {
            dtype: s.x_dtype.clone(),
            bits: x.u16s(),
        },
        weight: w.data.to_vec(),
        scales,
        tensor_scale,
        bias,
    })
}
