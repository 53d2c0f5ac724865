// Stands in for nccl_shim.cpp in builds without CUDA's and NCCL's headers:
// asking for NCCL is then an error that says how to get it.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <stdexcept>

c10::intrusive_ptr<c10d::Backend> trainer_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int,
                                                       int, std::chrono::milliseconds) {
    throw std::runtime_error(
        "this trainer was built without NCCL (no CUDA/NCCL headers beside libtorch: make "
        "setup-torch, then rebuild); use --dist-backend gloo");
}
