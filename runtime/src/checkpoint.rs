//! FP4 checkpoints in Hugging Face layout: `config.json` plus safetensors, memory-mapped.
//!
//! A checkpoint directory holds either one `model.safetensors`, or shards named in `model.safetensors.index.json`
//! (`{"weight_map": {tensor: file}}`), or (failing both) exactly one `*.safetensors` file. `config.json` says which
//! format the weights are in (`quantization_config`), see [`QuantScheme`]:
//!
//! - MXFP4 (Quark, `quant_method: "quark"`, `global_quant_config.weight.dtype == "fp4"`, group 32, `e8m0` scales):
//!   `<layer>.weight` U8 `[N, K/2]`, `<layer>.weight_scale` U8 (or F8_E8M0) `[N, K/32]` raw E8M0 codes. Some
//!   exporters store the scales as F32; they are accepted and converted to E8M0 codes when every value is exactly a
//!   power of two `2^e`, `-127 <= e <= 127`, and rejected otherwise (no rounding, no zero: E8M0 has no zero).
//! - NVFP4 (ModelOpt, `quant_method: "modelopt"`, `quant_algo: "NVFP4"`, group 16): `<layer>.weight` U8 `[N, K/2]`,
//!   `<layer>.weight_scale` F8_E4M3 `[N, K/16]`, `<layer>.weight_scale_2` F32 scalar (shape `[]` or `[1]`).
//!   `input_scale` (for W4A4) is ignored.
//! - Optional `<layer>.bias` BF16/F16 `[N]` in both.
//!
//! A linear layer is every tensor `<prefix>.weight` that has a `<prefix>.weight_scale`; layers left unquantized by
//! the exporter (no `weight_scale`) are not listed. [`Checkpoint::open`] checks the dtypes and shapes of every
//! linear layer, so a checkpoint that opens has consistent headers; [`Checkpoint::layer`] checks the values:
//! E8M0 0xFF (NaN), NaN or negative E4M3 block scales (E4M3 -0, 0x80, counts as zero and is accepted, as in
//! `numerics::reference`), a non-finite or negative `weight_scale_2`. Every error names the file and the tensor;
//! value errors also name the layer, the row and the group.
//!
//! The weight bytes are borrowed from the mapping (no copy); scales and bias are decoded into owned vectors
//! (safetensors gives no alignment guarantee, and they are small).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use serde_json::Value;
use thiserror::Error;

use crate::manifest::{Element, Format};
use crate::numerics::fp8::e4m3fn_decode;
use crate::numerics::reference::scale_problem;
use crate::numerics::{DType, ScaleData};

/// Single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The model config.
pub const CONFIG_FILE: &str = "config.json";

/// The FP4 weight format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuantScheme {
    /// E2M1 elements, one E8M0 scale per 32 K elements (OCP microscaling; Quark).
    Mxfp4,
    /// E2M1 elements, one E4M3FN scale per 16 K elements, one f32 tensor scale (ModelOpt).
    Nvfp4,
}

impl QuantScheme {
    pub fn name(self) -> &'static str {
        match self {
            QuantScheme::Mxfp4 => "mxfp4",
            QuantScheme::Nvfp4 => "nvfp4",
        }
    }

    /// K elements sharing one block scale.
    pub fn group(self) -> usize {
        match self {
            QuantScheme::Mxfp4 => 32,
            QuantScheme::Nvfp4 => 16,
        }
    }

    /// Whether the format has an f32 per-tensor scale.
    pub fn has_tensor_scale(self) -> bool {
        self == QuantScheme::Nvfp4
    }

    /// The manifest's description of this format (the DSL prelude's `mxfp4` / `nvfp4`).
    pub fn format(self) -> Format {
        Format {
            name: self.name().to_string(),
            element: Element {
                name: "e2m1".into(),
                exp_bits: 2,
                man_bits: 1,
                bias: 1,
            },
            scale: match self {
                QuantScheme::Mxfp4 => "e8m0",
                QuantScheme::Nvfp4 => "e4m3",
            }
            .into(),
            group: self.group() as u32,
            tensor_scale: self.has_tensor_scale(),
        }
    }

    /// The scheme a manifest format computes, judged by its semantics (element, scale type, group, tensor scale),
    /// not its name; `None` for formats no checkpoint scheme here matches (custom DSL formats).
    pub fn of_format(f: &Format) -> Option<QuantScheme> {
        let e = &f.element;
        if (e.exp_bits, e.man_bits, e.bias) != (2, 1, 1) {
            return None;
        }
        [QuantScheme::Mxfp4, QuantScheme::Nvfp4]
            .into_iter()
            .find(|s| {
                let want = s.format();
                f.scale == want.scale
                    && f.group == want.group
                    && f.tensor_scale == want.tensor_scale
            })
    }
}

