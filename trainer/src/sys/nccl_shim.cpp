// The NCCL process group for dist_shim.cpp: libtorch's ProcessGroupNCCL over
// the store the ranks met at. Compiled by build.rs where the PyTorch wheel's
// CUDA and NCCL headers are installed (make setup-torch); elsewhere
// nccl_stub.cpp stands in and says why.
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

c10::intrusive_ptr<c10d::Backend> trainer_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                       int rank, int world,
                                                       std::chrono::milliseconds timeout) {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
}
