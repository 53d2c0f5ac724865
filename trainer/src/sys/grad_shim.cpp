// torch::autograd::grad with output gradients, which tch's run_backward
// does not take (it differentiates scalars only). Used by
// trainer/src/autograd.rs; tch's tensor handles are `at::Tensor*`.
#include <torch/csrc/autograd/autograd.h>

#include <cstring>
#include <exception>
#include <vector>

extern "C" int trainer_autograd_grad(at::Tensor* const* outputs,
                                     at::Tensor* const* grad_outputs, int n_outputs,
                                     at::Tensor* const* inputs, int n_inputs,
                                     at::Tensor** results, char* error, size_t error_len) {
    try {
        std::vector<at::Tensor> outs, grads, ins;
        for (int i = 0; i < n_outputs; ++i) {
            outs.push_back(*outputs[i]);
            grads.push_back(*grad_outputs[i]);
        }
        for (int i = 0; i < n_inputs; ++i) ins.push_back(*inputs[i]);
        auto got = torch::autograd::grad(outs, ins, grads, /*retain_graph=*/false,
                                         /*create_graph=*/false, /*allow_unused=*/true);
        for (int i = 0; i < n_inputs; ++i) results[i] = new at::Tensor(got[i]);
        return 0;
    } catch (const std::exception& e) {
        if (error_len > 0) {
            std::strncpy(error, e.what(), error_len - 1);
            error[error_len - 1] = '\0';
        }
        return 1;
    }
}