impl std::fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: String, message: String },
    #[error("{path}: {what}")]
    Config { path: String, what: String },
    #[error("{path}: {what}")]
    Index { path: String, what: String },
    #[error(
        "{dir}: no checkpoint ({SINGLE_FILE}, {INDEX_FILE} or a single *.safetensors file) found"
    )]
    NotFound { dir: String },
    #[error("tensor `{tensor}` is in both {first} and {second}")]
    Duplicate {
        tensor: String,
        first: String,
        second: String,
    },
    #[error("{dir}: no linear layer `{layer}` (no tensor `{layer}.weight` with a `{layer}.weight_scale`)")]
    NoLayer { dir: String, layer: String },
    #[error("{path}: tensor `{tensor}`: dtype {found}, expected {expected}")]
    Dtype {
        path: String,
        tensor: String,
        expected: String,
        found: String,
    },
    #[error("{path}: tensor `{tensor}`: shape {found:?}, expected {expected}")]
    Shape {
        path: String,
        tensor: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{tensor}` of layer `{layer}`, row {row}, group {group}: {what}")]
    ScaleValue {
        path: String,
        tensor: String,
        layer: String,
        row: usize,
        group: usize,
        what: String,
    },
    #[error("{path}: tensor `{tensor}` of layer `{layer}`: {what}")]
    Value {
        path: String,
        tensor: String,
        layer: String,
        what: String,
    },
}

fn disp(p: &Path) -> String {
    p.display().to_string()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: disp(path),
        source,
    }
}

/// The model dimensions of `config.json` (absent fields are `None`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelConfig {
    pub hidden_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub num_attention_heads: Option<u64>,
    /// Defaults to `num_attention_heads` when absent (the Hugging Face convention).
    pub num_key_value_heads: Option<u64>,
    /// As written; see [`ModelConfig::head_dim`] for the derived value.
    pub head_dim: Option<u64>,
    pub num_hidden_layers: Option<u64>,
}

impl ModelConfig {
    /// `head_dim`, or `hidden_size / num_attention_heads` when the config has none.
    pub fn head_dim(&self) -> Option<u64> {
        self.head_dim.or_else(|| {
            let (h, a) = (self.hidden_size?, self.num_attention_heads?);
            (a != 0).then(|| h / a)
        })
    }
}

/// Parses `config.json` text: the model dimensions and the quantization scheme. `path` is for messages only.
pub fn parse_config(path: &str, text: &str) -> Result<(ModelConfig, QuantScheme), CheckpointError> {
    let cerr = |what: String| CheckpointError::Config {
        path: path.to_string(),
        what,
    };
    let v: Value = serde_json::from_str(text).map_err(|e| cerr(format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| cerr("the config is not a JSON object".into()))?;
    let int = |name: &str| -> Result<Option<u64>, CheckpointError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(Some)
                .ok_or_else(|| cerr(format!("`{name}` is {x}, not a non-negative integer"))),
        }
    };
    let heads = int("num_attention_heads")?;
    let cfg = ModelConfig {
        hidden_size: int("hidden_size")?,
        intermediate_size: int("intermediate_size")?,
        num_attention_heads: heads,
        num_key_value_heads: int("num_key_value_heads")?.or(heads),
        head_dim: int("head_dim")?,
        num_hidden_layers: int("num_hidden_layers")?,
    };
    let q = obj
        .get("quantization_config")
        .ok_or_else(|| cerr("no `quantization_config`: not a quantized checkpoint".into()))?;
    let scheme =
        parse_quant_config(q).map_err(|what| cerr(format!("quantization_config: {what}")))?;
    Ok((cfg, scheme))
}

/// A JSON value for messages; `missing` when absent.
fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "missing".to_string(), Value::to_string)
}

fn parse_quant_config(q: &Value) -> Result<QuantScheme, String> {
    let method = q
        .get("quant_method")
        .and_then(Value::as_str)
        .ok_or("no string `quant_method`")?;
    // An optional field that must have a given value when present.
    let expect = |obj: &Value, field: &str, want: &Value| -> Result<(), String> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(()),
            Some(x) if x == want => Ok(()),
            Some(x) => Err(format!("`{field}` is {x}, expected {want}")),
        }
    };
    match method {
        "quark" => {
            let w = q
                .get("global_quant_config")
                .and_then(|g| g.get("weight"))
                .ok_or("quark: no `global_quant_config.weight`")?;
            let w = w
                .as_object()
                .map(|_| w)
                .ok_or("quark: `global_quant_config.weight` is not an object")?;
            match w.get("dtype").and_then(Value::as_str) {
                Some("fp4") => {}
                _ => {
                    return Err(format!(
                        "quark: weight dtype {} is not \"fp4\" (only MXFP4 is supported)",
                        shown(w.get("dtype"))
                    ))
                }
            }
            expect(w, "group_size", &Value::from(32))
                .and_then(|()| expect(w, "scale_format", &Value::from("e8m0")))
                .and_then(|()| expect(w, "qscheme", &Value::from("per_group")))
                .map_err(|e| format!("quark MXFP4 weight: {e}"))?;
            Ok(QuantScheme::Mxfp4)
        }
        "modelopt" => {
            // Newer exports put the fields at the top level, hf_quant_config.json style under `quantization`.
            let src = q.get("quantization").filter(|s| s.is_object()).unwrap_or(q);
            match src.get("quant_algo").and_then(Value::as_str) {
                Some("NVFP4") => {}
                _ => {
                    return Err(format!(
                    "modelopt: quant_algo {} is not \"NVFP4\" (the only ModelOpt format supported)",
                    shown(src.get("quant_algo"))
                ))
                }
            }
            expect(src, "group_size", &Value::from(16))
                .map_err(|e| format!("modelopt NVFP4: {e}"))?;
            Ok(QuantScheme::Nvfp4)
        }
        other => Err(format!(
            "quant_method {other:?} is not supported (expected \"quark\" or \"modelopt\")"
        )),
    }
}

/// One memory-mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    /// Kept alive as long as the shard: every tensor slice borrows from it.
    map: Mmap,
    /// Offset of the data section (8 + header length).
    data_start: usize,
    metadata: Metadata,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("bytes", &self.map.len())
            .finish()
    }
}

impl Shard {
    fn open(path: PathBuf) -> Result<Shard, CheckpointError> {
        let file = File::open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len < 8 {
            return Err(CheckpointError::Safetensors {
                path: disp(&path),
                message: format!("the file is {len} bytes, shorter than the 8-byte header length"),
            });
        }
        // SAFETY: the file is opened read-only and mapped read-only (`Mmap`, never `MmapMut`); the mapping is owned
        // by this `Shard` together with the header parsed from it, so no slice handed out outlives it. As with any
        // mapped file, another process truncating or rewriting the file while it is mapped is outside Rust's
        // guarantees; checkpoints are treated as immutable inputs.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(&path))?;
        let (n, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| CheckpointError::Safetensors {
                path: disp(&path),
                message: e.to_string(),
            })?;
        Ok(Shard {
            path,
            map,
            data_start: 8 + n,
            metadata,
        })
    }

    fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.metadata.tensors().into_keys()
    }

    fn tensor<'a>(&'a self, name: &'a str) -> Option<TensorRef<'a>> {
        let info = self.metadata.info(name)?;
        let (a, b) = info.data_offsets;
        // `read_metadata` checked that the offsets tile the data section; `get` keeps this panic-free anyway.
        let data = self
            .map
            .get(self.data_start.checked_add(a)?..self.data_start.checked_add(b)?)?;
        Some(TensorRef {
            path: &self.path,
            name,
            dtype: info.dtype,
            shape: &info.shape,
            data,
        })
    }
}

/// A tensor of a checkpoint: header fields and its bytes in the mapping.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    pub path: &'a Path,
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl TensorRef<'_> {
    fn dtype_err(&self, expected: &str) -> CheckpointError {
        CheckpointError::Dtype {
            path: disp(self.path),
            tensor: self.name.to_string(),
            expected: expected.to_string(),
            found: format!("{:?}", self.dtype),
        }
    }

    fn shape_err(&self, expected: String) -> CheckpointError {
        CheckpointError::Shape {
            path: disp(self.path),
            tensor: self.name.to_string(),
            expected,
            found: self.shape.to_vec(),
        }
    }

    fn value_err(&self, layer: &str, what: String) -> CheckpointError {
        CheckpointError::Value {
            path: disp(self.path),
            tensor: self.name.to_string(),
            layer: layer.to_string(),
            what,
        }
    }

    fn scale_err(&self, layer: &str, i: usize, groups: usize, what: String) -> CheckpointError {
        CheckpointError::ScaleValue {
            path: disp(self.path),
            tensor: self.name.to_string(),
            layer: layer.to_string(),
            row: i / groups.max(1),
            group: i % groups.max(1),
            what,
        }
    }
}

/// A linear layer found in the checkpoint: `y = x W^T (+ bias)`, `W` `[N, K]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearInfo {
    /// Tensor-name prefix, e.g. `model.layers.0.mlp.down_proj`.
    pub prefix: String,
    pub n: usize,
    pub k: usize,
    pub has_bias: bool,
}

/// One layer's checked data, in checkpoint layout.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerData<'a> {
    pub prefix: String,
    pub scheme: QuantScheme,
    pub n: usize,
    pub k: usize,
    /// `[N, K/2]` bytes, low nibble = even K, borrowed from the mapping.
    pub weight: &'a [u8],
    /// `[N, K/group]` raw scale codes ([`ScaleData::Bytes`]: E8M0 for MXFP4, E4M3FN for NVFP4); F32 MXFP4 scales
    /// are converted to their E8M0 codes.
    pub scales: ScaleData,
    /// NVFP4's `weight_scale_2`; `None` for MXFP4.
    pub tensor_scale: Option<f32>,
    /// `[N]` bit patterns and their type.
    pub bias: Option<(DType, Vec<u16>)>,
}

