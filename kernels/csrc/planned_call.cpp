// An eager attention call without Python: its planned launches and its autograd node.
//
// ops.py plans each call key once (ops.Program: the buffers a call allocates, and its
// launches with every argument fixed but the tensors, named by slot). After a key's first
// call, which goes through Triton (compiling and autotuning), native.py hands the programs
// here: each launch becomes the compiled kernel's CUfunction, its grid and its parameter
// bytes, and a call allocates its buffers, writes the tensors' addresses into the bytes
// and calls cuLaunchKernel, under an autograd node written in C++. That removes what a
// Python autograd.Function and Python launches cost per call (docs/benchmarks.md, "Host
// cost"). Only CPU headers are needed: the CUDA driver is opened at run time, and the
// stream comes from c10's device-generic interface.
#include <dlfcn.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/extension.h>

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

// cuLaunchKernel's C signature, with the driver's handle types as pointers.
using LaunchKernel = int (*)(void* function, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                             unsigned block_y, unsigned block_z, unsigned shared_bytes, void* stream, void** params,
                             void** extra);

LaunchKernel launch_kernel() {
  static const LaunchKernel function = [] {
    void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    TORCH_CHECK(driver != nullptr, "sparse attention: cannot open the CUDA driver libcuda.so.1: ", dlerror());
    void* symbol = dlsym(driver, "cuLaunchKernel");
    TORCH_CHECK(symbol != nullptr, "sparse attention: libcuda.so.1 has no cuLaunchKernel");
    return reinterpret_cast<LaunchKernel>(symbol);
  }();
  return function;
}

// A tensor a call allocates, uninitialized unless `zero` (ops.Buffer).
struct Buffer {
  std::vector<int64_t> size, stride;
  at::ScalarType dtype;
  bool zero;
};

// One launch of a compiled Triton kernel. `bytes` holds every kernel parameter at
// `offsets` (8-byte aligned), the tensors' addresses left to fill in at `pointers`
// (offset in bytes, slot of the tensor).
struct Kernel {
  uint64_t function;
  unsigned grid[3];
  unsigned threads, shared_bytes;
  std::string bytes;
  std::vector<int64_t> offsets;
  std::vector<std::pair<int64_t, int64_t>> pointers;

  void launch(const std::vector<at::Tensor>& slots, void* stream) const {
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0) return;  // nothing to do, as Triton's launcher
    std::string filled = bytes;
    for (const auto& [offset, slot] : pointers) {
      const uint64_t address = reinterpret_cast<uint64_t>(slots[slot].data_ptr());
      std::memcpy(filled.data() + offset, &address, sizeof(address));
    }
    std::vector<void*> params(offsets.size());
    for (size_t i = 0; i < offsets.size(); ++i) params[i] = filled.data() + offsets[i];
    const int status = launch_kernel()(reinterpret_cast<void*>(function), grid[0], grid[1], grid[2], threads, 1, 1,
                                       shared_bytes, stream, params.data(), nullptr);
    TORCH_CHECK(status == 0, "sparse attention: cuLaunchKernel failed with CUDA driver error ", status);
  }
};

// ops.Program: slots 0.. are the call's tensors, then its buffers; `outputs` are slots.
struct Program {
  std::vector<Buffer> buffers;
  std::vector<Kernel> kernels;
  std::vector<int64_t> outputs;

  std::vector<at::Tensor> run(std::vector<at::Tensor> slots) const {
    const c10::Device device = slots.at(0).device();
    const c10::DeviceGuard guard(device);
    for (const auto& buffer : buffers) {
      auto tensor = at::empty_strided(buffer.size, buffer.stride, at::TensorOptions().dtype(buffer.dtype).device(device));
      slots.push_back(buffer.zero ? tensor.zero_() : tensor);
    }
    if (!kernels.empty()) {
      void* stream = c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle();
      for (const auto& kernel : kernels) kernel.launch(slots, stream);
    }
    std::vector<at::Tensor> results;
    for (const int64_t slot : outputs) results.push_back(slots.at(slot));
    return results;
  }
};

