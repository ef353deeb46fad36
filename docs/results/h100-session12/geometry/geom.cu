// Timing probe (not part of nibble): how much of a plain read of the small decode layers' weights does the block
// geometry cost? Each block streams its own contiguous share of the bytes (as a decode block streams its rows), for
// block counts that leave the SMs unevenly loaded (256, 320: the decode kernels' grids) or evenly (264, 396, ...),
// against a grid-stride read with 8 blocks of 256 threads per SM. Same timing method as `nibble-rt bench`.
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <algorithm>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

__global__ void flush_read(const uint4* __restrict__ p, size_t n, uint32_t* sink) {
    uint32_t x = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = p[i];
        x ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (x == 2052865567u) *sink = x;
}

// block b reads [b * n / B, (b + 1) * n / B) in order, blockDim 16-byte words per step, two steps in flight
__global__ void region_read(const uint4* __restrict__ p, size_t n, uint32_t* sink) {
    uint32_t x = 0;
    size_t lo = n * blockIdx.x / gridDim.x, hi = n * (blockIdx.x + 1) / gridDim.x;
    size_t i = lo + threadIdx.x;
    for (; i + blockDim.x < hi; i += 2 * blockDim.x) {
        uint4 a = p[i], b = p[i + blockDim.x];
        x ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
    }
    if (i < hi) { uint4 a = p[i]; x ^= a.x ^ a.y ^ a.z ^ a.w; }
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

int main() {
    Timer tm;
    size_t maxb = (size_t)10240 * 8192 / 2;
    uint4* W;
    CK(cudaMalloc(&W, maxb));
    CK(cudaMemset(W, 7, maxb));
    struct G { int blocks, threads; };
    const G geoms[] = {{256, 512}, {264, 512}, {320, 256}, {264, 256}, {396, 256}, {528, 256}, {512, 256},
                       {640, 256}, {660, 256}, {1024, 128}, {1056, 128}, {132, 1024}, {1056, 256}};
    for (int rep = 0; rep < 2; rep++)
        for (size_t bytes : {(size_t)8192 * 8192 / 2, (size_t)10240 * 8192 / 2}) {
            size_t n16 = bytes / 16;
            printf("-- %zu bytes (weights of %s)\n", bytes, bytes == (size_t)8192 * 8192 / 2 ? "O" : "QKV");
            double us = tm.median([&] { flush_read<<<tm.sms * 8, 256>>>(W, n16, tm.sink); });
            printf("grid-stride %4d x %4d: %7.2f us\n", tm.sms * 8, 256, us);
            for (auto g : geoms) {
                double r = tm.median([&] { region_read<<<g.blocks, g.threads>>>(W, n16, tm.sink); });
                printf("regions     %4d x %4d: %7.2f us (%.2f blocks per SM)\n", g.blocks, g.threads, r, g.blocks / (double)tm.sms);
            }
        }
    return 0;
}
