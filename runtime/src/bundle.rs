//! A kernel bundle: a directory of compiled kernels (`nibble compile` output), checked and indexed by layer shape.
//!
//! Every file named `<kernel>.<arch>.json` (`<arch>` starting with `gfx` or `sm_`) is a manifest; other files are
//! ignored. For `sm_XY` kernels the code object is PTX text, checked by [`crate::ptx::check_against_manifest`]
//! (target, entry parameters against the manifest's arguments, static shared memory, source hash) instead of the
//! ELF checks below.
//! [`KernelBundle::load`] checks each one completely before anything runs:
//! - the manifest parses and has the schema version this runtime reads ([`Manifest::from_json`]);
//! - its `kernel` and `arch` agree with the file name;
//! - `code_object` and `kernel_ir` are plain file names in the directory, and both files exist;
//! - the code object parses ([`crate::codeobj::parse_for_arch`]) for the manifest's arch, has kernel metadata for
//!   the manifest's `symbol`, the function symbol itself and its descriptor `<symbol>.kd`, a kernarg segment at
//!   least `kernarg_bytes` long, and accepts workgroups of the manifest's block size;
//! - the source hash nibble embeds in the code object (symbol `nibble_source_hash`) equals the manifest's.
//!
//! Kernels are grouped by layer shape `(N, K, format, arch)`, the format judged by its semantics
//! ([`QuantScheme::of_format`]); kernels of formats no checkpoint scheme matches are loaded and checked but never
//! selected.
//!
//! **Selection rule** ([`KernelBundle::select`], [`choose`]): among the kernels of the shape whose
//! `shapes.m_min..=m_max` contains M, the one with the smallest `tiling.tile_m` wins (it wastes the fewest padded
//! rows of the M tile; for large M, compile the large-tile kernel with a range that excludes small M, e.g.
//! `--m-range`, and give the small-tile one an upper bound, to steer the choice). Ties go to the smaller `m_max`
//! (the more specialised kernel), then to the manifest file name, so the choice is deterministic.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::checkpoint::QuantScheme;
use crate::codeobj::{self, CodeObjectError};
use crate::manifest::{Manifest, ManifestError};

/// The symbol under which nibble's compiler stores the kernel's source hash in the code object.
pub const SOURCE_HASH_SYMBOL: &str = "nibble_source_hash";

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
    #[error("code object {path} (named by {manifest}): {source}")]
    CodeObject {
        path: String,
        manifest: String,
        #[source]
        source: CodeObjectError,
    },
    #[error("PTX code object {path} (named by {manifest}): {source}")]
    Ptx {
        path: String,
        manifest: String,
        #[source]
        source: crate::ptx::PtxError,
    },
    #[error("{dir}: no kernel manifests (<kernel>.<arch>.json)")]
    Empty { dir: String },
    #[error(
        "no kernel in {dir} for N={n} K={k} {format} on {arch} (kernels for {arch}: {available})"
    )]
    NoKernel {
        dir: String,
        n: usize,
        k: usize,
        format: QuantScheme,
        arch: String,
        available: String,
    },
    #[error(
        "no kernel in {dir} for N={n} K={k} {format} on {arch} accepts M={m} (M ranges: {ranges})"
    )]
    NoKernelForM {
        dir: String,
        n: usize,
        k: usize,
        format: QuantScheme,
        arch: String,
        m: usize,
        ranges: String,
    },
}

fn disp(p: &Path) -> String {
    p.display().to_string()
}

/// One checked kernel of a bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleKernel {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    pub code_object_path: PathBuf,
    pub kernel_ir_path: PathBuf,
    /// The checkpoint scheme of the manifest's format, if any.
    pub scheme: Option<QuantScheme>,
}

impl BundleKernel {
    /// Whether M is in the kernel's `m_min..=m_max`.
    pub fn accepts_m(&self, m: usize) -> bool {
        let s = &self.manifest.shapes;
        u32::try_from(m).is_ok_and(|m| s.m_min <= m && m <= s.m_max)
    }

    /// Reads the code object bytes (checked at load time).
    pub fn code_object(&self) -> Result<Vec<u8>, BundleError> {
        std::fs::read(&self.code_object_path).map_err(|source| BundleError::Io {
            path: disp(&self.code_object_path),
            source,
        })
    }
}

