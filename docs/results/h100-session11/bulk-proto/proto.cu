// Timing prototype (not part of nibble): does streaming the weights into shared memory with Hopper bulk copies
// (cp.async.bulk + mbarrier, D stages per warp) beat o_ka8's register-pipelined ld.global on the small decode layers?
// Same block shape as o_ka8 / o_ka: 32 rows x 1024 K per step, 2 warps along N x 8 along K, activations staged per
// K slice with cp.async.ca and a named barrier; the dequantization is nibble's fragment route (11 logic + 4 HMUL2
// per word). Values are not checked: this measures time only.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <algorithm>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

constexpr int WARPS = 16, KW = 8, ROW_PAD = 136; // x row: 128 bf16 + 8 pad = 272 bytes

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }
__device__ __forceinline__ void bar_slice(int id) { asm volatile("bar.sync %0, 64;" ::"r"(id) : "memory"); }

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect(uint32_t bar, int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void* src, int bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
    asm volatile(
        "{\n .reg .pred p;\n WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra WAIT_%=;\n}\n"
        ::"r"(bar), "r"(parity) : "memory");
}

__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

template <int NT>
__device__ __forceinline__ void mma_word(uint32_t w, uint32_t sc, uint32_t xs_row, float (&acc)[NT][4], int lane) {
    __nv_bfloat162 s2 = *reinterpret_cast<__nv_bfloat162*>(&sc);
    __nv_bfloat162 lo = __low2bfloat162(s2), hi = __high2bfloat162(s2);
    uint32_t r[4] = {((w << 6) & 0x01C001C0u) | ((w << 2) & 0x80008000u),
                     ((w >> 3) & 0x01C001C0u) | ((w << 1) & 0x80008000u), w & 0x81C081C0u, (w << 3) & 0x81C081C0u};
    uint32_t a[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __nv_bfloat162 v = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&r[i]), (i & 1) ? hi : lo);
        a[i] = *reinterpret_cast<uint32_t*>(&v);
    }
    uint32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    uint32_t b[2 * NT];
    if (NT == 1) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(b[0]), "=r"(b[1]) : "r"(xs_row));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(xs_row));
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(acc[t][0]), "+f"(acc[t][1]), "+f"(acc[t][2]), "+f"(acc[t][3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b[2 * t]), "r"(b[2 * t + 1]));
    }
}