// A planned call: the forward program (slots q, k, v, extra | ...; outputs out, lse) and,
// once a backward has run, the backward program (slots do, q, k, v, out, lse, extra | ...;
// outputs dq, dk, dv) with the strides it was planned for dO.
struct Call {
  std::shared_ptr<Program> forward, backward;
  std::vector<int64_t> do_stride;
};

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct PlannedAttention : public torch::autograd::Function<PlannedAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            at::TensorList extra, int64_t call_address) {
    const auto* call = reinterpret_cast<const Call*>(call_address);
    std::vector<at::Tensor> inputs{q, k, v};
    inputs.insert(inputs.end(), extra.begin(), extra.end());
    const auto outputs = call->forward->run(inputs);  // out, lse
    std::vector<at::Tensor> saved{q, k, v, outputs[0], outputs[1]};
    saved.insert(saved.end(), extra.begin(), extra.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["call"] = call_address;
    ctx->set_materialize_grads(false);
    return outputs[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    variable_list result(saved.size() - 2 + 1);  // q, k, v, each extra tensor, and the call's address
    at::Tensor d_out = grads[0];
    if (!d_out.defined()) return result;  // the output was not used
    const auto* call = reinterpret_cast<const Call*>(ctx->saved_data["call"].toInt());
    if (d_out.strides() != at::IntArrayRef(call->do_stride)) {  // planned for another layout of dO: copy into it
      d_out = at::empty_strided(d_out.sizes(), call->do_stride, d_out.options()).copy_(d_out);
    }
    std::vector<at::Tensor> inputs{d_out};
    inputs.insert(inputs.end(), saved.begin(), saved.end());
    const auto gradients = call->backward->run(inputs);  // dq, dk, dv
    std::copy(gradients.begin(), gradients.end(), result.begin());
    return result;
  }
};

at::ScalarType scalar_type(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  TORCH_CHECK(false, "sparse attention: a planned buffer has dtype ", name, "; expected float32, float16 or bfloat16");
}

// The output of a planned call, or None when it needs a backward program not planned yet.
std::optional<at::Tensor> attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const std::vector<at::Tensor>& extra, const Call& call) {
  const bool grad = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  if (!grad) {
    std::vector<at::Tensor> inputs{q, k, v};
    inputs.insert(inputs.end(), extra.begin(), extra.end());
    return call.forward->run(inputs)[0];
  }
  if (!call.backward) return std::nullopt;
  return PlannedAttention::apply(q, k, v, at::TensorList(extra), reinterpret_cast<int64_t>(&call));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<Program, std::shared_ptr<Program>>(m, "Program")
      .def(py::init([](const std::vector<std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::string, bool>>& buffers,
                       const std::vector<std::tuple<uint64_t, std::vector<unsigned>, unsigned, unsigned, py::bytes,
                                                    std::vector<int64_t>, std::vector<std::pair<int64_t, int64_t>>>>& kernels,
                       const std::vector<int64_t>& outputs) {
             auto program = std::make_shared<Program>();
             for (const auto& [size, stride, dtype, zero] : buffers)
               program->buffers.push_back({size, stride, scalar_type(dtype), zero});
             for (const auto& [function, grid, threads, shared, bytes, offsets, pointers] : kernels) {
               TORCH_CHECK(grid.size() == 3, "sparse attention: a planned grid needs 3 dimensions");
               Kernel kernel{function, {grid[0], grid[1], grid[2]}, threads, shared, std::string(bytes), offsets, pointers};
               for (const auto& [offset, slot] : pointers)
                 TORCH_CHECK(offset >= 0 && offset + 8 <= static_cast<int64_t>(kernel.bytes.size()) && slot >= 0,
                             "sparse attention: a planned pointer lies outside its parameters");
               program->kernels.push_back(std::move(kernel));
             }
             program->outputs = outputs;
             return program;
           }),
           py::arg("buffers"), py::arg("kernels"), py::arg("outputs"))
      .def("run", &Program::run, "Allocate the buffers and launch on the current stream; returns the outputs.");
  py::class_<Call, std::shared_ptr<Call>>(m, "Call")
      .def(py::init([](std::shared_ptr<Program> forward, std::shared_ptr<Program> backward, std::vector<int64_t> do_stride) {
             return std::make_shared<Call>(Call{std::move(forward), std::move(backward), std::move(do_stride)});
           }),
           py::arg("forward"), py::arg("backward") = nullptr, py::arg("do_stride") = std::vector<int64_t>{})
      .def_property_readonly("has_backward", [](const Call& call) { return static_cast<bool>(call.backward); });
  m.def("attention", &attention, "A planned call's output, with its autograd node when a gradient is needed.",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("extra"), py::arg("call"));
}