/// The selection rule of the module doc: the index of the kernel of `kernels` to run for M, if any accepts it.
pub fn choose(kernels: &[BundleKernel], m: usize) -> Option<usize> {
    kernels
        .iter()
        .enumerate()
        .filter(|(_, k)| k.accepts_m(m))
        .min_by(|(_, a), (_, b)| {
            let key = |k: &BundleKernel| {
                (
                    k.manifest.tiling.tile_m,
                    k.manifest.shapes.m_max,
                    k.manifest_path.clone(),
                )
            };
            key(a).cmp(&key(b))
        })
        .map(|(i, _)| i)
}

/// Key of a shape group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ShapeKey {
    arch: String,
    n: usize,
    k: usize,
    scheme: QuantScheme,
}

/// A loaded, checked directory of kernels.
#[derive(Debug, Clone)]
pub struct KernelBundle {
    dir: PathBuf,
    groups: BTreeMap<ShapeKey, Vec<BundleKernel>>,
    /// Kernels of formats no checkpoint scheme matches.
    others: Vec<BundleKernel>,
}

/// `<kernel>.<arch>` of a manifest file name `<kernel>.<arch>.json`, if it is one.
fn manifest_name(path: &Path) -> Option<(String, String)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".json")?;
    let (kernel, arch) = stem.rsplit_once('.')?;
    (!kernel.is_empty() && (arch.starts_with("gfx") || arch.starts_with("sm_")))
        .then(|| (kernel.to_string(), arch.to_string()))
}

fn plain_file_name(s: &str) -> bool {
    let p = Path::new(s);
    p.components().count() == 1 && matches!(p.components().next(), Some(Component::Normal(_)))
}