// D == 0: weights through registers, one step ahead (o_ka8); D >= 2: a D-stage bulk-copy ring per warp.
template <int NT, int D>
__global__ void __launch_bounds__(512) gemv(const uint32_t* __restrict__ W, const uint32_t* __restrict__ S,
                                            const __nv_bfloat16* __restrict__ X, float* __restrict__ Y, int M, int N,
                                            int K, int step_major) {
    extern __shared__ __align__(128) uint8_t smem[];
    const int steps = K / 1024;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wn = warp & 1, wk = warp >> 1;
    const int b = blockIdx.x;
    const int tokens = NT * 8;
    // x ring: [KW slices][2 stages][tokens][ROW_PAD] bf16
    __nv_bfloat16* xr = reinterpret_cast<__nv_bfloat16*>(smem);
    const int x_stage = tokens * ROW_PAD, x_slice = 2 * x_stage;
    uint8_t* after_x = smem + (size_t)KW * x_slice * 2;
    uint32_t* wring = reinterpret_cast<uint32_t*>(after_x);                       // [WARPS][D][256]
    uint32_t* sring = wring + (size_t)WARPS * (D > 0 ? D : 1) * 256;              // [WARPS][D][16]
    uint64_t* bars = reinterpret_cast<uint64_t*>(sring + (size_t)WARPS * (D > 0 ? D : 1) * 16); // [WARPS][D]

    auto chunk = [&](int t) {
        return step_major ? ((size_t)t * gridDim.x + b) * WARPS + warp : ((size_t)b * steps + t) * WARPS + warp;
    };
    auto stage_x = [&](int t, int buf) {
        const int i = threadIdx.x & 63; // thread within the slice (warps 2wk, 2wk+1)
        const int c0 = t * 1024 + wk * 128;
#pragma unroll
        for (int r = 0; r < NT * 2; r++) {
            int q = i + 64 * r, tok = q >> 4, c16 = q & 15;
            const __nv_bfloat16* src = X + (size_t)tok * K + c0 + c16 * 8;
            uint32_t dst = smem_u32(xr + wk * x_slice + buf * x_stage + tok * ROW_PAD + c16 * 8);
            cp_async16(dst, tok < M ? src : X, tok < M ? 16 : 0);
        }
        cp_commit();
    };

    float acc[NT][4] = {};
    // ldmatrix row address for this lane (x2: lanes 0-15; x4: all)
    int l8 = lane & 7, mat = lane >> 3;
    int tok_l = l8 + ((NT == 2 && mat >= 2) ? 8 : 0), kof = (mat & 1) * 8;

    if constexpr (D == 0) {
        uint4 c0v, c1v, n0v, n1v;
        uint32_t cs0, cs1, ns0 = 0, ns1 = 0;
        stage_x(0, 0);
        {
            const uint32_t* wp = W + chunk(0) * 256;
            c0v = *reinterpret_cast<const uint4*>(wp + lane * 4);
            c1v = *reinterpret_cast<const uint4*>(wp + 128 + lane * 4);
            const uint32_t* sp = S + chunk(0) * 16;
            cs0 = sp[l8]; cs1 = sp[l8 + 8];
        }
        for (int t = 0; t < steps; t++) {
            cp_wait_all();
            if (t + 1 < steps) {
                const uint32_t* wp = W + chunk(t + 1) * 256;
                n0v = *reinterpret_cast<const uint4*>(wp + lane * 4);
                n1v = *reinterpret_cast<const uint4*>(wp + 128 + lane * 4);
                const uint32_t* sp = S + chunk(t + 1) * 16;
                ns0 = sp[l8]; ns1 = sp[l8 + 8];
            }
            bar_slice(1 + wk);
            if (t + 1 < steps) stage_x(t + 1, (t + 1) & 1);
            uint32_t xs = smem_u32(xr + wk * x_slice + (t & 1) * x_stage + tok_l * ROW_PAD + kof);
            uint32_t wv[8] = {c0v.x, c0v.y, c0v.z, c0v.w, c1v.x, c1v.y, c1v.z, c1v.w};
#pragma unroll
            for (int j = 0; j < 8; j++) {
                uint32_t s = j < 4 ? cs0 : cs1;
                uint32_t sc = ((j >> 1) & 1) ? ((s >> 1) & 0x7f807f80u) : ((s << 7) & 0x7f807f80u);
                mma_word<NT>(wv[j], sc, xs + j * 32, acc, lane);
            }
            c0v = n0v; c1v = n1v; cs0 = ns0; cs1 = ns1;
        }
    } else {
        uint32_t* myw = wring + (size_t)warp * D * 256;
        uint32_t* mys = sring + (size_t)warp * D * 16;
        uint64_t* myb = bars + warp * D;
        auto issue = [&](int s, int t) {
            uint32_t bar = smem_u32(myb + s);
            mbar_expect(bar, 1024 + 64);
            bulk_g2s(smem_u32(myw + s * 256), W + chunk(t) * 256, 1024, bar);
            bulk_g2s(smem_u32(mys + s * 16), S + chunk(t) * 16, 64, bar);
        };
        if (lane == 0) {
            for (int s = 0; s < D; s++) mbar_init(smem_u32(myb + s), 1);
            asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        }
        __syncwarp();
        if (lane == 0)
            for (int s = 0; s < D && s < steps; s++) issue(s, s);
        stage_x(0, 0);
        for (int t = 0; t < steps; t++) {
            cp_wait_all();
            bar_slice(1 + wk);
            if (t + 1 < steps) stage_x(t + 1, (t + 1) & 1);
            const int s = t % D;
            mbar_wait(smem_u32(myb + s), (t / D) & 1);
            // the previous step's stage is free: every lane finished reading it before this step began
            if (lane == 0 && t >= 1 && t - 1 + D < steps) issue((t - 1) % D, t - 1 + D);
            uint4 c0v = *reinterpret_cast<const uint4*>(myw + s * 256 + lane * 4);
            uint4 c1v = *reinterpret_cast<const uint4*>(myw + s * 256 + 128 + lane * 4);
            uint32_t cs0 = mys[s * 16 + l8], cs1 = mys[s * 16 + l8 + 8];
            uint32_t xs = smem_u32(xr + wk * x_slice + (t & 1) * x_stage + tok_l * ROW_PAD + kof);
            uint32_t wv[8] = {c0v.x, c0v.y, c0v.z, c0v.w, c1v.x, c1v.y, c1v.z, c1v.w};
#pragma unroll
            for (int j = 0; j < 8; j++) {
                uint32_t sc2 = j < 4 ? cs0 : cs1;
                uint32_t sc = ((j >> 1) & 1) ? ((sc2 >> 1) & 0x7f807f80u) : ((sc2 << 7) & 0x7f807f80u);
                mma_word<NT>(wv[j], sc, xs + j * 32, acc, lane);
            }
            __syncwarp();
        }
    }
    // reduce the 8 K slices (reusing the x ring)
    __syncthreads();
    float* red = reinterpret_cast<float*>(smem); // [WARPS][NT*4][32]
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int i = 0; i < 4; i++) red[(warp * NT * 4 + t * 4 + i) * 32 + lane] = acc[t][i];
    __syncthreads();
    if (wk == 0) {
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float v = 0;
                for (int s = 0; s < KW; s++) v += red[(((s << 1) | wn) * NT * 4 + t * 4 + i) * 32 + lane];
                int row = b * 32 + wn * 16 + (lane >> 2) + (i >= 2 ? 8 : 0);
                int tok = t * 8 + (lane & 3) * 2 + (i & 1);
                if (tok < M) Y[(size_t)tok * N + row] = v;
            }
    }
}

