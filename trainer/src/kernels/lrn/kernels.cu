// ReLU followed by the paper's local response normalisation, forward and
// backward, one pass each, for channels-last (NHWC) tensors. Compiled at
// run time with NVRTC (trainer/src/kernels/lrn/cuda.rs); no headers, so bfloat16
// is handled as its bit pattern.
//
// For one pixel and one column of G maps, with a = max(x, 0):
//   S_c = sum of a_j^2 over the maps j within `half` of c, inside the column
//   D_c = (k + alpha S_c)^-beta
//   y_c = a_c D_c
// and, given g = dL/dy,
//   dL/dx_c = [x_c > 0] (g_c D_c - 2 alpha beta a_c sum_{i near c} g_i a_i D_i / (k + alpha S_i))
//
// A block holds `rows` pixels (threadIdx.y) of C channels (threadIdx.x), so
// every load and store is coalesced along the channels and no thread
// divides a 64-bit index. The squares (forward) and the per-map backward
// terms are shared through shared memory, `rows * C` floats each.

typedef unsigned short bf16;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) {
    return __uint_as_float(((unsigned int)v) << 16);
}
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
// Round to nearest even, as PyTorch converts float to bfloat16; NaN stays NaN.
__device__ __forceinline__ void store(bf16* p, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        *p = (bf16)((u >> 16) | 0x40u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    *p = (bf16)(u >> 16);
}

// ReLU that lets NaN through, as torch.relu does (a diverged run must show).
__device__ __forceinline__ float relu(float v) { return (v > 0.f || v != v) ? v : 0.f; }

struct Window {
    int lo, hi;
};

// The maps within `half` of c that share its column of G maps.
__device__ __forceinline__ Window window(int c, int G, int half) {
    int start = c - c % G;
    Window w;
    w.lo = max(c - half, start);
    w.hi = min(c + half, start + G - 1);
    return w;
}

template <typename T>
__device__ void forward(const T* x, T* y, int pixels, int C, int G, int half, float k,
                        float alpha, float beta) {
    extern __shared__ float shared[];
    int c = threadIdx.x;
    int p = blockIdx.x * blockDim.y + threadIdx.y;
    float* squares = shared + threadIdx.y * C;
    long long i = (long long)p * C + c;
    float a = 0.f;
    if (p < pixels) a = relu(to_float(x[i]));
    squares[c] = a * a;
    __syncthreads();
    if (p >= pixels) return;
    Window w = window(c, G, half);
    float s = 0.f;
    for (int j = w.lo; j <= w.hi; ++j) s += squares[j];
    store(&y[i], a * powf(k + alpha * s, -beta));
}

template <typename T>
__device__ void backward(const T* x, const T* g, T* dx, int pixels, int C, int G, int half,
                         float k, float alpha, float beta) {
    extern __shared__ float shared[];
    int c = threadIdx.x;
    int p = blockIdx.x * blockDim.y + threadIdx.y;
    float* squares = shared + threadIdx.y * C;
    float* terms = shared + (blockDim.y + threadIdx.y) * C;
    long long i = (long long)p * C + c;
    float xv = 0.f, a = 0.f, gv = 0.f;
    if (p < pixels) {
        xv = to_float(x[i]);
        gv = to_float(g[i]);
        a = relu(xv);
    }
    squares[c] = a * a;
    __syncthreads();
    Window w = window(c, G, half);
    float s = 0.f;
    for (int j = w.lo; j <= w.hi; ++j) s += squares[j];
    float denom = k + alpha * s;
    float d = powf(denom, -beta);
    terms[c] = gv * a * d / denom;
    __syncthreads();
    if (p >= pixels) return;
    float t = 0.f;
    for (int j = w.lo; j <= w.hi; ++j) t += terms[j];
    float grad = (xv > 0.f || xv != xv) ? gv * d - 2.f * alpha * beta * a * t : 0.f;
    store(&dx[i], grad);
}

#define LRN_KERNELS(NAME, T)                                                                 \
    extern "C" __global__ void lrn_forward_##NAME(const T* x, T* y, int pixels, int C, int G, \
                                                  int half, float k, float alpha, float beta) { \
        forward<T>(x, y, pixels, C, G, half, k, alpha, beta);                                \
    }                                                                                        \
    extern "C" __global__ void lrn_backward_##NAME(const T* x, const T* g, T* dx, int pixels, \
                                                   int C, int G, int half, float k,           \
                                                   float alpha, float beta) {                 \
        backward<T>(x, g, dx, pixels, C, G, half, k, alpha, beta);                           \
    }

LRN_KERNELS(f32, float)
LRN_KERNELS(bf16, bf16)
