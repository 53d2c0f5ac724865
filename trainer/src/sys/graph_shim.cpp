// CUDA-graph capture of a training step, through libtorch's own stream and
// graph API (tch wraps neither). Used by trainer/src/sys/graph.rs and
// sys/stream.rs. Compiled by build.rs only where CUDA's headers are
// installed (make setup-torch).
//
// The recipe is PyTorch's for whole-network capture: warm-up steps run on a
// side stream, one step is captured there into a graph whose memory comes
// from a private pool, and later steps replay it on the current stream.
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/Event.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <exception>

namespace {

struct Capture {
    explicit Capture(int device)
        : device(device),
          side(c10::cuda::getStreamFromPool(false, device)),
          prior(c10::cuda::getCurrentCUDAStream(device)) {}
    int device;
    c10::cuda::CUDAStream side;
    c10::cuda::CUDAStream prior;
    at::cuda::CUDAGraph graph;
};

void fail(const std::exception& e, char* error, size_t len) {
    if (len > 0) {
        std::strncpy(error, e.what(), len - 1);
        error[len - 1] = '\0';
    }
}

// Runs `f`; 0, or 1 with the exception's message in `error`. With
// `restore`, a failure makes the stream current before the capture current
// again, so that a failed capture leaves no later work on the side stream.
template <class F>
int guarded(Capture* c, bool restore, F f, char* error, size_t len) {
    try {
        f();
        return 0;
    } catch (const std::exception& e) {
        if (restore) c10::cuda::setCurrentCUDAStream(c->prior);
        fail(e, error, len);
        return 1;
    }
}

// `to` waits for the work queued so far on `from`. A device-generic
// c10::Event, so that this file calls no CUDA runtime function itself and
// the binary needs no libcudart of its own (libtorch brings its copy).
void order(c10::cuda::CUDAStream from, c10::cuda::CUDAStream to) {
    c10::Event done(c10::DeviceType::CUDA);
    done.record(from.unwrap());
    done.block(to.unwrap());
}

void enter(Capture* c) {
    c->prior = c10::cuda::getCurrentCUDAStream(c->device);
    order(c->prior, c->side);
    c10::cuda::setCurrentCUDAStream(c->side);
}

void leave(Capture* c) {
    order(c->side, c->prior);
    c10::cuda::setCurrentCUDAStream(c->prior);
}

}  // namespace

extern "C" {

void* trainer_graph_new(int device, char* error, size_t len) {
    try {
        return new Capture(device);
    } catch (const std::exception& e) {
        fail(e, error, len);
        return nullptr;
    }
}

void trainer_graph_free(void* c) { delete static_cast<Capture*>(c); }

// Makes the side stream current (eager warm-up steps), and back.
int trainer_graph_enter(void* c, char* error, size_t len) {
    auto* cap = static_cast<Capture*>(c);
    return guarded(cap, false, [&] { enter(cap); }, error, len);
}

int trainer_graph_leave(void* c, char* error, size_t len) {
    auto* cap = static_cast<Capture*>(c);
    return guarded(cap, false, [&] { leave(cap); }, error, len);
}

int trainer_graph_capture_begin(void* c, char* error, size_t len) {
    auto* cap = static_cast<Capture*>(c);
    return guarded(cap, true, [&] {
        enter(cap);
        cap->graph.capture_begin();
    }, error, len);
}

int trainer_graph_capture_end(void* c, char* error, size_t len) {
    auto* cap = static_cast<Capture*>(c);
    return guarded(cap, true, [&] {
        cap->graph.capture_end();
        leave(cap);
    }, error, len);
}

int trainer_graph_replay(void* c, char* error, size_t len) {
    auto* cap = static_cast<Capture*>(c);
    return guarded(cap, false, [&] { cap->graph.replay(); }, error, len);
}

// libtorch's current stream on `device` (a cudaStream_t), for our own
// kernel launches: inside a capture it is the capturing stream.
void* trainer_current_stream(int device) {
    return c10::cuda::getCurrentCUDAStream(device).stream();
}

}  // extern "C"
