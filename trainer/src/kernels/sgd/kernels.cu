// The paper's update (trainer/src/optim/sgd.rs) for one float32 parameter, in one
// pass: read w, v and g, write v and w, where libtorch's in-place
// operations take four kernels and eleven passes over memory. Compiled at
// run time with NVRTC (trainer/src/sys/cuda.rs).
//
//   v <- momentum v - lr g - lr decay w
//   w <- w + v
//
// The three terms are added in the order the tensor path adds them.

extern "C" __global__ void sgd_update_f32(float* w, float* v, const float* g, long long n,
                                          float momentum, float neg_lr, float neg_lr_decay) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
        float wi = w[i];
        float vi = momentum * v[i];
        vi = vi + g[i] * neg_lr;
        vi = vi + wi * neg_lr_decay;
        v[i] = vi;
        w[i] = wi + vi;
    }
}
