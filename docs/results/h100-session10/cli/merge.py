# merge.py A B OUT: the tensors of safetensors files A and B in one file.
import json, struct, sys
def read(p):
    d = open(p, "rb").read(); n = struct.unpack("<Q", d[:8])[0]; h = json.loads(d[8:8 + n]); body = d[8 + n:]
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in h.items() if k != "__metadata__"}
t = read(sys.argv[1]); t.update(read(sys.argv[2]))
header, blobs, off = {}, [], 0
for k, (dt, sh, b) in t.items():
    header[k] = {"dtype": dt, "shape": sh, "data_offsets": [off, off + len(b)]}; blobs.append(b); off += len(b)
h = json.dumps(header).encode(); h += b" " * ((8 - len(h) % 8) % 8)
with open(sys.argv[3], "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h); [f.write(b) for b in blobs]