/// An opened checkpoint directory.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    config: ModelConfig,
    scheme: QuantScheme,
    shards: Vec<Shard>,
    /// Tensor name -> index into `shards`.
    names: HashMap<String, usize>,
    layers: Vec<LinearInfo>,
}

/// The header-checked tensors of one layer.
struct LayerTensors<'a> {
    info: LinearInfo,
    weight: TensorRef<'a>,
    scale: TensorRef<'a>,
    scale2: Option<TensorRef<'a>>,
    bias: Option<(DType, TensorRef<'a>)>,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`: reads `config.json`, maps every shard, and checks the dtypes and shapes of
    /// every linear layer (see the module doc).
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
        let dir = dir.as_ref().to_path_buf();
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
        let (config, scheme) = parse_config(&disp(&cfg_path), &text)?;

        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let (files, weight_map) = if index_path.is_file() {
            let (files, map) = read_index(&dir, &index_path)?;
            (files, Some(map))
        } else if single.is_file() {
            (vec![single], None)
        } else {
            let mut found = vec![];
            for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let p = e.map_err(io_err(&dir))?.path();
                if p.extension().is_some_and(|x| x == "safetensors") && p.is_file() {
                    found.push(p);
                }
            }
            if found.len() != 1 {
                return Err(CheckpointError::NotFound { dir: disp(&dir) });
            }
            (found, None)
        };

        let shards = files
            .into_iter()
            .map(Shard::open)
            .collect::<Result<Vec<_>, _>>()?;
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, s) in shards.iter().enumerate() {
            for name in s.names() {
                if let Some(&j) = names.get(&name) {
                    return Err(CheckpointError::Duplicate {
                        tensor: name,
                        first: disp(&shards[j].path),
                        second: disp(&s.path),
                    });
                }
                names.insert(name, i);
            }
        }
        if let Some(map) = weight_map {
            for (tensor, file) in map {
                let at = dir.join(&file);
                let ok = names.get(&tensor).is_some_and(|&i| shards[i].path == at);
                if !ok {
                    return Err(CheckpointError::Index {
                        path: disp(&index_path),
                        what: format!(
                            "tensor `{tensor}` is mapped to {file}, which does not hold it"
                        ),
                    });
                }
            }
        }

        let mut ckpt = Checkpoint {
            dir,
            config,
            scheme,
            shards,
            names,
            layers: vec![],
        };
        let prefixes: BTreeSet<&str> = ckpt
            .names
            .keys()
            .filter_map(|n| n.strip_suffix(".weight"))
            .filter(|p| ckpt.names.contains_key(&format!("{p}.weight_scale")))
            .collect();
        let mut layers = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            layers.push(ckpt.layer_tensors(p)?.info);
        }
        ckpt.layers = layers;
        Ok(ckpt)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight format declared by `config.json`.
    pub fn format(&self) -> QuantScheme {
        self.scheme
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The files mapped, in order (one, or the shards of the index).
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Every linear layer (a `.weight` with a `.weight_scale`), sorted by prefix.
    pub fn linear_layers(&self) -> Vec<LinearInfo> {
        self.layers.clone()
    }

    /// The tensor `name`, if the checkpoint has it.
    pub fn tensor<'a>(&'a self, name: &'a str) -> Option<TensorRef<'a>> {
        let &i = self.names.get(name)?;
        self.shards.get(i)?.tensor(name)
    }

    /// The tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.names.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Looks up and header-checks the tensors of layer `prefix`.
    fn layer_tensors<'a>(&'a self, prefix: &str) -> Result<LayerTensors<'a>, CheckpointError> {
        let no_layer = || CheckpointError::NoLayer {
            dir: disp(&self.dir),
            layer: prefix.to_string(),
        };
        let get = |suffix: &str| -> Option<TensorRef<'a>> {
            let name = format!("{prefix}{suffix}");
            let (stored, &i) = self.names.get_key_value(&name)?;
            self.shards.get(i)?.tensor(stored)
        };
        let weight = get(".weight").ok_or_else(no_layer)?;
        let scale = get(".weight_scale").ok_or_else(no_layer)?;
        let scheme = self.scheme;
        let group = scheme.group();

        if weight.dtype != Dtype::U8 {
            return Err(weight.dtype_err("U8 (two E2M1 codes per byte)"));
        }
        let (n, k) = match *weight.shape {
            [n, half] if n > 0 && half > 0 && (2 * half).is_multiple_of(group) => (n, 2 * half),
            _ => {
                return Err(weight.shape_err(format!(
                    "[N, K/2] with N > 0 and K a positive multiple of the {scheme} group {group}"
                )))
            }
        };
        let scale_dtypes: &[Dtype] = match scheme {
            QuantScheme::Mxfp4 => &[Dtype::U8, Dtype::F8_E8M0, Dtype::F32],
            QuantScheme::Nvfp4 => &[Dtype::F8_E4M3],
        };
        if !scale_dtypes.contains(&scale.dtype) {
            let want = match scheme {
                QuantScheme::Mxfp4 => "U8 or F8_E8M0 (E8M0 codes) or F32 (powers of two)",
                QuantScheme::Nvfp4 => "F8_E4M3",
            };
            return Err(scale.dtype_err(want));
        }
        if scale.shape != [n, k / group] {
            return Err(scale.shape_err(format!("[{n}, {}] (N, K/{group})", k / group)));
        }

        let scale2 = get(".weight_scale_2");
        match (scheme, &scale2) {
            (QuantScheme::Nvfp4, None) => {
                return Err(CheckpointError::Value {
                    path: disp(scale.path),
                    tensor: format!("{prefix}.weight_scale_2"),
                    layer: prefix.to_string(),
                    what: "missing: NVFP4 needs the f32 per-tensor scale".into(),
                })
            }
            (QuantScheme::Mxfp4, Some(t)) => {
                return Err(t.value_err(
                    prefix,
                    "unexpected in an MXFP4 checkpoint (MXFP4 has no per-tensor scale)".into(),
                ))
            }
            (QuantScheme::Nvfp4, Some(t)) => {
                if t.dtype != Dtype::F32 {
                    return Err(t.dtype_err("F32"));
                }
                if !(t.shape.is_empty() || t.shape == [1]) {
                    return Err(t.shape_err("[] or [1] (a scalar)".into()));
                }
            }
            (QuantScheme::Mxfp4, None) => {}
        }

        let bias = match get(".bias") {
            None => None,
            Some(b) => {
                let dt = match b.dtype {
                    Dtype::BF16 => DType::Bf16,
                    Dtype::F16 => DType::F16,
                    _ => return Err(b.dtype_err("BF16 or F16")),
                };
                if b.shape != [n] {
                    return Err(b.shape_err(format!("[{n}] (N)")));
                }
                Some((dt, b))
            }
        };
        Ok(LayerTensors {
            info: LinearInfo {
                prefix: prefix.to_string(),
                n,
                k,
                has_bias: bias.is_some(),
            },
            weight,
            scale,
            scale2,
            bias,
        })
    }

    /// The checked data of layer `prefix` (see the module doc for the checks).
    pub fn layer(&self, prefix: &str) -> Result<LayerData<'_>, CheckpointError> {
        let t = self.layer_tensors(prefix)?;
        let LinearInfo { n, k, .. } = t.info;
        let groups = k / self.scheme.group();
        let s = &t.scale;
        let scales = match (self.scheme, s.dtype) {
            (QuantScheme::Mxfp4, Dtype::F32) => {
                let mut codes = Vec::with_capacity(n * groups);
                for (i, c) in s.data.chunks_exact(4).enumerate() {
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    let code = e8m0_code_of(v).ok_or_else(|| {
                        s.scale_err(
                            prefix,
                            i,
                            groups,
                            format!(
                                "f32 scale {v:e} (0x{:08x}) is not a power of two 2^e with -127 <= e <= 127, so \
                                 not an E8M0 value",
                                v.to_bits()
                            ),
                        )
                    })?;
                    codes.push(code);
                }
                codes
            }
            (QuantScheme::Mxfp4, _) => {
                if let Some(i) = s.data.iter().position(|&c| c == 0xFF) {
                    return Err(s.scale_err(prefix, i, groups, "E8M0 code 0xff is NaN".into()));
                }
                s.data.to_vec()
            }
            (QuantScheme::Nvfp4, _) => {
                for (i, &c) in s.data.iter().enumerate() {
                    if let Some(reason) = scale_problem(f64::from(e4m3fn_decode(c))) {
                        return Err(s.scale_err(
                            prefix,
                            i,
                            groups,
                            format!("E4M3 block scale 0x{c:02x} is {reason}"),
                        ));
                    }
                }
                s.data.to_vec()
            }
        };
        let tensor_scale = match t.scale2 {
            None => None,
            Some(ts) => {
                let [a, b, c, d] = <[u8; 4]>::try_from(ts.data).map_err(|_| {
                    ts.value_err(prefix, format!("{} bytes, expected 4", ts.data.len()))
                })?;
                let v = f32::from_le_bytes([a, b, c, d]);
                if !v.is_finite() || v.is_sign_negative() {
                    return Err(ts.value_err(
                        prefix,
                        format!(
                            "per-tensor scale {v} (0x{:08x}) must be finite and non-negative",
                            v.to_bits()
                        ),
                    ));
                }
                Some(v)
            }
        };
        let bias = t.bias.map(|(dt, b)| {
            let bits = b
                .data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            (dt, bits)
        });
        Ok(LayerData {
            prefix: prefix.to_string(),
            scheme: self.scheme,
            n,
            k,
            weight: t.weight.data,
            scales: ScaleData::Bytes(scales),
            tensor_scale,
            bias,
        })
    }
}

