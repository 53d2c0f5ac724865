// CUDA-graph capture of a training step, through libtorch's own stream and
// graph API (tch wraps neither). Used by trainer/src/graph.rs. Compiled by
// build.rs only where CUDA's headers are installed (make setup-torch).
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

int fail(const std::exception& e, char* error, size_t len) {
    if (len > 0) {
        std::strncpy(error, e.what(), len - 1);
        error[len - 1] = '\0';
    }
    return 1;
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
    try {
        enter(static_cast<Capture*>(c));
        return 0;
    } catch (const std::exception& e) {
        return fail(e, error, len);
    }
}

int trainer_graph_leave(void* c, char* error, size_t len) {
    try {
        leave(static_cast<Capture*>(c));
        return 0;
    } catch (const std::exception& e) {
        return fail(e, error, len);
    }
}

int trainer_graph_capture_begin(void* c, char* error, size_t len) {
    auto* cap = static_cast<Capture*>(c);
    try {
        enter(cap);
        cap->graph.capture_begin();
        return 0;
    } catch (const std::exception& e) {
        c10::cuda::setCurrentCUDAStream(cap->prior);
        return fail(e, error, len);
    }
}

int trainer_graph_capture_end(void* c, char* error, size_t len) {
    auto* cap = static_cast<Capture*>(c);
    try {
        cap->graph.capture_end();
        leave(cap);
        return 0;
    } catch (const std::exception& e) {
        c10::cuda::setCurrentCUDAStream(cap->prior);
        return fail(e, error, len);
    }
}

int trainer_graph_replay(void* c, char* error, size_t len) {
    try {
        static_cast<Capture*>(c)->graph.replay();
        return 0;
    } catch (const std::exception& e) {
        return fail(e, error, len);
    }
}

// libtorch's current stream on `device` (a cudaStream_t), for our own
// kernel launches: inside a capture it is the capturing stream.
void* trainer_current_stream(int device) {
    return c10::cuda::getCurrentCUDAStream(device).stream();
}

}  // extern "C"