fn check_kernel(
    dir: &Path,
    path: &Path,
    kernel: &str,
    arch: &str,
) -> Result<BundleKernel, BundleError> {
    let pd = disp(path);
    let invalid = |what: String| BundleError::Invalid {
        path: pd.clone(),
        what,
    };
    let text = std::fs::read_to_string(path).map_err(|source| BundleError::Io {
        path: pd.clone(),
        source,
    })?;
    let m = Manifest::from_json(&pd, &text)?;
    if m.arch != arch || m.kernel != kernel {
        return Err(invalid(format!(
            "the file name says kernel `{kernel}` for {arch}, the manifest says kernel `{}` for {}",
            m.kernel, m.arch
        )));
    }
    for (what, f) in [("code_object", &m.code_object), ("kernel_ir", &m.kernel_ir)] {
        if !plain_file_name(f) {
            return Err(invalid(format!(
                "{what} `{f}` is not a plain file name in the bundle directory"
            )));
        }
    }
    let ir = dir.join(&m.kernel_ir);
    if !ir.is_file() {
        return Err(invalid(format!(
            "kernel IR file {} does not exist",
            disp(&ir)
        )));
    }
    let co = dir.join(&m.code_object);
    let bytes = std::fs::read(&co).map_err(|source| BundleError::Io {
        path: disp(&co),
        source,
    })?;
    if m.arch.starts_with("sm_") {
        if crate::ptx::parse_sm(&m.arch).is_none() {
            return Err(invalid(format!("arch {} is not an sm_XY name", m.arch)));
        }
        crate::ptx::check_against_manifest(&bytes, &m).map_err(|source| BundleError::Ptx {
            path: disp(&co),
            manifest: pd.clone(),
            source,
        })?;
        let scheme = QuantScheme::of_format(&m.format);
        return Ok(BundleKernel {
            manifest: m,
            manifest_path: path.to_path_buf(),
            code_object_path: co,
            kernel_ir_path: ir,
            scheme,
        });
    }
    let co_err = |source: CodeObjectError| BundleError::CodeObject {
        path: disp(&co),
        manifest: pd.clone(),
        source,
    };
    let obj = codeobj::parse_for_arch(&bytes, &m.arch).map_err(co_err)?;
    let kd = format!("{}.kd", m.symbol);
    let meta = obj.kernel(&m.symbol).ok_or_else(|| {
        co_err(CodeObjectError::Metadata(format!(
            "no kernel `{}` (the manifest's symbol); kernels: {}",
            m.symbol,
            obj.kernels
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    })?;
    if obj.kernel_code(meta).is_none() {
        return Err(co_err(CodeObjectError::Metadata(format!(
            "no function symbol `{}`",
            m.symbol
        ))));
    }
    if obj.symbol(&kd).is_none() {
        return Err(co_err(CodeObjectError::MissingKernelDescriptor {
            kernel: m.symbol.clone(),
            symbol: kd,
        }));
    }
    if meta.kernarg_segment_size < m.kernarg_bytes {
        return Err(co_err(CodeObjectError::Metadata(format!(
            "kernel `{}` has a {}-byte kernarg segment, the manifest's arguments need {}",
            m.symbol, meta.kernarg_segment_size, m.kernarg_bytes
        ))));
    }
    let threads: u32 = m.launch.block.iter().product();
    if meta.max_flat_workgroup_size != 0 && threads > meta.max_flat_workgroup_size {
        return Err(co_err(CodeObjectError::Metadata(format!(
            "kernel `{}` accepts workgroups of at most {} lanes, the manifest launches {threads}",
            m.symbol, meta.max_flat_workgroup_size
        ))));
    }
    // nibble embeds the kernel's source hash in the code object: a code object from another compilation next to this
    // manifest (a stale or swapped file) is refused. Code objects without the symbol (not made by nibble) pass.
    if let Some(hash) = codeobj::symbol_bytes(&bytes, SOURCE_HASH_SYMBOL).map_err(co_err)? {
        if hash != m.source_hash.as_bytes() {
            return Err(co_err(CodeObjectError::Metadata(format!(
                "the code object was compiled from another source (source hash {}) than the manifest says ({})",
                String::from_utf8_lossy(&hash),
                m.source_hash
            ))));
        }
    }
    let scheme = QuantScheme::of_format(&m.format);
    Ok(BundleKernel {
        manifest: m,
        manifest_path: path.to_path_buf(),
        code_object_path: co,
        kernel_ir_path: ir,
        scheme,
    })
}

impl KernelBundle {
    /// Loads and checks every manifest in `dir` (see the module doc). Any bad manifest fails the whole load.
    pub fn load(dir: impl AsRef<Path>) -> Result<KernelBundle, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        let io = |source| BundleError::Io {
            path: disp(&dir),
            source,
        };
        let mut manifests = vec![];
        for e in std::fs::read_dir(&dir).map_err(io)? {
            let p = e.map_err(io)?.path();
            if let Some((kernel, arch)) = manifest_name(&p) {
                manifests.push((p, kernel, arch));
            }
        }
        if manifests.is_empty() {
            return Err(BundleError::Empty { dir: disp(&dir) });
        }
        manifests.sort();
        let mut groups: BTreeMap<ShapeKey, Vec<BundleKernel>> = BTreeMap::new();
        let mut others = vec![];
        for (p, kernel, arch) in manifests {
            let k = check_kernel(&dir, &p, &kernel, &arch)?;
            match k.scheme {
                Some(scheme) => groups
                    .entry(ShapeKey {
                        arch: k.manifest.arch.clone(),
                        n: k.manifest.shapes.n as usize,
                        k: k.manifest.shapes.k as usize,
                        scheme,
                    })
                    .or_default()
                    .push(k),
                None => others.push(k),
            }
        }
        Ok(KernelBundle {
            dir,
            groups,
            others,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every kernel, grouped by (arch, N, K, format), then those of other formats.
    pub fn kernels(&self) -> impl Iterator<Item = &BundleKernel> {
        self.groups.values().flatten().chain(&self.others)
    }

    /// The kernels for one layer shape on one arch (any M), in manifest file-name order.
    pub fn candidates(
        &self,
        n: usize,
        k: usize,
        format: QuantScheme,
        arch: &str,
    ) -> Result<&[BundleKernel], BundleError> {
        let key = ShapeKey {
            arch: arch.to_string(),
            n,
            k,
            scheme: format,
        };
        match self.groups.get(&key) {
            Some(v) => Ok(v),
            None => {
                let available: Vec<String> = self
                    .groups
                    .keys()
                    .filter(|g| g.arch == arch)
                    .map(|g| format!("N={} K={} {}", g.n, g.k, g.scheme))
                    .collect();
                Err(BundleError::NoKernel {
                    dir: disp(&self.dir),
                    n,
                    k,
                    format,
                    arch: arch.to_string(),
                    available: if available.is_empty() {
                        "none".into()
                    } else {
                        available.join("; ")
                    },
                })
            }
        }
    }

    /// The kernel to run for `y[M, N] = x[M, K] W^T` with `W` of `format` on `arch` (rule: see the module doc).
    pub fn select(
        &self,
        n: usize,
        k: usize,
        format: QuantScheme,
        arch: &str,
        m: usize,
    ) -> Result<&BundleKernel, BundleError> {
        let c = self.candidates(n, k, format, arch)?;
        match choose(c, m) {
            Some(i) => Ok(&c[i]),
            None => Err(BundleError::NoKernelForM {
                dir: disp(&self.dir),
                n,
                k,
                format,
                arch: arch.to_string(),
                m,
                ranges: ranges(c),
            }),
        }
    }
}

/// `name: lo..=hi` for each kernel, for messages.
pub(crate) fn ranges(c: &[BundleKernel]) -> String {
    c.iter()
        .map(|k| {
            format!(
                "{} {}..={}",
                k.manifest.kernel, k.manifest.shapes.m_min, k.manifest.shapes.m_max
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Synthetic manifests over the committed code-object fixtures, for tests here and in `linear`.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::Path;

    use crate::checkpoint::QuantScheme;
    use crate::manifest::*;
    use crate::numerics::repack::{SCALE_LAYOUT_ID, WEIGHT_LAYOUT_ID};

    pub const GFX942: &[u8] = include_bytes!("../tests-data/mfma_loop_gfx942.hsaco");
    pub const GFX90A: &[u8] = include_bytes!("../tests-data/straight_gfx90a.hsaco");

    /// An sm_90 kernel manifest (PTX, `nibble.mma_sync_a.v1` for e2m1 into bf16) derived from [`manifest`], and
    /// its PTX text (see [`crate::ptx::tests::sample_ptx`]).
    pub fn sm90_manifest(base: &Manifest) -> (Manifest, String) {
        use crate::numerics::repack::{MMA_SCALE_LAYOUT_ID, MMA_WEIGHT_LAYOUT_ID};
        let mut m = base.clone();
        m.arch = "sm_90".into();
        m.symbol = format!("{}_entry", m.kernel);
        m.code_object = format!("{}.sm_90.ptx", m.kernel);
        m.kernel_ir = format!("{}.sm_90.kernel.mlir", m.kernel);
        m.launch.block = [128, 1, 1];
        for a in &mut m.args {
            if a.role == ArgRole::Scales {
                a.elem = Some("bf16".into());
            }
        }
        let (mg, full, sign) = (0x01C0_01C0u32, 0x81C0_81C0u32, 0x8000_8000u32);
        let p = |shift: i32, mask: u32| BitPiece { shift, mask };
        m.weight_layout = WeightLayout {
            id: MMA_WEIGHT_LAYOUT_ID.into(),
            atom_n: 16,
            atom_k: 16,
            words_per_lane: 4,
            mag_shift: 6,
            second_half: "pieces".into(),
            mask: full,
            fragment: Some(FragmentBits {
                outputs: vec![
                    vec![p(0, full)],
                    vec![p(3, full)],
                    vec![p(-3, mg), p(1, sign)],
                    vec![p(6, mg), p(2, sign)],
                ],
            }),
        };
        m.scale_layout = ScaleLayout {
            id: MMA_SCALE_LAYOUT_ID.into(),
            group: m.format.group,
            exp_offset: 121,
            dtype: Some("bf16".into()),
        };
        let sizes: Vec<u32> = m.args.iter().map(|a| a.size).collect();
        let ptx = crate::ptx::tests::sample_ptx(
            "sm_90",
            &m.symbol,
            &sizes,
            m.launch.lds_bytes,
            &m.source_hash,
        );
        (m, ptx)
    }

    /// A gfx942 (`mfma_loop`) or gfx90a (`straight`) kernel manifest for `[n, k]` of `scheme`.
    #[allow(clippy::too_many_arguments)]
    pub fn manifest(
        kernel: &str,
        arch: &str,
        n: u32,
        k: u32,
        scheme: QuantScheme,
        tile_m: u32,
        m_range: (u32, u32),
        bias: Option<&str>,
        atom: (u32, u32),
    ) -> Manifest {
        let stem = format!("{kernel}.{arch}");
        let mut args = vec![];
        let mut off = 0;
        let mut arg = |name: &str, role: ArgRole, kind: &str, elem: Option<&str>, size: u32| {
            args.push(KernelArg {
                name: name.into(),
                role,
                kind: kind.into(),
                elem: elem.map(str::to_string),
                offset: off,
                size,
            });
            off += size;
        };
        arg("x", ArgRole::X, "ptr", Some("bf16"), 8);
        arg("w", ArgRole::Weight, "ptr", Some("u32"), 8);
        arg("s", ArgRole::Scales, "ptr", Some("f32"), 8);
        if let Some(b) = bias {
            arg("bias", ArgRole::Bias, "ptr", Some(b), 8);
        }
        arg("y", ArgRole::Y, "ptr", Some("bf16"), 8);
        arg("m", ArgRole::M, "i32", None, 4);
        if scheme.has_tensor_scale() {
            arg("t", ArgRole::TensorScale, "f32", None, 4);
        }
        let kernarg_bytes = off;
        let bias_exp = if arch == "gfx942" { 16 } else { 15 };
        Manifest {
            schema_version: SCHEMA_VERSION,
            compiler_version: "nibble test".into(),
            source_hash: "0".into(),
            kernel: kernel.into(),
            symbol: if arch == "gfx942" {
                "mfma_loop"
            } else {
                "straight"
            }
            .into(),
            arch: arch.into(),
            code_object: format!("{stem}.hsaco"),
            kernel_ir: format!("{stem}.kernel.mlir"),
            shapes: Shapes {
                n,
                k,
                m_min: m_range.0,
                m_max: m_range.1,
                x_dtype: "bf16".into(),
                y_dtype: "bf16".into(),
                bias_dtype: bias.map(str::to_string),
            },
            format: scheme.format(),
            tiling: Tiling {
                tile_m,
                tile_n: 32,
                tile_k: 64,
                waves_m: 1,
                waves_n: 2,
                waves_k: 1,
                mma: format!("{}x{}x{}", atom.0, atom.0, atom.1),
                stages: 2,
            },
            launch: Launch {
                // The gfx90a fixture is built for workgroups of at most 64 lanes.
                block: [if arch == "gfx942" { 128 } else { 64 }, 1, 1],
                grid: [
                    GridDim::Const { value: n / 32 },
                    GridDim::CeilDivM { divisor: tile_m },
                    GridDim::Const { value: 1 },
                ],
                lds_bytes: 4096,
                dynamic_lds_bytes: 0,
            },
            args,
            kernarg_bytes,
            weight_layout: WeightLayout {
                id: WEIGHT_LAYOUT_ID.into(),
                atom_n: atom.0,
                atom_k: atom.1,
                words_per_lane: 4,
                mag_shift: 1,
                second_half: "bitreverse".into(),
                mask: 0x8E8E_8E8E,
                fragment: None,
            },
            scale_layout: ScaleLayout {
                id: SCALE_LAYOUT_ID.into(),
                group: scheme.group() as u32,
                exp_offset: bias_exp - 1,
                dtype: None,
            },
            tuned: None,
        }
    }

    /// Writes the manifest, its code object and its kernel IR into `dir`.
    pub fn write_kernel(dir: &Path, m: &Manifest, hsaco: &[u8]) {
        std::fs::write(
            dir.join(format!("{}.{}.json", m.kernel, m.arch)),
            m.to_json(),
        )
        .expect("w");
        std::fs::write(dir.join(&m.code_object), hsaco).expect("w");
        std::fs::write(dir.join(&m.kernel_ir), "gpu.module @k {}\n").expect("w");
    }

    /// The fixture matching `m.arch`.
    pub fn fixture(arch: &str) -> &'static [u8] {
        if arch == "gfx942" {
            GFX942
        } else {
            GFX90A
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn std_bundle(dir: &Path) {
        let q = QuantScheme::Mxfp4;
        for m in [
            manifest(
                "down_small",
                "gfx942",
                64,
                256,
                q,
                16,
                (1, 64),
                None,
                (16, 16),
            ),
            manifest(
                "down_big",
                "gfx942",
                64,
                256,
                q,
                64,
                (1, 4096),
                None,
                (32, 8),
            ),
            manifest(
                "down_wide",
                "gfx942",
                64,
                256,
                q,
                128,
                (17, 4096),
                None,
                (16, 16),
            ),
            manifest("down", "gfx90a", 64, 256, q, 32, (1, 1024), None, (16, 16)),
            manifest(
                "o_nv",
                "gfx942",
                64,
                128,
                QuantScheme::Nvfp4,
                16,
                (1, 1024),
                None,
                (16, 16),
            ),
        ] {
            write_kernel(dir, &m, fixture(&m.arch));
        }
        // Not manifests: ignored.
        std::fs::write(dir.join("config.json"), "{").expect("w");
        std::fs::write(dir.join("notes.txt"), "x").expect("w");
    }

    fn load_err(dir: &Path) -> String {
        match KernelBundle::load(dir) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn loads_groups_and_selects_by_m() {
        let d = tmp();
        std_bundle(d.path());
        let b = KernelBundle::load(d.path()).expect("loads");
        assert_eq!(b.kernels().count(), 5);
        let q = QuantScheme::Mxfp4;
        assert_eq!(b.candidates(64, 256, q, "gfx942").expect("c").len(), 3);
        let pick = |m| {
            b.select(64, 256, q, "gfx942", m)
                .map(|k| k.manifest.kernel.as_str())
        };
        assert_eq!(pick(1).expect("m=1"), "down_small");
        assert_eq!(pick(64).expect("m=64"), "down_small");
        assert_eq!(pick(65).expect("m=65"), "down_big");
        assert_eq!(pick(4096).expect("m=4096"), "down_big");
        let e = pick(4097).expect_err("too big").to_string();
        assert!(
            e.contains("M=4097")
                && e.contains("down_small 1..=64")
                && e.contains("down_wide 17..=4096"),
            "{e}"
        );
        let e = pick(0).expect_err("m=0").to_string();
        assert!(e.contains("M=0"), "{e}");
        let k = b.select(64, 256, q, "gfx90a", 100).expect("gfx90a");
        assert_eq!(k.manifest.symbol, "straight");
        assert!(k.code_object_path.ends_with("down.gfx90a.hsaco"));
        assert!(k.kernel_ir_path.is_file());
        assert_eq!(k.code_object().expect("reads"), GFX90A);
        let nv = b
            .select(64, 128, QuantScheme::Nvfp4, "gfx942", 5)
            .expect("nvfp4");
        assert_eq!(nv.manifest.kernel, "o_nv");

        let e = b
            .select(64, 512, q, "gfx942", 1)
            .expect_err("no shape")
            .to_string();
        assert!(
            e.contains("N=64 K=512 mxfp4 on gfx942") && e.contains("N=64 K=256 mxfp4"),
            "{e}"
        );
        let e = b
            .select(64, 128, q, "gfx942", 1)
            .expect_err("wrong format")
            .to_string();
        assert!(e.contains("N=64 K=128 mxfp4"), "{e}");
        let e = b
            .select(64, 256, q, "gfx950", 1)
            .expect_err("no arch")
            .to_string();
        assert!(e.contains("gfx950") && e.contains("none"), "{e}");
    }

    #[test]
    fn ties_break_on_m_max_then_name() {
        let d = tmp();
        let q = QuantScheme::Mxfp4;
        for m in [
            manifest("b", "gfx942", 64, 256, q, 16, (1, 128), None, (16, 16)),
            manifest("a", "gfx942", 64, 256, q, 16, (1, 128), None, (16, 16)),
            manifest("c", "gfx942", 64, 256, q, 16, (1, 32), None, (16, 16)),
        ] {
            write_kernel(d.path(), &m, GFX942);
        }
        let b = KernelBundle::load(d.path()).expect("loads");
        let pick = |m| {
            b.select(64, 256, q, "gfx942", m)
                .map(|k| k.manifest.kernel.clone())
                .expect("some")
        };
        assert_eq!(pick(8), "c");
        assert_eq!(pick(33), "a");
    }

    /// Writes the standard bundle, lets `f` break it, and returns the load error.
    fn broken(f: impl FnOnce(&Path)) -> String {
        let d = tmp();
        std_bundle(d.path());
        f(d.path());
        load_err(d.path())
    }

    #[test]
    fn corrupt_and_mismatched_files_are_named() {
        let e = broken(|d| {
            std::fs::write(d.join("down_big.gfx942.json"), "{\"schema_version\": 1,").expect("w")
        });
        assert!(e.contains("down_big.gfx942.json"), "{e}");

        let e = broken(|d| {
            let p = d.join("down_big.gfx942.json");
            let t = std::fs::read_to_string(&p).expect("r");
            std::fs::write(
                &p,
                t.replace("\"schema_version\": 1", "\"schema_version\": 7"),
            )
            .expect("w");
        });
        assert!(
            e.contains("down_big.gfx942.json") && e.contains("schema version 7"),
            "{e}"
        );

        // A gfx90a code object under a gfx942 manifest.
        let e = broken(|d| std::fs::write(d.join("down_big.gfx942.hsaco"), GFX90A).expect("w"));
        assert!(
            e.contains("down_big.gfx942.hsaco")
                && e.contains("down_big.gfx942.json")
                && e.contains("code object is for gfx90a, expected gfx942"),
            "{e}"
        );

        // Truncated code object.
        let e = broken(|d| {
            std::fs::write(d.join("down.gfx90a.hsaco"), &GFX90A[..GFX90A.len() / 3]).expect("w")
        });
        assert!(
            e.contains("code object") && e.contains("down.gfx90a.hsaco"),
            "{e}"
        );
        let e = broken(|d| std::fs::write(d.join("down.gfx90a.hsaco"), b"not an elf").expect("w"));
        assert!(
            e.contains("down.gfx90a.hsaco") && e.contains("not an ELF"),
            "{e}"
        );

        // Missing files.
        let e = broken(|d| std::fs::remove_file(d.join("down.gfx90a.hsaco")).expect("rm"));
        assert!(e.contains("down.gfx90a.hsaco"), "{e}");
        let e = broken(|d| std::fs::remove_file(d.join("down.gfx90a.kernel.mlir")).expect("rm"));
        assert!(
            e.contains("down.gfx90a.kernel.mlir") && e.contains("does not exist"),
            "{e}"
        );

        // Symbol missing in the code object.
        let e = broken(|d| {
            let mut m = manifest(
                "sym",
                "gfx942",
                64,
                256,
                QuantScheme::Mxfp4,
                16,
                (1, 8),
                None,
                (16, 16),
            );
            m.symbol = "nope".into();
            write_kernel(d, &m, GFX942);
        });
        assert!(
            e.contains("sym.gfx942.hsaco") && e.contains("no kernel `nope`"),
            "{e}"
        );

        // File name and manifest disagree.
        let e = broken(|d| {
            let m = manifest(
                "x",
                "gfx90a",
                64,
                256,
                QuantScheme::Mxfp4,
                16,
                (1, 8),
                None,
                (16, 16),
            );
            write_kernel(d, &m, GFX90A);
            std::fs::rename(d.join("x.gfx90a.json"), d.join("x.gfx942.json")).expect("mv");
        });
        assert!(
            e.contains("x.gfx942.json") && e.contains("manifest says kernel `x` for gfx90a"),
            "{e}"
        );

        // Paths escaping the bundle.
        let e = broken(|d| {
            let mut m = manifest(
                "esc",
                "gfx942",
                64,
                256,
                QuantScheme::Mxfp4,
                16,
                (1, 8),
                None,
                (16, 16),
            );
            m.code_object = "../esc.hsaco".into();
            std::fs::write(d.join("esc.gfx942.json"), m.to_json()).expect("w");
        });
        assert!(
            e.contains("esc.gfx942.json") && e.contains("not a plain file name"),
            "{e}"
        );

        // A manifest whose arguments do not fit the code object's kernarg segment.
        let e = broken(|d| {
            let mut m = manifest(
                "big",
                "gfx942",
                64,
                256,
                QuantScheme::Mxfp4,
                16,
                (1, 8),
                None,
                (16, 16),
            );
            m.kernarg_bytes = 4096;
            write_kernel(d, &m, GFX942);
        });
        assert!(
            e.contains("big.gfx942.hsaco") && e.contains("kernarg"),
            "{e}"
        );
        let e = broken(|d| {
            let mut m = manifest(
                "wg",
                "gfx90a",
                64,
                256,
                QuantScheme::Mxfp4,
                16,
                (1, 8),
                None,
                (16, 16),
            );
            m.launch.block = [128, 1, 1];
            write_kernel(d, &m, GFX90A);
        });
        assert!(
            e.contains("wg.gfx90a.hsaco") && e.contains("at most 64 lanes"),
            "{e}"
        );

        let d = tmp();
        let e = load_err(d.path());
        assert!(e.contains("no kernel manifests"), "{e}");
        let e = load_err(&d.path().join("nope"));
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn sm90_ptx_kernels_load_and_mismatches_are_named() {
        let write = |d: &Path, m: &Manifest, ptx: &str| {
            std::fs::write(d.join(format!("{}.{}.json", m.kernel, m.arch)), m.to_json())
                .expect("w");
            std::fs::write(d.join(&m.kernel_ir), "module {}").expect("w");
            std::fs::write(d.join(&m.code_object), ptx).expect("w");
        };
        let base = manifest(
            "up",
            "gfx942",
            256,
            512,
            QuantScheme::Mxfp4,
            16,
            (1, 64),
            None,
            (16, 16),
        );
        let (m, ptx) = sm90_manifest(&base);
        let d = tmp();
        write(d.path(), &m, &ptx);
        let b = KernelBundle::load(d.path()).expect("loads");
        let k = b
            .select(256, 512, QuantScheme::Mxfp4, "sm_90", 1)
            .expect("selects");
        assert!(k.code_object_path.ends_with("up.sm_90.ptx"));
        // Each mismatch is refused with the file named.
        type Edit = Box<dyn Fn(&mut Manifest, &mut String)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|_, p| *p = p.replace(".target sm_90", ".target sm_80")),
                "targets sm_80",
            ),
            (
                Box::new(|_, p| *p = p.replacen(".u64", ".u32", 1)),
                "parameter 0",
            ),
            (
                Box::new(|m, _| {
                    m.args.pop();
                    m.kernarg_bytes -= 4;
                }),
                ".param(s)",
            ),
            (
                Box::new(|_, p| *p = p.replace("tile_a[4096]", "tile_a[8192]")),
                "static shared",
            ),
            (
                Box::new(|m, _| m.symbol = "other".into()),
                "no `.entry other`",
            ),
            (
                Box::new(|m, _| m.source_hash = "1".into()),
                "another source",
            ),
            (
                Box::new(|_, p| *p = p.replace("nibble_source_hash", "something_else")),
                "nibble_source_hash",
            ),
        ];
        for (edit, want) in cases {
            let (mut m2, mut p2) = (m.clone(), ptx.clone());
            edit(&mut m2, &mut p2);
            let d = tmp();
            write(d.path(), &m2, &p2);
            match KernelBundle::load(d.path()) {
                Ok(_) => panic!("accepted a PTX with {want}"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.contains(want) && e.contains("up.sm_90.ptx"),
                        "{want}: {e}"
                    );
                }
            }
        }
        // Not UTF-8.
        let d = tmp();
        write(d.path(), &m, "");
        std::fs::write(d.path().join(&m.code_object), [b'.', 0xff, 0xfe]).expect("w");
        let e = KernelBundle::load(d.path())
            .expect_err("binary")
            .to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn custom_formats_load_but_are_not_selected() {
        let d = tmp();
        let mut m = manifest(
            "odd",
            "gfx942",
            64,
            256,
            QuantScheme::Mxfp4,
            16,
            (1, 8),
            None,
            (16, 16),
        );
        m.format.name = "e8m0_g64".into();
        m.format.group = 64;
        m.scale_layout.group = 64;
        write_kernel(d.path(), &m, GFX942);
        let b = KernelBundle::load(d.path()).expect("loads");
        assert_eq!(b.kernels().count(), 1);
        assert!(b.kernels().all(|k| k.scheme.is_none()));
        assert!(b.select(64, 256, QuantScheme::Mxfp4, "gfx942", 1).is_err());
    }
}