/// The E8M0 code of `v` when `v` is exactly `2^e`, `-127 <= e <= 127`.
fn e8m0_code_of(v: f32) -> Option<u8> {
    if !(v.is_finite() && v > 0.0) {
        return None;
    }
    let bits = v.to_bits();
    let (exp, man) = ((bits >> 23) & 0xFF, bits & 0x7F_FFFF);
    let e = if exp == 0 {
        // Subnormal: a power of two only with one mantissa bit; 2^-127 is the only one E8M0 has.
        (man == 1 << 22).then_some(-127)?
    } else if man == 0 {
        exp as i32 - 127
    } else {
        return None;
    };
    u8::try_from(e + 127).ok().filter(|&c| c != 0xFF)
}

/// Reads `model.safetensors.index.json`: the shard files (sorted, deduplicated) and the tensor -> file map.
fn read_index(
    dir: &Path,
    path: &Path,
) -> Result<(Vec<PathBuf>, BTreeMap<String, String>), CheckpointError> {
    let ierr = |what: String| CheckpointError::Index {
        path: disp(path),
        what,
    };
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| ierr(format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| ierr("no `weight_map` object".into()))?;
    let mut out = BTreeMap::new();
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| ierr(format!("`weight_map.{tensor}` is {file}, not a file name")))?;
        let p = Path::new(file);
        let plain = p.components().count() == 1
            && matches!(p.components().next(), Some(Component::Normal(_)));
        if !plain {
            return Err(ierr(format!(
                "shard `{file}` of tensor `{tensor}` is not a plain file name in the checkpoint directory"
            )));
        }
        files.insert(file.to_string());
        out.insert(tensor.clone(), file.to_string());
    }
    if files.is_empty() {
        return Err(ierr("`weight_map` is empty".into()));
    }
    Ok((files.into_iter().map(|f| dir.join(f)).collect(), out))
}

