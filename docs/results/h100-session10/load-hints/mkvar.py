import json, re, sys, os, shutil
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
VARS = {
  "": None,
  "_nc": ("ld.global.nc.L1::no_allocate", ""),
  "_p256": ("ld.global.L2::256B", ""),
  "_ncp": ("ld.global.nc.L1::no_allocate.L2::256B", ""),
  "_ef": ("ld.global.nc.L1::no_allocate.L2::cache_hint", "pol"),
}
for k in sys.argv[3:]:
    ptx = open(f"{src}/{k}.sm_90.ptx").read()
    man = json.load(open(f"{src}/{k}.sm_90.json"))
    for suf, v in VARS.items():
        p = ptx
        if v:
            op, pol = v
            if pol:
                # weight and scale loads carry an evict-first L2 policy made once at entry
                p = re.sub(r"(ld\.global)(\.v4)?\.b32(\s+)(\{[^}]*\}|%r\d+), \[([^\]]+)\];",
                           lambda m: f"{op}{m.group(2) or ''}.b32{m.group(3)}{m.group(4)}, [{m.group(5)}], %rdpol;", p)
                p = p.replace("\t.reg .b64 \t%rd<", "\t.reg .b64 \t%rdpol;\n\t.reg .b64 \t%rd<", 1)
                # after the first ld.param? insert createpolicy at function body start: after last .reg/.shared decl line
                lines = p.split("\n")
                idx = max(i for i, l in enumerate(lines) if l.strip().startswith(".reg") or l.strip().startswith(".shared") or l.strip().startswith(".extern"))
                lines.insert(idx + 1, "\tcreatepolicy.fractional.L2::evict_first.b64 %rdpol, 1.0;")
                p = "\n".join(lines)
            else:
                p = re.sub(r"ld\.global(?=\.(v4\.)?b32)", op, p)
        name = k + suf
        with open(f"{dst}/{name}.sm_90.ptx", "w") as f:
            f.write(p)
        m2 = dict(man)
        m2["kernel"] = name
        m2["code_object"] = f"{name}.sm_90.ptx"
        json.dump(m2, open(f"{dst}/{name}.sm_90.json", "w"), indent=2)
