#!/usr/bin/env python3
"""nibble vs cuBLAS bf16 vs Triton MXFP4 on one NVIDIA GPU (written for the H100), in one process.

1. Device-to-device copy bandwidth (the HBM roofline figure).
2. For each (N, K) and M: torch bf16 `x @ w.t()` (cuBLAS), a Triton `tl.dot_scaled` MXFP4 kernel (best of a small
   config set, each config checked against the bf16 result first), the MXFP4 memory roofline, and nibble's kernels
   timed by `nibble-rt bench` (a subprocess, same GPU, run just before the torch timings of the same shape).
3. A markdown table (stdout, --out) and a JSON dump (--json), then an informational pass/fail against the targets.

Timing (torch and Triton): each timed iteration is bracketed by its own pair of CUDA events around the kernel only;
before each iteration (warmup too) a scratch buffer (256 MB by default) is zeroed to evict the weights from L2;
median of the timed iterations. nibble's numbers are nibble-rt's own CUDA-event timings.

`--dry-run` prints the plan (shapes, manifests chosen, nibble-rt commands, Triton configs) without importing torch.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import glob
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEFAULT_SHAPES = "10240x8192,8192x8192,57344x8192,8192x28672"  # Llama-3-70B: qkv, o, gate+up, down
DEFAULT_MS = "1,16,128,4096"
QUICK_MS = "1,16,4096"

# E2M1 code -> value (fp4-formats.md): codes 0..7 = 0, 0.5, 1, 1.5, 2, 3, 4, 6; 8..15 the negatives.
E2M1_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]

# Targets (informational).
DECODE_MS = (1, 16)
PREFILL_MS = (4096,)
TARGET_DECODE_BW_FRACTION = 0.70
TARGET_DECODE_SPEEDUP_CUBLAS = 2.5
TARGET_PREFILL_TFLOPS_FRACTION = 0.50


def e2m1_from_bits(code: int) -> float:
    """E2M1 decoded from its fields (1 sign, 2 exponent, 1 mantissa, bias 1; exponent 0 is subnormal)."""
    sign = -1.0 if code & 8 else 1.0
    exp = (code >> 1) & 3
    man = code & 1
    mag = man * 0.5 if exp == 0 else 2.0 ** (exp - 1) * (1.0 + man / 2.0)
    return sign * mag


def self_check_lut() -> None:
    for c, v in enumerate(E2M1_VALUES):
        assert v == e2m1_from_bits(c) and math.copysign(1, v) == math.copysign(1, e2m1_from_bits(c)), c


# ------------------------------------------------------------------------------------------------- plan


def parse_shapes(s: str) -> list[tuple[int, int]]:
    out = []
    for part in s.split(","):
        part = part.strip().lower()
        if not part:
            continue
        n, k = part.split("x")
        n, k = int(n), int(k)
        if k % 32 or n % 64:
            raise SystemExit(f"shape {part}: K must be a multiple of 32 and N of 64")
        out.append((n, k))
    return out


def parse_ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def manifest_files(specs: list[str]) -> list[str]:
    """Manifest paths from directories (every *.json below), globs or files."""
    files: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            files += sorted(glob.glob(os.path.join(spec, "**", "*.json"), recursive=True))
        elif any(ch in spec for ch in "*?["):
            files += sorted(glob.glob(spec, recursive=True))
        elif os.path.isfile(spec):
            files.append(spec)
        else:
            print(f"warning: --manifests {spec}: no such file or directory", file=sys.stderr)
    seen, out = set(), []
    for f in files:
        a = os.path.abspath(f)
        if a not in seen:
            seen.add(a)
            out.append(f)
    return out


def load_manifests(specs: list[str]) -> tuple[list[dict], list[str]]:
    """Kernel manifests (JSON objects with `kernel` and `shapes.{n,k,m_min,m_max}`); other JSON files and AMD
    (`arch` gfx*) manifests are skipped with a note."""
    kept, notes = [], []
    for path in manifest_files(specs):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            notes.append(f"{path}: unreadable ({e})")
            continue
        if not isinstance(doc, dict) or "kernel" not in doc or not isinstance(doc.get("shapes"), dict):
            continue  # not a kernel manifest (e.g. a bench output or a bundle index)
        s = doc["shapes"]
        try:
            n, k, m_min, m_max = (int(s[key]) for key in ("n", "k", "m_min", "m_max"))
        except (KeyError, TypeError, ValueError):
            notes.append(f"{path}: shapes lacks n/k/m_min/m_max")
            continue
        arch = str(doc.get("arch", ""))
        if arch.startswith("gfx"):
            notes.append(f"{path}: arch {arch}, not a CUDA kernel; skipped")
            continue
        kept.append({"path": path, "kernel": str(doc["kernel"]), "arch": arch,
                     "n": n, "k": k, "m_min": m_min, "m_max": m_max,
                     "tiling": doc.get("tiling")})
    return kept, notes


def nibble_candidates(manifests: list[dict], n: int, k: int, m: int) -> list[dict]:
    return [mf for mf in manifests if mf["n"] == n and mf["k"] == k and mf["m_min"] <= m <= mf["m_max"]]


def nibble_calls(manifests: list[dict], n: int, k: int, ms: list[int]) -> list[tuple[dict, list[int]]]:
    """One nibble-rt call per manifest of this (N, K), with the requested Ms inside its M range."""
    calls = []
    for mf in manifests:
        if mf["n"] != n or mf["k"] != k:
            continue
        mine = [m for m in ms if mf["m_min"] <= m <= mf["m_max"]]
        if mine:
            calls.append((mf, mine))
    return calls


def weight_bytes(n: int, k: int) -> int:
    """Nominal MXFP4 weight traffic: packed E2M1 plus one E8M0 byte per 32 K."""
    return n * k // 2 + n * k // 32


def roofline_bytes(m: int, n: int, k: int) -> int:
    return weight_bytes(n, k) + 2 * m * k + 2 * m * n


# ------------------------------------------------------------------------------------------------- nibble-rt


def nibble_help(nibble_rt: str) -> str:
    try:
        p = subprocess.run([nibble_rt, "bench", "--help"], capture_output=True, text=True, timeout=30)
        return (p.stdout or "") + (p.stderr or "")
    except (OSError, subprocess.SubprocessError) as e:
        return f"(could not run {nibble_rt} bench --help: {e})"


def nibble_command(args, manifest_path: str, ms: list[int], json_path: str, help_text: str) -> list[str]:
    cmd = [args.nibble_rt, "bench", manifest_path, "--m", ",".join(str(m) for m in ms), "--json", json_path]
    # Pass our warmup/iteration counts where nibble-rt's help says it takes them (flag names guessed; only
    # passed when the help text names them).
    tokens = set(re.findall(r"--[A-Za-z0-9][A-Za-z0-9-]*", help_text))
    if "--warmup" in tokens:
        cmd += ["--warmup", str(args.warmup)]
    if "--iters" in tokens:
        cmd += ["--iters", str(args.iters)]
    cmd += shlex.split(args.nibble_args)
    return cmd


def parse_nibble_json(text: str) -> list[dict]:
    """nibble-rt bench records: a JSON list, an object holding a list (records/results/kernels/benchmarks), a
    single record, or JSON lines."""
    text = text.strip()
    if not text:
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        doc = []
        for line in text.splitlines():
            line = line.strip()
            if line:
                doc.append(json.loads(line))
    if isinstance(doc, dict):
        for key in ("records", "results", "kernels", "benchmarks", "bench"):
            if isinstance(doc.get(key), list):
                return [r for r in doc[key] if isinstance(r, dict)]
        return [doc] if "median_us" in doc else []
    if isinstance(doc, list):
        return [r for r in doc if isinstance(r, dict)]
    return []


def run_nibble_shape(args, manifests, n, k, ms, help_text) -> tuple[dict, list[dict]]:
    """Runs nibble-rt bench for every manifest of (N, K); returns {m: best record} and a log of the calls."""
    cands: dict[int, list[dict]] = {}
    log = []
    for mf, mine in nibble_calls(manifests, n, k, ms):
        fd, json_path = tempfile.mkstemp(prefix="nibble-bench-", suffix=".json")
        os.close(fd)
        cmd = nibble_command(args, mf["path"], mine, json_path, help_text)
        entry = {"manifest": mf["path"], "kernel": mf["kernel"], "ms": mine, "cmd": cmd}
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.nibble_timeout)
            entry["rc"] = p.returncode
            entry["stdout_tail"] = p.stdout[-2000:]
            entry["stderr_tail"] = p.stderr[-2000:]
        except (OSError, subprocess.SubprocessError) as e:
            entry["rc"] = None
            entry["error"] = f"{type(e).__name__}: {e}"
        entry["wall_s"] = round(time.time() - t0, 2)
        records = []
        try:
            with open(json_path) as f:
                records = parse_nibble_json(f.read())
        except (OSError, ValueError) as e:
            entry.setdefault("error", f"could not parse {json_path}: {e}")
        finally:
            try:
                os.unlink(json_path)
            except OSError:
                pass
        entry["records"] = records
        status = f"rc={entry.get('rc')}, {len(records)} records, {entry['wall_s']}s"
        print(f"  nibble-rt {mf['kernel']} M={','.join(map(str, mine))}: {status}", flush=True)
        if entry.get("rc") not in (0, None) or "error" in entry:
            tail = (entry.get("stderr_tail") or entry.get("error") or "").strip().splitlines()[-5:]
            for line in tail:
                print(f"    | {line}", flush=True)
        for r in records:
            try:
                m = int(r["m"])
                float(r["median_us"])
            except (KeyError, TypeError, ValueError):
                continue
            if int(r.get("n", n)) != n or int(r.get("k", k)) != k or m not in mine:
                continue
            rec = dict(r)
            rec["manifest"] = mf["path"]
            rec.setdefault("kernel", mf["kernel"])
            cands.setdefault(m, []).append(rec)
        log.append(entry)
    best: dict[int, dict] = {}
    for m, recs in cands.items():
        recs.sort(key=lambda r: float(r["median_us"]))
        best[m] = dict(recs[0])
        best[m]["others"] = [{"kernel": r["kernel"], "median_us": float(r["median_us"])} for r in recs[1:]]
    return best, log


# ------------------------------------------------------------------------------------------------- GPU side


class Timer:
    """CUDA-event timing of one callable, each iteration bracketed separately, with an optional L2 flush (reading
    a scratch buffer) before every iteration. The flush reads rather than writes: zeroing a buffer leaves L2 full
    of dirty lines whose write-back would be charged to the timed kernel (nibble-rt flushes the same way)."""

    def __init__(self, torch, flush_bytes: int):
        self.torch = torch
        self.scratch = (torch.ones(flush_bytes // 4, dtype=torch.int32, device="cuda")
                        if flush_bytes else None)
        self.sink = None

    def _flush(self):
        self.sink = self.scratch.sum()

    def time(self, fn, warmup: int, iters: int) -> dict:
        torch = self.torch
        for _ in range(warmup):
            if self.scratch is not None:
                self._flush()
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        torch.cuda.synchronize()
        # Give the CPU a head start so the first launches are queued before the GPU reaches them.
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(1_000_000)
        for i in range(iters):
            if self.scratch is not None:
                self._flush()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        us = [s.elapsed_time(e) * 1000.0 for s, e in zip(starts, ends)]
        return {"median_us": statistics.median(us), "min_us": min(us), "mean_us": statistics.fmean(us),
                "iters": iters, "warmup": warmup}


def copy_bandwidth(torch, gib: float, warmup: int, iters: int) -> dict:
    nbytes = int(gib * (1 << 30))
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    src.random_(0, 256)
    dst = torch.empty_like(src)
    t = Timer(torch, 0).time(functools.partial(dst.copy_, src), warmup, iters)
    del src, dst
    torch.cuda.empty_cache()
    moved = 2 * nbytes  # read + write
    return {"bytes_per_copy": moved, "median_us": t["median_us"], "min_us": t["min_us"],
            "tb_s": moved / (t["median_us"] * 1e-6) / 1e12, "tb_s_best": moved / (t["min_us"] * 1e-6) / 1e12,
            "iters": iters}


def make_weights(torch, n: int, k: int, seed: int):
    """Random packed E2M1 weights [N, K/2], E8M0 scales [N, K/32] (codes 119..123: 2^-8..2^-4, a realistic
    weight range) and their exact bf16 dequantization [N, K] (E2M1 times a power of two fits bf16 exactly)."""
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    w_packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=g)
    scales = torch.randint(119, 124, (n, k // 32), dtype=torch.uint8, device="cuda", generator=g)
    lut = torch.tensor(E2M1_VALUES, dtype=torch.float32, device="cuda")
    w = torch.empty((n, k), dtype=torch.bfloat16, device="cuda")
    rows = max(1, (1 << 25) // k)
    for r0 in range(0, n, rows):
        p = w_packed[r0:r0 + rows]
        codes = torch.stack(((p & 0xF), (p >> 4)), dim=-1).reshape(p.shape[0], k)  # low nibble = even k
        vals = lut[codes.long()]
        s = torch.exp2(scales[r0:r0 + rows].float() - 127.0).repeat_interleave(32, dim=1)
        w[r0:r0 + rows] = (vals * s).to(torch.bfloat16)
        del codes, vals, s
    return w_packed, scales, w


def rel_err(torch, y, ref) -> float:
    d = (y.float() - ref.float()).norm().item()
    r = ref.float().norm().item()
    return d / r if r > 0 else (0.0 if d == 0 else float("inf"))


def bench_triton(torch, mt, timer, args, x, w_packed, scales, y_ref, m, n, k) -> dict:
    """Tunes the Triton kernel over its configs (each verified against y_ref before it is timed) and times the
    best one with the full iteration count."""
    out = {"configs": []}
    y = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")
    best = None
    cfgs = mt.configs_for(m, n, k, prune=not args.triton_all_configs)
    for cfg in cfgs:
        entry = {"config": cfg.name}
        try:
            y.fill_(float("nan"))
            t0 = time.time()
            mt.launch(cfg, x, w_packed, scales, y)
            torch.cuda.synchronize()
            entry["first_call_s"] = round(time.time() - t0, 2)  # includes compilation
            err = rel_err(torch, y, y_ref)
            entry["rel_err"] = err
            if not (err <= args.rel_tol):
                entry["status"] = f"wrong result (rel err {err:.3g} > {args.rel_tol})"
                out["configs"].append(entry)
                print(f"    triton {cfg.name}: {entry['status']}; not timed", flush=True)
                continue
            t = timer.time(functools.partial(mt.launch, cfg, x, w_packed, scales, y), args.tune_warmup, args.tune_iters)
            entry.update(t)
            entry["status"] = "ok"
            if best is None or t["median_us"] < best[1]["median_us"]:
                best = (cfg, t)
        except Exception as e:  # noqa: BLE001 - a config that fails to compile or launch is skipped
            entry["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"    triton {cfg.name}: {entry['status']}", flush=True)
        out["configs"].append(entry)
    if best is None:
        out["status"] = "no config produced a correct result"
        return out
    cfg = best[0]
    final = timer.time(functools.partial(mt.launch, cfg, x, w_packed, scales, y), args.warmup, args.iters)
    out.update(final)
    out["best_config"] = cfg.name
    out["rel_err"] = next(c["rel_err"] for c in out["configs"] if c["config"] == cfg.name)
    out["status"] = "ok"
    del y
    return out


def gpu_info(torch) -> dict:
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "capability": "sm_%d%d" % torch.cuda.get_device_capability(0),
            "sms": torch.cuda.get_device_properties(0).multi_processor_count,
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / (1 << 30), 1)}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = f"unavailable ({type(e).__name__}: {e})"
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if p.returncode == 0:
            info["nvidia_smi"] = p.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# ------------------------------------------------------------------------------------------------- report


def fmt(v, digits=1, suffix=""):
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "-"
    return f"{v:.{digits}f}{suffix}"


def tflops(m, n, k, us):
    return 2.0 * m * n * k / (us * 1e-6) / 1e12 if us else None


def derive(row: dict, copy_tb_s: float) -> dict:
    m, n, k = row["m"], row["n"], row["k"]
    nib = row.get("nibble_us")
    cub = row.get("cublas_us")
    tri = row.get("triton_us")
    d = {
        "roofline_us": roofline_bytes(m, n, k) / (copy_tb_s * 1e12) * 1e6 if copy_tb_s else None,
        "nibble_bw_fraction": (weight_bytes(n, k) / (nib * 1e-6)) / (copy_tb_s * 1e12) if nib and copy_tb_s else None,
        "speedup_vs_cublas": cub / nib if nib and cub else None,
        "speedup_vs_triton": tri / nib if nib and tri else None,
        "nibble_tflops": tflops(m, n, k, nib),
        "cublas_tflops": tflops(m, n, k, cub),
        "triton_tflops": tflops(m, n, k, tri),
    }
    return d


def table(rows: list[dict]) -> str:
    head = ["N x K", "M", "nibble us", "nibble kernel", "cuBLAS bf16 us", "Triton MXFP4 us", "roofline us",
            "nibble % of copy BW", "speedup vs cuBLAS", "speedup vs Triton", "nibble TFLOP/s", "cuBLAS TFLOP/s",
            "Triton TFLOP/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tf = lambda v: fmt(v, 1 if v is not None and v < 100 else 0)  # noqa: E731
        lines.append("| " + " | ".join([
            f"{r['n']}x{r['k']}", str(r["m"]), fmt(r.get("nibble_us")), r.get("nibble_kernel") or "-",
            fmt(r.get("cublas_us")), fmt(r.get("triton_us")), fmt(r.get("roofline_us")),
            fmt(100 * r["nibble_bw_fraction"] if r.get("nibble_bw_fraction") is not None else None, 0, "%"),
            fmt(r.get("speedup_vs_cublas"), 2, "x"), fmt(r.get("speedup_vs_triton"), 2, "x"),
            tf(r.get("nibble_tflops")), tf(r.get("cublas_tflops")), tf(r.get("triton_tflops")),
        ]) + " |")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        m = r["m"]
        checks = []
        if m in DECODE_MS:
            f = r.get("nibble_bw_fraction")
            s = r.get("speedup_vs_cublas")
            t = r.get("speedup_vs_triton")
            checks.append(("nibble >= 70% of copy BW (nominal weight+scale bytes)",
                           None if f is None else f >= TARGET_DECODE_BW_FRACTION,
                           fmt(100 * f, 0, "%") if f is not None else "-"))
            checks.append(("nibble >= 2.5x faster than cuBLAS bf16",
                           None if s is None else s >= TARGET_DECODE_SPEEDUP_CUBLAS, fmt(s, 2, "x")))
            checks.append(("nibble faster than Triton MXFP4",
                           None if t is None else t > 1.0, fmt(t, 2, "x")))
        elif m in PREFILL_MS:
            a, b = r.get("nibble_tflops"), r.get("cublas_tflops")
            frac = a / b if a and b else None
            checks.append(("nibble >= 50% of cuBLAS bf16 TFLOP/s",
                           None if frac is None else frac >= TARGET_PREFILL_TFLOPS_FRACTION,
                           fmt(100 * frac, 0, "%") if frac is not None else "-"))
        else:
            continue
        if any(c[1] is False for c in checks):
            status = "FAIL"
        elif any(c[1] is None for c in checks):
            status = "MISSING"
        else:
            status = "PASS"
        out.append({"n": r["n"], "k": r["k"], "m": m, "status": status,
                    "checks": [{"target": c[0], "pass": c[1], "value": c[2]} for c in checks]})
    return out


def verdict_text(vs: list[dict]) -> str:
    lines = ["## Targets (informational)", "",
             "decode (M = 1, 16): nibble >= 70% of copy BW on nominal MXFP4 weight+scale bytes, >= 2.5x cuBLAS bf16, "
             "faster than Triton MXFP4; prefill (M = 4096): nibble >= 50% of cuBLAS bf16 TFLOP/s.", ""]
    for v in vs:
        parts = []
        for c in v["checks"]:
            mark = "n/a" if c["pass"] is None else ("ok" if c["pass"] else "MISS")
            parts.append(f"{c['target']}: {c['value']} [{mark}]")
        lines.append(f"- {v['status']:7s} {v['n']}x{v['k']} M={v['m']}: " + "; ".join(parts))
    counts = {s: sum(1 for v in vs if v["status"] == s) for s in ("PASS", "FAIL", "MISSING")}
    lines += ["", f"{counts['PASS']} pass, {counts['FAIL']} fail, {counts['MISSING']} missing data "
                  f"(of {len(vs)} rows with a target)"]
    return "\n".join(lines)


def render_report(rows: list[dict], info: dict, copy: dict, args, date: str, wall_s: float) -> tuple[str, list]:
    vs = verdicts(rows)
    copy_tb_s = copy["tb_s"]
    header = [
        "# nibble vs cuBLAS bf16 vs Triton MXFP4",
        "",
        f"- device: {info['device']} ({info['capability']}, {info['sms']} SMs, {info['memory_gib']} GiB)"
        + (f"; nvidia-smi driver, max SM/mem clock, power limit: {info['nvidia_smi']}" if info.get("nvidia_smi")
           else ""),
        f"- torch {info['torch']} (CUDA {info['cuda_runtime']}), triton {info.get('triton')}, "
        f"python {platform.python_version()}",
        f"- date: {date}; run took {wall_s:.0f} s",
        f"- device-to-device copy bandwidth: {copy_tb_s:.3f} TB/s (median of {copy['iters']}; "
        f"{copy['bytes_per_copy'] / 2 / (1 << 30):.2f} GiB read + written per copy)",
        f"- timing: {method_text(args)}",
        "",
    ]
    tri_cfgs = [f"- {r['n']}x{r['k']} M={r['m']}: {r.get('triton_config') or '-'}"
                + (f" (rel err {r['triton']['rel_err']:.1e})" if r.get("triton", {}).get("rel_err") is not None
                   else (f" ({r['triton'].get('status')})" if r.get("triton") else ""))
                for r in rows]
    nib_notes = []
    for r in rows:
        rec = r.get("nibble")
        if rec and rec.get("others"):
            others = ", ".join(f"{o['kernel']} {o['median_us']:.1f} us" for o in rec["others"])
            nib_notes.append(f"- {r['n']}x{r['k']} M={r['m']}: {rec['kernel']} {float(rec['median_us']):.1f} us; "
                             f"also timed: {others}")
    report = "\n".join(header) + "\n" + table(rows) + "\n\n"
    hot = [r for r in rows if r["m"] in DECODE_MS and (r.get("nibble_bw_fraction") or 0) > 1.0]
    if hot:
        report += ("Warning: nibble moves more than the copy bandwidth on " + ", ".join(
            f"{r['n']}x{r['k']} M={r['m']}" for r in hot) + ": its weights were likely served from L2 (does "
            "`nibble-rt bench` flush L2 between iterations?).\n\n")
    report += "Triton best config per row:\n" + "\n".join(tri_cfgs) + "\n\n"
    if nib_notes:
        report += "nibble, several kernels for one row (fastest kept):\n" + "\n".join(nib_notes) + "\n\n"
    report += verdict_text(vs) + "\n"
    return report, vs


# ------------------------------------------------------------------------------------------------- main


def build_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nibble-rt", default="target/release/nibble-rt", help="path of the nibble-rt binary")
    ap.add_argument("--manifests", action="append", default=[],
                    help="directory (searched recursively for *.json), glob or file of nibble kernel manifests; "
                         "repeatable")
    ap.add_argument("--nibble-args", default="", help="extra arguments for `nibble-rt bench` (shell-quoted string)")
    ap.add_argument("--nibble-timeout", type=int, default=300, help="seconds per nibble-rt call")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxK list")
    ap.add_argument("--m", default=None, help=f"comma-separated M list (default {DEFAULT_MS}; --quick {QUICK_MS})")
    ap.add_argument("--warmup", type=int, default=None, help="warmup iterations (default 10; --quick 5)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations, median reported (default 50; "
                                                            "--quick 20)")
    ap.add_argument("--tune-warmup", type=int, default=2, help="warmup iterations per Triton config while tuning")
    ap.add_argument("--tune-iters", type=int, default=None, help="timed iterations per Triton config while tuning "
                                                                 "(default 5; --quick 3)")
    ap.add_argument("--triton-all-configs", action="store_true",
                    help="time every Triton config for every M (default: 16-row tiles only for M <= 16, "
                         ">= 64-row tiles only for M > 256)")
    ap.add_argument("--flush-mb", type=int, default=256, help="L2 flush buffer read before each iteration "
                                                              "(0: no flush)")
    ap.add_argument("--copy-gib", type=float, default=1.0, help="size of the copy-bandwidth tensor")
    ap.add_argument("--rel-tol", type=float, default=1e-2, help="Triton vs bf16 reference relative error bound "
                                                                "(Frobenius)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-nibble", action="store_true")
    ap.add_argument("--no-cublas", action="store_true")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer iterations and M in {1, 16, 4096}")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; touch no GPU, import no torch")
    ap.add_argument("--out", help="write the markdown report here")
    ap.add_argument("--json", help="write everything measured here")
    args = ap.parse_args(argv)
    args.m = args.m or (QUICK_MS if args.quick else DEFAULT_MS)
    args.warmup = args.warmup if args.warmup is not None else (5 if args.quick else 10)
    args.iters = args.iters if args.iters is not None else (20 if args.quick else 50)
    args.tune_iters = args.tune_iters if args.tune_iters is not None else (3 if args.quick else 5)
    return args


def method_text(args) -> str:
    flush = (f"a {args.flush_mb} MB scratch buffer read (torch sum) before every iteration to evict L2"
             if args.flush_mb else "no L2 flush")
    return (f"cuBLAS and Triton: CUDA events around the kernel only, one pair per iteration; {flush}; "
            f"{args.warmup} warmup, median of {args.iters}. Triton: best of the listed block configs "
            f"({args.tune_iters} timed iterations each while tuning), each config's output checked against the "
            f"bf16 result (relative Frobenius error <= {args.rel_tol}) before it is timed. nibble: `nibble-rt "
            f"bench`'s median_us (its own CUDA events; it reads a 256 MB buffer before each launch, like the "
            f"flush above, and times the launch only), run in a subprocess on the same GPU just before the torch "
            f"timings of the same shape; with several kernels for one (N, K, M), the fastest. Roofline: "
            f"(N*K/2 + N*K/32 + 2*M*K + 2*M*N) bytes at the measured copy bandwidth. nibble % of copy BW: "
            f"(N*K/2 + N*K/32) bytes / nibble time / copy bandwidth.")


def main(argv=None) -> int:
    args = build_args(argv)
    self_check_lut()
    shapes = parse_shapes(args.shapes)
    ms = parse_ints(args.m)
    manifests, notes = ([], []) if args.no_nibble else load_manifests(args.manifests)

    print(f"# nibble vs cuBLAS bf16 vs Triton MXFP4 ({'dry run' if args.dry_run else 'GPU run'})")
    print(f"shapes {shapes}, M {ms}; {len(manifests)} nibble manifests from {args.manifests or '(none given)'}")
    for note in notes:
        print(f"  note: {note}")
    if not args.no_nibble and not os.path.exists(args.nibble_rt):
        print(f"  warning: {args.nibble_rt} not found; nibble columns will be empty")

    if args.dry_run:
        print(f"timing: {method_text(args)}")
        print(f"copy bandwidth: {args.copy_gib} GiB src -> dst, {args.warmup} warmup, median of {args.iters}")
        help_text = "" if args.no_nibble or not os.path.exists(args.nibble_rt) else nibble_help(args.nibble_rt)
        try:
            import mxfp4_triton as mt  # needs triton, not torch
        except Exception as e:  # noqa: BLE001
            mt = None
            print(f"  (triton not importable here: {type(e).__name__}; Triton configs not listed)")
        for n, k in shapes:
            print(f"\n## {n}x{k}: weights {weight_bytes(n, k) / 1e6:.1f} MB MXFP4, {2 * n * k / 1e6:.1f} MB bf16")
            for mf, mine in nibble_calls(manifests, n, k, ms):
                print("  nibble-rt: " + " ".join(shlex.quote(c) for c in
                                                 nibble_command(args, mf["path"], mine, "<tmp.json>", help_text)))
            for m in ms:
                cands = nibble_candidates(manifests, n, k, m)
                names = ", ".join(f"{c['kernel']} [{c['m_min']}..{c['m_max']}]" for c in cands) or "none"
                line = f"  M={m}: nibble candidates: {names}"
                if mt is not None and not args.no_triton:
                    cfgs = mt.configs_for(m, n, k, prune=not args.triton_all_configs)
                    line += f"; Triton configs: {', '.join(c.name for c in cfgs)}"
                print(line)
        return 0

    import torch  # noqa: E402 - only for the GPU run

    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    mt = None
    if not args.no_triton:
        try:
            import mxfp4_triton as mt
        except Exception as e:  # noqa: BLE001
            print(f"warning: Triton unavailable ({type(e).__name__}: {e}); Triton columns will be empty")

    started = time.time()
    info = gpu_info(torch)
    print(f"device {info['device']} ({info['capability']}, {info['sms']} SMs), torch {info['torch']}, "
          f"triton {info.get('triton')}, CUDA {info['cuda_runtime']}", flush=True)

    copy = copy_bandwidth(torch, args.copy_gib, args.warmup, args.iters)
    copy_tb_s = copy["tb_s"]
    print(f"device copy: {copy_tb_s:.3f} TB/s (median; best {copy['tb_s_best']:.3f})", flush=True)

    timer = Timer(torch, args.flush_mb * 1_000_000)
    help_text = ""
    if not args.no_nibble and os.path.exists(args.nibble_rt):
        help_text = nibble_help(args.nibble_rt)

    rows, nibble_log = [], []
    for n, k in shapes:
        print(f"\n## {n}x{k}", flush=True)
        torch.cuda.empty_cache()
        nib_best: dict[int, dict] = {}
        if not args.no_nibble and os.path.exists(args.nibble_rt):
            nib_best, log = run_nibble_shape(args, manifests, n, k, ms, help_text)
            nibble_log += log
        w_packed, scales, w = make_weights(torch, n, k, args.seed)
        gx = torch.Generator(device="cuda")
        gx.manual_seed(args.seed + 1)
        x_all = torch.randn((max(ms), k), dtype=torch.bfloat16, device="cuda", generator=gx)
        for m in ms:
            x = x_all[:m]
            row = {"n": n, "k": k, "m": m}
            y_ref = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")
            torch.mm(x, w.t(), out=y_ref)  # the bf16 result, also the reference for Triton
            torch.cuda.synchronize()
            if not args.no_cublas:
                t = timer.time(functools.partial(torch.mm, x, w.t(), out=y_ref), args.warmup, args.iters)
                row["cublas"] = t
                row["cublas_us"] = t["median_us"]
            if mt is not None:
                tri = bench_triton(torch, mt, timer, args, x, w_packed, scales, y_ref, m, n, k)
                row["triton"] = tri
                row["triton_us"] = tri.get("median_us")
                row["triton_config"] = tri.get("best_config")
            rec = nib_best.get(m)
            if rec is not None:
                row["nibble"] = rec
                row["nibble_us"] = float(rec["median_us"])
                row["nibble_kernel"] = rec.get("kernel")
            elif not args.no_nibble:
                row["nibble_kernel"] = "(failed)" if nibble_candidates(manifests, n, k, m) else "(no kernel)"
            row.update(derive(row, copy_tb_s))
            rows.append(row)
            print(f"  M={m}: nibble {fmt(row.get('nibble_us'))} us ({row.get('nibble_kernel') or '-'}), "
                  f"cuBLAS {fmt(row.get('cublas_us'))} us, Triton {fmt(row.get('triton_us'))} us "
                  f"({row.get('triton_config') or '-'}), roofline {fmt(row.get('roofline_us'))} us", flush=True)
            del y_ref
        del w_packed, scales, w, x_all
        torch.cuda.empty_cache()

    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report, vs = render_report(rows, info, copy, args, date, time.time() - started)
    print("\n" + report)

    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        doc = {"date": date, "info": info, "copy": copy, "method": method_text(args),
               "args": {k: v for k, v in vars(args).items()}, "rows": rows, "targets": vs,
               "nibble_help": help_text, "nibble_calls": nibble_log, "manifest_notes": notes,
               "manifests": manifests, "wall_s": round(time.time() - started, 1)}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