__global__ void flush_read(const uint4* __restrict__ p, size_t n, uint32_t* sink) {
    uint32_t x = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = p[i];
        x ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (x == 2052865567u) *sink = x;
}

// each block reads its own contiguous region in order (as a decode block streams its rows), chunk bytes per step
__global__ void region_read(const uint4* __restrict__ p, size_t per_block16, uint32_t* sink, int step_major, int steps) {
    uint32_t x = 0;
    size_t chunk16 = per_block16 / steps;
    for (int t = 0; t < steps; t++) {
        size_t base = step_major ? ((size_t)t * gridDim.x + blockIdx.x) * chunk16 : blockIdx.x * per_block16 + t * chunk16;
        for (size_t i = threadIdx.x; i < chunk16; i += blockDim.x) {
            uint4 v = p[base + i];
            x ^= v.x ^ v.y ^ v.z ^ v.w;
        }
    }
    if (x == 2052865567u) *sink = x;
}

struct Timer {
    cudaEvent_t a, b;
    uint4* fbuf;
    size_t fn;
    uint32_t* sink;
    int sms;
    Timer() {
        CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
        fn = (256u << 20) / 16;
        CK(cudaMalloc(&fbuf, fn * 16)); CK(cudaMemset(fbuf, 1, fn * 16));
        CK(cudaMalloc(&sink, 4));
        CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    }
    template <class F> double median(F launch, int warm = 10, int iters = 50) {
        for (int i = 0; i < warm; i++) launch();
        std::vector<float> t;
        for (int i = 0; i < iters; i++) {
            flush_read<<<sms * 8, 256>>>(fbuf, fn, sink);
            CK(cudaEventRecord(a));
            launch();
            CK(cudaEventRecord(b));
            CK(cudaEventSynchronize(b));
            float ms; CK(cudaEventElapsedTime(&ms, a, b));
            t.push_back(ms * 1000.f);
        }
        CK(cudaGetLastError());
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    }
};

