//! `nibble plan`: the cost model's predictions, and with `--explain` the candidates `schedule auto` weighs.

use std::io::Write;

use crate::arch::Arch;
use crate::spec::CheckedFile;

pub(super) fn plan_cmd(
    checked: &CheckedFile,
    targets: &[Arch],
    m_arg: Option<u32>,
    explain: bool,
    measure: bool,
    out: &mut dyn Write,
) -> i32 {
    use crate::costmodel;
    use crate::spec::Schedule;
    let row = |p: &costmodel::Prediction| {
        let t = &p.tiling;
        format!(
            "{:>3}x{:<3}x{:<3} w{} {:<8} {:>5} {:>6} {:>4} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>6.3}  {:<8}{}{}",
            t.tile_m,
            t.tile_n,
            t.tile_k,
            t.waves_name(),
            t.mma.name(),
            p.split_k,
            p.workgroups,
            p.occupancy,
            p.rounds,
            p.memory_us,
            p.valu_us,
            p.mfma_us,
            p.predicted_us,
            p.valu_per_element,
            p.route,
            if p.measured { " measured" } else { "" },
            if p.rule { " measured on the H100" } else { "" }
        )
        .trim_end()
        .to_string()
    };
    let header = "tile         waves mma     split    wgs  occ rounds    mem us   valu us   mfma us  predict us   valu/e  route";
    for k in &checked.kernels {
        let m = m_arg.unwrap_or_else(|| k.auto_m()).max(1);
        let archs = if targets.is_empty() {
            k.targets.clone()
        } else {
            targets.to_vec()
        };
        for arch in archs {
            let (fp4, bf16) = costmodel::rooflines(k, arch, m);
            let _ = writeln!(
                out,
                "kernel {} on {} at M={m}: HBM roofline {fp4:.1} us (bf16 weights: {bf16:.1} us)",
                k.name,
                arch.name()
            );
            let ranked = match &k.schedule {
                Schedule::Auto { .. } => costmodel::rank(k, arch, m, measure),
                Schedule::Manual(t) => {
                    let measured = if measure {
                        costmodel::measure_tiling(k, arch, *t)
                    } else {
                        None
                    };
                    costmodel::predict(k, arch, m, *t, measured)
                        .into_iter()
                        .collect()
                }
            };
            let Some(best) = ranked.first() else {
                let _ = writeln!(out, "  no feasible tiling");
                continue;
            };
            let _ = writeln!(out, "  {header}");
            let shown = if explain { ranked.len().min(12) } else { 1 };
            for p in &ranked[..shown] {
                let _ = writeln!(out, "  {}", row(p));
            }
            if explain && best.rule {
                let _ = writeln!(
                    out,
                    "  chosen: the first row, the NVIDIA decode tiling measured fastest on the H100 (warps along K with \
                     cp.async staging, 8 tokens per block up to M = 8; docs/PERFORMANCE.md), first whatever its \
                     prediction since the model sees none of these; {} candidates considered ({} shown)",
                    ranked.len(),
                    shown
                );
            } else if explain && ranked.len() > 1 {
                let bound = if best.memory_us >= best.valu_us.max(best.mfma_us) {
                    "memory"
                } else if best.valu_us >= best.mfma_us {
                    "VALU"
                } else {
                    "MFMA"
                };
                let _ = writeln!(
                    out,
                    "  chosen: the first row, {bound}-bound; {} candidates considered ({} shown); ties go to less VALU work (all waves' VALU time spread over the SIMDs), then lower VALU cost per element, then more waves and larger tiles",
                    ranked.len(),
                    shown
                );
            }
        }
    }
    0
}
