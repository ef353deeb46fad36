# Writes layer.safetensors (f32 weight [N, K], bf16 bias [N]) and x.safetensors (bf16 x [M, K]) with the stdlib only.
import json, random, struct, sys
N, K, M, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(7)
def bf16(v):
    b = struct.unpack("<I", struct.pack("<f", v))[0]
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
def write(path, tensors):
    header, blobs, off = {}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data); off += len(data)
    h = json.dumps(header).encode(); h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs: f.write(b)
w = struct.pack(f"<{N*K}f", *(rng.gauss(0, 0.02) for _ in range(N * K)))
bias = struct.pack(f"<{N}H", *(bf16(rng.gauss(0, 0.5)) for _ in range(N)))
x = struct.pack(f"<{M*K}H", *(bf16(rng.gauss(0, 1)) for _ in range(M * K)))
write(f"{out}/layer.safetensors", {"weight": ("F32", [N, K], w), "bias": ("BF16", [N], bias)})
write(f"{out}/x.safetensors", {"x": ("BF16", [M, K], x)})