/// Helpers that write small checkpoints for tests (here and in other modules).
#[cfg(test)]
pub(crate) mod testutil {
    use std::collections::BTreeMap;
    use std::path::Path;

    use safetensors::tensor::{Dtype, TensorView};
    use serde_json::json;

    use crate::numerics::quantize::{quantize_mxfp4, quantize_nvfp4};

    /// A tensor to write: dtype, shape, little-endian bytes.
    #[derive(Debug, Clone)]
    pub struct T(pub Dtype, pub Vec<usize>, pub Vec<u8>);

    pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    pub fn u16_bytes(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    pub fn write_file(path: &Path, tensors: &BTreeMap<String, T>) {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, T(dt, shape, data))| {
                (
                    n.clone(),
                    TensorView::new(*dt, shape.clone(), data).expect("consistent test tensor"),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None).expect("serializes");
        std::fs::write(path, bytes).expect("writes");
    }

    pub fn quark_config() -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 1,
            "quantization_config": {
                "quant_method": "quark",
                "global_quant_config": {"weight": {
                    "dtype": "fp4", "qscheme": "per_group", "group_size": 32, "scale_format": "e8m0",
                    "ch_axis": -1, "is_dynamic": false
                }},
                "exclude": ["lm_head"]
            }
        })
    }

    pub fn modelopt_config() -> serde_json::Value {
        json!({
            "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "head_dim": 16,
            "num_hidden_layers": 1,
            "quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                                    "exclude_modules": ["lm_head"]}
        })
    }

    /// Writes `config` and `tensors`: one `model.safetensors` (shards = 1) or `shards` files with an index
    /// (tensors dealt round-robin in name order).
    pub fn write_checkpoint(
        dir: &Path,
        config: &serde_json::Value,
        tensors: &BTreeMap<String, T>,
        shards: usize,
    ) {
        std::fs::write(dir.join("config.json"), config.to_string()).expect("writes config");
        if shards <= 1 {
            write_file(&dir.join("model.safetensors"), tensors);
            return;
        }
        let mut parts = vec![BTreeMap::new(); shards];
        let mut map = serde_json::Map::new();
        for (i, (name, t)) in tensors.iter().enumerate() {
            let file = format!("model-{:05}-of-{shards:05}.safetensors", i % shards + 1);
            parts[i % shards].insert(name.clone(), t.clone());
            map.insert(name.clone(), file.into());
        }
        for (i, p) in parts.iter().enumerate() {
            write_file(
                &dir.join(format!("model-{:05}-of-{shards:05}.safetensors", i + 1)),
                p,
            );
        }
        let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())
            .expect("writes index");
    }

    /// Deterministic pseudo-random weights in [-1, 1).
    pub fn weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n * k)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    /// The tensors of one MXFP4 layer (u8 E8M0 scales, or F32 scales with `f32_scales`).
    pub fn mxfp4_layer(
        out: &mut BTreeMap<String, T>,
        prefix: &str,
        n: usize,
        k: usize,
        seed: u64,
        f32_scales: bool,
    ) {
        let q = quantize_mxfp4(&weights(n, k, seed), n, k).expect("quantizes");
        out.insert(
            format!("{prefix}.weight"),
            T(Dtype::U8, vec![n, k / 2], q.weight),
        );
        let scale = if f32_scales {
            let v: Vec<f32> = q
                .scale
                .iter()
                .map(|&c| crate::numerics::fp8::e8m0_decode(c))
                .collect();
            T(Dtype::F32, vec![n, k / 32], f32_bytes(&v))
        } else {
            T(Dtype::U8, vec![n, k / 32], q.scale)
        };
        out.insert(format!("{prefix}.weight_scale"), scale);
    }

    /// The tensors of one NVFP4 layer.
    pub fn nvfp4_layer(out: &mut BTreeMap<String, T>, prefix: &str, n: usize, k: usize, seed: u64) {
        let q = quantize_nvfp4(&weights(n, k, seed), n, k).expect("quantizes");
        out.insert(
            format!("{prefix}.weight"),
            T(Dtype::U8, vec![n, k / 2], q.weight),
        );
        out.insert(
            format!("{prefix}.weight_scale"),
            T(Dtype::F8_E4M3, vec![n, k / 16], q.scale),
        );
        out.insert(
            format!("{prefix}.weight_scale_2"),
            T(Dtype::F32, vec![], f32_bytes(&[q.tensor_scale])),
        );
        out.insert(
            format!("{prefix}.input_scale"),
            T(Dtype::F32, vec![], f32_bytes(&[1.0])),
        );
    }

    /// A bf16 bias `[n]` of small values.
    pub fn bias(out: &mut BTreeMap<String, T>, prefix: &str, n: usize, dtype: Dtype) {
        let bits: Vec<u16> = (0..n)
            .map(|i| {
                let v = (i as f32 - n as f32 / 2.0) / 16.0;
                match dtype {
                    Dtype::F16 => half::f16::from_f32(v).to_bits(),
                    _ => half::bf16::from_f32(v).to_bits(),
                }
            })
            .collect();
        out.insert(
            format!("{prefix}.bias"),
            T(dtype, vec![n], u16_bytes(&bits)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::numerics::quantize::{quantize_mxfp4, quantize_nvfp4};

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn err_of(r: Result<Checkpoint, CheckpointError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn mx_tensors(f32_scales: bool) -> BTreeMap<String, T> {
        let mut t = BTreeMap::new();
        mxfp4_layer(
            &mut t,
            "model.layers.0.mlp.down_proj",
            64,
            128,
            1,
            f32_scales,
        );
        mxfp4_layer(&mut t, "model.layers.0.mlp.up_proj", 128, 64, 2, f32_scales);
        bias(&mut t, "model.layers.0.mlp.up_proj", 128, Dtype::BF16);
        // An unquantized layer: not listed.
        t.insert(
            "lm_head.weight".into(),
            T(Dtype::BF16, vec![4, 64], vec![0; 4 * 64 * 2]),
        );
        t
    }

    #[test]
    fn quark_mxfp4_single_file_reads_back() {
        let d = tmp();
        write_checkpoint(d.path(), &quark_config(), &mx_tensors(false), 1);
        let c = Checkpoint::open(d.path()).expect("opens");
        assert_eq!(c.format(), QuantScheme::Mxfp4);
        assert_eq!(c.config().hidden_size, Some(64));
        assert_eq!(c.config().num_key_value_heads, Some(2));
        assert_eq!(c.config().head_dim(), Some(16));
        assert_eq!(c.files().len(), 1);
        assert_eq!(
            c.linear_layers(),
            vec![
                LinearInfo {
                    prefix: "model.layers.0.mlp.down_proj".into(),
                    n: 64,
                    k: 128,
                    has_bias: false
                },
                LinearInfo {
                    prefix: "model.layers.0.mlp.up_proj".into(),
                    n: 128,
                    k: 64,
                    has_bias: true
                },
            ]
        );
        let q = quantize_mxfp4(&weights(64, 128, 1), 64, 128).expect("q");
        let l = c.layer("model.layers.0.mlp.down_proj").expect("layer");
        assert_eq!(l.weight, q.weight.as_slice());
        assert_eq!(l.scales, ScaleData::Bytes(q.scale));
        assert_eq!(
            (l.n, l.k, l.tensor_scale, l.bias.is_none()),
            (64, 128, None, true)
        );
        let up = c.layer("model.layers.0.mlp.up_proj").expect("layer");
        let (dt, b) = up.bias.expect("bias");
        assert_eq!((dt, b.len()), (DType::Bf16, 128));
        assert_eq!(b[0], half::bf16::from_f32(-4.0).to_bits());
        let e = c
            .layer("lm_head")
            .expect_err("not a linear layer")
            .to_string();
        assert!(e.contains("no linear layer `lm_head`"), "{e}");
    }

    #[test]
    fn quark_f32_scales_convert_to_e8m0() {
        let d = tmp();
        write_checkpoint(d.path(), &quark_config(), &mx_tensors(true), 1);
        let c = Checkpoint::open(d.path()).expect("opens");
        let q = quantize_mxfp4(&weights(64, 128, 1), 64, 128).expect("q");
        let l = c.layer("model.layers.0.mlp.down_proj").expect("layer");
        assert_eq!(l.scales, ScaleData::Bytes(q.scale));

        // 1.5 is not a power of two; 0 has no E8M0 code.
        for bad in [1.5f32, 0.0, -2.0, f32::INFINITY, 2f32.powi(-128)] {
            let mut t = mx_tensors(true);
            let mut v = vec![1.0f32; 64 * 4];
            v[2 * 4 + 3] = bad;
            t.insert(
                "model.layers.0.mlp.down_proj.weight_scale".into(),
                T(Dtype::F32, vec![64, 4], f32_bytes(&v)),
            );
            let d = tmp();
            write_checkpoint(d.path(), &quark_config(), &t, 1);
            let c = Checkpoint::open(d.path()).expect("opens");
            let e = c
                .layer("model.layers.0.mlp.down_proj")
                .expect_err("bad")
                .to_string();
            assert!(
                e.contains("model.safetensors")
                    && e.contains("`model.layers.0.mlp.down_proj.weight_scale`")
                    && e.contains("row 2, group 3")
                    && e.contains("not a power of two"),
                "{e}"
            );
        }
        assert_eq!(e8m0_code_of(1.0), Some(127));
        assert_eq!(e8m0_code_of(2f32.powi(-127)), Some(0));
        assert_eq!(e8m0_code_of(2f32.powi(127)), Some(254));
        assert_eq!(e8m0_code_of(2f32.powi(-126)), Some(1));
        assert_eq!(e8m0_code_of(f32::NAN), None);
        for code in 0..=254u8 {
            assert_eq!(
                e8m0_code_of(crate::numerics::fp8::e8m0_decode(code)),
                Some(code)
            );
        }
    }

    #[test]
    fn modelopt_nvfp4_sharded_reads_back() {
        let d = tmp();
        let mut t = BTreeMap::new();
        nvfp4_layer(&mut t, "model.layers.0.self_attn.o_proj", 64, 64, 3);
        nvfp4_layer(&mut t, "model.layers.0.self_attn.q_proj", 64, 64, 4);
        bias(&mut t, "model.layers.0.self_attn.q_proj", 64, Dtype::F16);
        write_checkpoint(d.path(), &modelopt_config(), &t, 3);
        let c = Checkpoint::open(d.path()).expect("opens");
        assert_eq!(c.format(), QuantScheme::Nvfp4);
        assert_eq!(c.files().len(), 3);
        assert_eq!(c.linear_layers().len(), 2);
        let q = quantize_nvfp4(&weights(64, 64, 3), 64, 64).expect("q");
        let l = c.layer("model.layers.0.self_attn.o_proj").expect("layer");
        assert_eq!(l.weight, q.weight.as_slice());
        assert_eq!(l.scales, ScaleData::Bytes(q.scale));
        assert_eq!(l.tensor_scale, Some(q.tensor_scale));
        let qp = c.layer("model.layers.0.self_attn.q_proj").expect("layer");
        assert_eq!(qp.bias.map(|b| b.0), Some(DType::F16));
        assert_eq!(c.config().head_dim(), Some(16));

        // The index naming a shard that lacks the tensor.
        let idx = d.path().join(INDEX_FILE);
        let text = std::fs::read_to_string(&idx).expect("index");
        let v: Value = serde_json::from_str(&text).expect("json");
        let wm = v["weight_map"].as_object().expect("map");
        let (name, file) = wm.iter().next().expect("entry");
        let other = wm
            .values()
            .find(|f| *f != file)
            .expect("another shard")
            .clone();
        let mut v2 = v.clone();
        v2["weight_map"][name] = other;
        std::fs::write(&idx, v2.to_string()).expect("write");
        let e = err_of(Checkpoint::open(d.path()));
        assert!(e.contains(INDEX_FILE) && e.contains(name.as_str()), "{e}");

        // A missing shard.
        std::fs::write(&idx, text).expect("write");
        std::fs::remove_file(d.path().join("model-00002-of-00003.safetensors")).expect("rm");
        let e = err_of(Checkpoint::open(d.path()));
        assert!(e.contains("model-00002-of-00003.safetensors"), "{e}");
    }

    #[test]
    fn sharded_quark_matches_single_file() {
        let (a, b) = (tmp(), tmp());
        write_checkpoint(a.path(), &quark_config(), &mx_tensors(false), 1);
        write_checkpoint(b.path(), &quark_config(), &mx_tensors(false), 2);
        let (ca, cb) = (
            Checkpoint::open(a.path()).expect("a"),
            Checkpoint::open(b.path()).expect("b"),
        );
        assert_eq!(cb.files().len(), 2);
        assert_eq!(ca.linear_layers(), cb.linear_layers());
        for l in ca.linear_layers() {
            assert_eq!(
                ca.layer(&l.prefix).expect("a"),
                cb.layer(&l.prefix).expect("b")
            );
        }
    }

    /// Writes an MXFP4 checkpoint with one tensor replaced and returns the open error or the layer error.
    fn mx_error(name: &str, t: T) -> String {
        let mut ts = mx_tensors(false);
        ts.insert(name.into(), t);
        let d = tmp();
        write_checkpoint(d.path(), &quark_config(), &ts, 1);
        match Checkpoint::open(d.path()) {
            Err(e) => e.to_string(),
            Ok(c) => c
                .layer("model.layers.0.mlp.down_proj")
                .expect_err("bad layer")
                .to_string(),
        }
    }

    #[test]
    fn bad_dtypes_and_shapes_name_the_tensor() {
        let w = "model.layers.0.mlp.down_proj.weight";
        let s = "model.layers.0.mlp.down_proj.weight_scale";
        let cases = [
            (w, T(Dtype::I8, vec![64, 64], vec![0; 64 * 64]), "dtype I8"),
            (
                w,
                T(Dtype::U8, vec![64, 63], vec![0; 64 * 63]),
                "shape [64, 63]",
            ),
            (
                w,
                T(Dtype::U8, vec![64 * 64], vec![0; 64 * 64]),
                "shape [4096]",
            ),
            (
                s,
                T(Dtype::U8, vec![64, 8], vec![127; 64 * 8]),
                "expected [64, 4]",
            ),
            (
                s,
                T(Dtype::BF16, vec![64, 4], vec![0; 64 * 4 * 2]),
                "dtype BF16",
            ),
            (
                "model.layers.0.mlp.up_proj.bias",
                T(Dtype::F32, vec![128], vec![0; 128 * 4]),
                "dtype F32",
            ),
            (
                "model.layers.0.mlp.up_proj.bias",
                T(Dtype::BF16, vec![64], vec![0; 64 * 2]),
                "expected [128]",
            ),
        ];
        for (name, t, want) in cases {
            let e = mx_error(name, t);
            assert!(
                e.contains("model.safetensors")
                    && e.contains(&format!("`{name}`"))
                    && e.contains(want),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn e8m0_nan_names_layer_row_and_group() {
        let mut s = vec![127u8; 64 * 4];
        s[5 * 4 + 1] = 0xFF;
        let e = mx_error(
            "model.layers.0.mlp.down_proj.weight_scale",
            T(Dtype::U8, vec![64, 4], s.clone()),
        );
        assert!(
            e.contains("layer `model.layers.0.mlp.down_proj`")
                && e.contains("row 5, group 1")
                && e.contains("0xff is NaN"),
            "{e}"
        );
        // F8_E8M0 dtype is accepted the same way.
        let e = mx_error(
            "model.layers.0.mlp.down_proj.weight_scale",
            T(Dtype::F8_E8M0, vec![64, 4], s),
        );
        assert!(e.contains("row 5, group 1"), "{e}");
        // A per-tensor scale in an MXFP4 checkpoint is refused rather than ignored.
        let e = mx_error(
            "model.layers.0.mlp.down_proj.weight_scale_2",
            T(Dtype::F32, vec![], f32_bytes(&[1.0])),
        );
        assert!(
            e.contains("weight_scale_2") && e.contains("unexpected"),
            "{e}"
        );
    }

    fn nv_error(name: &str, t: Option<T>) -> String {
        let mut ts = BTreeMap::new();
        nvfp4_layer(&mut ts, "blk.o", 32, 64, 9);
        match t {
            Some(t) => ts.insert(name.into(), t),
            None => ts.remove(name),
        };
        let d = tmp();
        write_checkpoint(d.path(), &modelopt_config(), &ts, 1);
        match Checkpoint::open(d.path()) {
            Err(e) => e.to_string(),
            Ok(c) => c.layer("blk.o").expect_err("bad layer").to_string(),
        }
    }

    #[test]
    fn nvfp4_bad_scales_are_rejected() {
        for (code, what) in [
            (0x7Fu8, "NaN"),
            (0xFF, "NaN"),
            (0xB8, "negative"),
            (0x81, "negative"),
        ] {
            let mut s = vec![0x38u8; 32 * 4];
            s[7 * 4 + 2] = code;
            let e = nv_error(
                "blk.o.weight_scale",
                Some(T(Dtype::F8_E4M3, vec![32, 4], s)),
            );
            assert!(
                e.contains("`blk.o.weight_scale` of layer `blk.o`")
                    && e.contains("row 7, group 2")
                    && e.contains(what),
                "{code:#x}: {e}"
            );
        }
        // -0 is a zero scale, accepted as in the reference.
        let mut s = vec![0x38u8; 32 * 4];
        s[0] = 0x80;
        let mut ts = BTreeMap::new();
        nvfp4_layer(&mut ts, "blk.o", 32, 64, 9);
        ts.insert(
            "blk.o.weight_scale".into(),
            T(Dtype::F8_E4M3, vec![32, 4], s),
        );
        let d = tmp();
        write_checkpoint(d.path(), &modelopt_config(), &ts, 1);
        assert!(Checkpoint::open(d.path())
            .expect("opens")
            .layer("blk.o")
            .is_ok());

        for v in [f32::NAN, f32::INFINITY, -1.0] {
            let e = nv_error(
                "blk.o.weight_scale_2",
                Some(T(Dtype::F32, vec![], f32_bytes(&[v]))),
            );
            assert!(
                e.contains("`blk.o.weight_scale_2` of layer `blk.o`") && e.contains("finite"),
                "{v}: {e}"
            );
        }
        let e = nv_error(
            "blk.o.weight_scale_2",
            Some(T(Dtype::F32, vec![2], f32_bytes(&[1.0, 1.0]))),
        );
        assert!(e.contains("shape [2]") && e.contains("scalar"), "{e}");
        let e = nv_error("blk.o.weight_scale_2", None);
        assert!(
            e.contains("blk.o.weight_scale_2") && e.contains("missing"),
            "{e}"
        );
        let e = nv_error(
            "blk.o.weight_scale",
            Some(T(Dtype::U8, vec![32, 4], vec![0x38; 128])),
        );
        assert!(e.contains("dtype U8, expected F8_E4M3"), "{e}");
        // K must be a multiple of the group.
        let e = nv_error(
            "blk.o.weight",
            Some(T(Dtype::U8, vec![32, 4], vec![0; 128])),
        );
        assert!(
            e.contains("`blk.o.weight`") && e.contains("shape [32, 4]"),
            "{e}"
        );
    }

    #[test]
    fn config_errors() {
        let cases = [
            ("{", "not valid JSON"),
            (r#"{"hidden_size": 64}"#, "no `quantization_config`"),
            (
                r#"{"hidden_size": -1, "quantization_config": {"quant_method": "quark"}}"#,
                "`hidden_size` is -1",
            ),
            (
                r#"{"quantization_config": {"quant_method": "gptq"}}"#,
                "\"gptq\" is not supported",
            ),
            (
                r#"{"quantization_config": {"quant_method": "quark", "global_quant_config": {"weight": {"dtype": "fp8_e4m3"}}}}"#,
                "not \"fp4\"",
            ),
            (
                r#"{"quantization_config": {"quant_method": "quark", "global_quant_config": {"weight": {"dtype": "fp4", "group_size": 16}}}}"#,
                "`group_size` is 16, expected 32",
            ),
            (
                r#"{"quantization_config": {"quant_method": "modelopt", "quant_algo": "FP8"}}"#,
                "\"FP8\" is not \"NVFP4\"",
            ),
            (
                r#"{"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 32}}"#,
                "`group_size` is 32, expected 16",
            ),
        ];
        for (text, want) in cases {
            let e = parse_config("x/config.json", text)
                .expect_err(text)
                .to_string();
            assert!(
                e.starts_with("x/config.json: ") && e.contains(want),
                "{text}: {e}"
            );
        }
        let (_, s) = parse_config(
            "c",
            r#"{"quantization_config": {"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4"}}}"#,
        )
        .expect("hf_quant_config style");
        assert_eq!(s, QuantScheme::Nvfp4);
    }

    #[test]
    fn missing_and_corrupt_files() {
        let d = tmp();
        let e = err_of(Checkpoint::open(d.path()));
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(d.path().join("config.json"), quark_config().to_string()).expect("w");
        let e = err_of(Checkpoint::open(d.path()));
        assert!(e.contains("no checkpoint"), "{e}");
        std::fs::write(d.path().join("model.safetensors"), b"\x05\0\0").expect("w");
        let e = err_of(Checkpoint::open(d.path()));
        assert!(
            e.contains("model.safetensors") && e.contains("shorter"),
            "{e}"
        );
        // A truncated file: the header promises more data than there is.
        write_file(&d.path().join("model.safetensors"), &mx_tensors(false));
        let bytes = std::fs::read(d.path().join("model.safetensors")).expect("r");
        std::fs::write(
            d.path().join("model.safetensors"),
            &bytes[..bytes.len() - 10],
        )
        .expect("w");
        let e = err_of(Checkpoint::open(d.path()));
        assert!(
            e.contains("model.safetensors: not a valid safetensors file"),
            "{e}"
        );
        // Index escaping the directory.
        std::fs::write(
            d.path().join(INDEX_FILE),
            r#"{"weight_map": {"a.weight": "../x.safetensors"}}"#,
        )
        .expect("w");
        let e = err_of(Checkpoint::open(d.path()));
        assert!(e.contains("not a plain file name"), "{e}");
    }

    #[test]
    fn quant_scheme_of_manifest_formats() {
        for s in [QuantScheme::Mxfp4, QuantScheme::Nvfp4] {
            assert_eq!(QuantScheme::of_format(&s.format()), Some(s));
        }
        let mut f = QuantScheme::Mxfp4.format();
        f.group = 16;
        assert_eq!(QuantScheme::of_format(&f), None);
    }
}
