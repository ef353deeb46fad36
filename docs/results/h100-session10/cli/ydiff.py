import json, struct, sys
def read(p):
    d = open(p, "rb").read(); n = struct.unpack("<Q", d[:8])[0]; h = json.loads(d[8:8 + n]); b = d[8 + n:]
    v = h["y"]; raw = b[v["data_offsets"][0]:v["data_offsets"][1]]
    return [struct.unpack("<f", struct.pack("<I", u << 16))[0] for u in struct.unpack(f"<{len(raw)//2}H", raw)], v["shape"]
a, sa = read(sys.argv[1]); b, sb = read(sys.argv[2])
assert sa == sb, (sa, sb)
d = [abs(x - y) for x, y in zip(a, b)]
print(f"y {sa}: max |cuda - interpreter| = {max(d):.4g}, {sum(1 for x in d if x > 0)} of {len(d)} elements differ")