template <int NT, int D>
size_t smem_bytes() {
    size_t x = (size_t)KW * 2 * 2 * NT * 8 * ROW_PAD;
    size_t dd = D > 0 ? D : 1;
    size_t r = x + WARPS * dd * 256 * 4 + WARPS * dd * 16 * 4 + WARPS * dd * 8;
    if (D == 0) r = x;
    size_t red = (size_t)WARPS * NT * 4 * 32 * 4;
    return std::max(r, red);
}

template <int NT, int D>
void run(Timer& tm, const char* name, const uint32_t* W, const uint32_t* S, const __nv_bfloat16* X, float* Y, int M,
         int N, int K, int sm_ = 0) {
    size_t sm = smem_bytes<NT, D>();
    CK(cudaFuncSetAttribute(gemv<NT, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, gemv<NT, D>, 512, sm));
    auto launch = [&] { gemv<NT, D><<<N / 32, 512, sm>>>(W, S, X, Y, M, N, K, sm_); };
    double us = tm.median(launch);
    double bytes = (double)N * K / 2 + (double)N * K / 32;
    printf("%-8s %-28s N=%5d K=%5d M=%2d smem %6zu occ %d: %7.2f us  %.3f TB/s (nominal MXFP4 bytes)\n", sm_ ? "stepmaj" : "blockmaj", name, N, K, M, sm,
           occ, us, bytes / us / 1e6);
}

int main() {
    Timer tm;
    int shapes[2][2] = {{8192, 8192}, {10240, 8192}};
    size_t maxw = (size_t)10240 * 8192 / 8;
    uint32_t *W, *S; __nv_bfloat16* X; float* Y;
    CK(cudaMalloc(&W, maxw * 4)); CK(cudaMalloc(&S, maxw)); // scales: N*K/32 bytes = maxw/4 words; over-allocate
    CK(cudaMalloc(&X, 16 * 8192 * 2)); CK(cudaMalloc(&Y, 16 * 10240 * 4));
    std::vector<uint32_t> h(maxw);
    uint32_t st = 12345;
    for (auto& v : h) { st = st * 1664525u + 1013904223u; v = st; }
    CK(cudaMemcpy(W, h.data(), maxw * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(S, 127, maxw)); // E8M0 127 = 1.0
    CK(cudaMemset(X, 0x3c, 16 * 8192 * 2)); // bf16 ~0.0115
    for (int rep = 0; rep < 2; rep++)
        for (auto& s : shapes) {
            int N = s[0], K = s[1];
            size_t n16 = ((size_t)N * K / 2 + (size_t)N * K / 32) / 16;
            double us = tm.median([&] { flush_read<<<tm.sms * 8, 256>>>(reinterpret_cast<const uint4*>(W), n16, tm.sink); });
            printf("plain read %zu bytes: %.2f us\n", n16 * 16, us);
            int blocks = N / 32;
            size_t pb = (size_t)N * K / 2 / 16 / blocks;
            for (int smj : {0, 1}) {
                double r = tm.median([&] { region_read<<<blocks, 512>>>(reinterpret_cast<const uint4*>(W), pb, tm.sink, smj, K / 1024); });
                printf("region read (weights only, %d blocks x %zu B, %s): %.2f us\n", blocks, pb * 16, smj ? "step-major" : "block-major", r);
            }
            for (int smj : {0, 1}) {
                run<1, 0>(tm, "ldg (o_ka8-like) 8 tok", W, S, X, Y, 1, N, K, smj);
                run<1, 2>(tm, "bulk D=2 8 tok", W, S, X, Y, 1, N, K, smj);
                run<2, 0>(tm, "ldg (o_ka-like) 16 tok", W, S, X, Y, 16, N, K, smj);
                run<2, 2>(tm, "bulk D=2 16 tok", W, S, X, Y, 16, N, K, smj);
            }
        }
    return 0;
}
