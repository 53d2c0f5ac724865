// Data-parallel communication through libtorch's own c10d: a TCPStore for
// the rendezvous, and a ProcessGroupGloo (CPU tensors) or ProcessGroupNCCL
// (CUDA tensors, nccl_shim.cpp) for the collectives. tch wraps none of it.
// Used by trainer/src/sys/dist.rs; tch's tensor handles are `at::Tensor*`.
//
// Compiled by build.rs against Gloo's headers (`make setup-gloo`), which
// ProcessGroupGloo.hpp includes and the PyTorch wheel does not ship.
// Every entry point catches what libtorch throws: no C++ exception crosses
// into Rust.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <c10/util/Logging.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

struct TrainerComm {
    c10::intrusive_ptr<c10d::Store> store;
    c10::intrusive_ptr<c10d::Backend> backend;
};

// The NCCL process group, from nccl_shim.cpp where this build has CUDA's and
// NCCL's headers; otherwise a stub that says so.
c10::intrusive_ptr<c10d::Backend> trainer_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                       int rank, int world,
                                                       std::chrono::milliseconds timeout);

namespace {

void fail(const char* what, char* error, size_t len) {
    if (len > 0) {
        std::strncpy(error, what, len - 1);
        error[len - 1] = '\0';
    }
}

template <class F>
int guarded(F f, char* error, size_t len) {
    try {
        f();
        return 0;
    } catch (const c10::Error& e) {
        // The message without libtorch's C++ stack trace.
        fail(e.what_without_backtrace(), error, len);
        return 1;
    } catch (const std::exception& e) {
        fail(e.what(), error, len);
        return 1;
    } catch (...) {
        fail("unknown C++ exception", error, len);
        return 1;
    }
}

std::vector<at::Tensor> tensors_of(at::Tensor* const* ts, int n) {
    std::vector<at::Tensor> out;
    out.reserve(n);
    for (int i = 0; i < n; ++i) out.push_back(*ts[i]);
    return out;
}

// Runs `issue` on each tensor alone (the Gloo group takes one tensor per
// call: a list means one tensor per device), all before the first wait, so
// the transfers overlap.
template <class Issue>
void each_then_wait(at::Tensor* const* ts, int n, Issue issue) {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(n);
    for (int i = 0; i < n; ++i) {
        std::vector<at::Tensor> one{*ts[i]};
        works.push_back(issue(one));
    }
    for (auto& w : works) w->wait();
}

}  // namespace

// `backend`: 0 Gloo, 1 NCCL. Rank 0 hosts the store unless `join_store`
// (torchrun's agent already hosts one at host:port); `prefix` namespaces our
// keys in it.
extern "C" int trainer_comm_new(int backend, const char* host, int port, int rank, int world,
                                int join_store, const char* prefix, int64_t timeout_ms,
                                TrainerComm** out, char* error, size_t error_len) {
    return guarded(
        [&] {
            // c10d logs each failed attempt to reach the store, with a C++
            // stack trace, before the error we report in one line. libtorch
            // reads TORCH_CPP_LOG_LEVEL only when asked (PyTorch asks at
            // import): ask, with FATAL unless the user chose a level.
            setenv("TORCH_CPP_LOG_LEVEL", "FATAL", /*overwrite=*/0);
            c10::initLogging();
            auto timeout = std::chrono::milliseconds(timeout_ms);
            c10d::TCPStoreOptions so;
            so.port = static_cast<uint16_t>(port);
            so.isServer = rank == 0 && !join_store;
            so.numWorkers = join_store ? std::nullopt : std::optional<size_t>(world);
            so.waitWorkers = !join_store;
            so.timeout = timeout;
            c10::intrusive_ptr<c10d::Store> tcp = c10::make_intrusive<c10d::TCPStore>(host, so);
            auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, tcp);
            auto comm = new TrainerComm{store, {}};
            try {
                if (backend == 1) {
                    comm->backend = trainer_nccl_backend(store, rank, world, timeout);
                } else {
                    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
                    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
                    comm->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
                }
            } catch (...) {
                delete comm;
                throw;
            }
            *out = comm;
        },
        error, error_len);
}

extern "C" void trainer_comm_free(TrainerComm* comm) {
    try {
        delete comm;
    } catch (...) {
        // A destructor that throws has nothing left to tell; it must not
        // unwind into Rust.
    }
}

// Reduces each tensor over the ranks, in place: `op` 0 sums, 1 takes the
// largest.
extern "C" int trainer_comm_all_reduce(TrainerComm* comm, at::Tensor* const* ts, int n, int op,
                                       char* error, size_t error_len) {
    return guarded(
        [&] {
            c10d::AllreduceOptions opts;
            opts.reduceOp = op == 1 ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
            each_then_wait(ts, n, [&](std::vector<at::Tensor>& one) {
                return comm->backend->allreduce(one, opts);
            });
        },
        error, error_len);
}

// Collectives in flight: started by trainer_comm_all_reduce_start, ended by
// trainer_work_wait, which frees them.
struct TrainerWork {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
};

// Starts summing each tensor over the ranks, in place, and returns at once
// (Gloo works on its own threads, NCCL on its own stream): the caller goes
// on with other work and waits later.
extern "C" int trainer_comm_all_reduce_start(TrainerComm* comm, at::Tensor* const* ts, int n,
                                             TrainerWork** out, char* error, size_t error_len) {
    return guarded(
        [&] {
            auto work = std::make_unique<TrainerWork>();
            c10d::AllreduceOptions opts;
            opts.reduceOp = c10d::ReduceOp::SUM;
            for (int i = 0; i < n; ++i) {
                std::vector<at::Tensor> one{*ts[i]};
                work->works.push_back(comm->backend->allreduce(one, opts));
            }
            *out = work.release();
        },
        error, error_len);
}

// Waits for `work` (for NCCL: makes the current CUDA stream wait) and frees it.
extern "C" int trainer_work_wait(TrainerWork* work, char* error, size_t error_len) {
    std::unique_ptr<TrainerWork> owned(work);
    return guarded(
        [&] {
            for (auto& w : owned->works) w->wait();
        },
        error, error_len);
}

// Sets each tensor to rank `root`'s, in place.
extern "C" int trainer_comm_broadcast(TrainerComm* comm, at::Tensor* const* ts, int n, int root,
                                      char* error, size_t error_len) {
    return guarded(
        [&] {
            c10d::BroadcastOptions opts;
            opts.rootRank = root;
            each_then_wait(ts, n, [&](std::vector<at::Tensor>& one) {
                return comm->backend->broadcast(one, opts);
            });
        },
        error, error_len);
}

extern "C" int trainer_comm_barrier(TrainerComm* comm, char* error, size_t error_len) {
    return guarded([&] { comm->backend->barrier()->wait(); }, error, error_len);
}

// The store's counter `key` raised by `by` (c10d's Store::add; 0 reads it).
extern "C" int trainer_comm_store_add(TrainerComm* comm, const char* key, int64_t by,
                                      int64_t* value, char* error, size_t error_len) {
    return guarded([&] { *value = comm->store->add(key, by); }, error, error_len);
}
