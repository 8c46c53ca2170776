// pybind11 module mosa_kernels._C.
//
// torch is not needed to build this: tensors arrive as data pointers (tensor.data_ptr()),
// dtype codes and sizes, checked by mosa_kernels/cpu_kernels.py, which is the only caller.
// The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels.h"

namespace py = pybind11;
using std::int64_t;
using std::uintptr_t;

namespace {

template <typename T>
T* pointer(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

mosa::Dtype dtype_from(int code) {
  if (code < 0 || code > 3)
    throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  return static_cast<mosa::Dtype>(code);
}

void sample_update(uintptr_t logits, int logits_dtype, int64_t logits_stride,
                   uintptr_t logits_uncond, int logits_uncond_dtype, int64_t logits_uncond_stride,
                   int64_t rows, int64_t width,
                   double cfg_scale, int64_t col_offset, uintptr_t state, uintptr_t best_index,
                   double temperature, bool tempered_confidence, std::uint32_t seed,
                   uintptr_t suppress, int64_t num_suppress, uintptr_t exclude,
                   int64_t num_exclude, int threads) {
  const mosa::Matrix uncond_matrix{pointer<const void>(logits_uncond),
                                   dtype_from(logits_uncond_dtype), logits_uncond_stride};
  const mosa::SampleUpdateArgs args{
      {pointer<const void>(logits), dtype_from(logits_dtype), logits_stride},
      logits_uncond != 0 ? &uncond_matrix : nullptr,
      cfg_scale,
      rows,
      width,
      col_offset,
      pointer<float>(state),
      pointer<int64_t>(best_index),
      temperature,
      tempered_confidence,
      seed,
      {pointer<const int64_t>(suppress), num_suppress},
      {pointer<const int64_t>(exclude), num_exclude}};
  py::gil_scoped_release release;
  mosa::sample_update(args, threads);
}

void select_transfer(uintptr_t confidence, uintptr_t is_masked, int64_t rows, int64_t width,
                     int rule, uintptr_t k, double threshold_or_factor, uintptr_t take,
                     int threads) {
  if (rule < 0 || rule > 2)
    throw std::invalid_argument("unknown transfer rule " + std::to_string(rule));
  py::gil_scoped_release release;
  mosa::select_transfer(pointer<const float>(confidence), pointer<const std::uint8_t>(is_masked),
                        rows, width, static_cast<mosa::TransferRule>(rule),
                        pointer<const int64_t>(k), threshold_or_factor,
                        pointer<std::uint8_t>(take), threads);
}

void logprob_rows(uintptr_t logits, int logits_dtype, int64_t logits_stride, int64_t rows,
                  int64_t vocab,
                  uintptr_t targets, int64_t num_targets, double temperature,
                  int64_t ignore_index, uintptr_t grad, bool write_probs, uintptr_t logp,
                  uintptr_t lse, int threads) {
  // An out-of-range id would read outside the row: refuse it here rather than in the kernel.
  const int64_t* ids = pointer<const int64_t>(targets);
  for (int64_t i = 0; i < rows * num_targets; ++i)
    if (ids[i] != ignore_index && (ids[i] < 0 || ids[i] >= vocab))
      throw py::value_error("targets holds id " + std::to_string(ids[i]) + ", outside [0, " +
                            std::to_string(vocab) + ")");
  const mosa::LogprobArgs args{{pointer<void>(logits), dtype_from(logits_dtype), logits_stride},
                               rows,
                               vocab,
                               ids,
                               num_targets,
                               temperature,
                               ignore_index,
                               pointer<const float>(grad),
                               write_probs,
                               pointer<float>(logp),
                               pointer<float>(lse)};
  py::gil_scoped_release release;
  mosa::logprob_rows(args, threads);
}

void kl_rows(uintptr_t logits, int logits_dtype, int64_t logits_stride, uintptr_t ref_logits,
             int ref_logits_dtype, int64_t ref_logits_stride, int64_t rows, int64_t vocab,
             uintptr_t grad, uintptr_t kl, int threads) {
  const mosa::KlArgs args{{pointer<void>(logits), dtype_from(logits_dtype), logits_stride},
                          {pointer<const void>(ref_logits), dtype_from(ref_logits_dtype),
                           ref_logits_stride},
                          rows,
                          vocab,
                          pointer<const float>(grad),
                          pointer<float>(kl)};
  py::gil_scoped_release release;
  mosa::kl_rows(args, threads);
}

// A {name: number} dict: how the C++ enums number what mosa_kernels/interface.py names, so that
// tests/kernels/test_backend_contract.py can compare the two.
py::dict named_numbers(std::initializer_list<std::pair<const char*, int>> entries) {
  py::dict numbers;
  for (const auto& [name, number] : entries) numbers[name] = number;
  return numbers;
}

py::dict state_columns() {
  using namespace mosa;
  return named_numbers({{"M", kMax}, {"S", kSum}, {"E", kMoment}, {"TOP2", kTop2},
                        {"BEST", kBest}, {"BEST_C", kBestConf}, {"STATE_WIDTH", kStateWidth}});
}

py::dict transfer_rules() {
  using mosa::TransferRule;
  return named_numbers({{"TOP_K", int(TransferRule::top_k)},
                        {"THRESHOLD", int(TransferRule::threshold)},
                        {"FACTOR", int(TransferRule::factor)}});
}

py::dict dtype_codes() {
  using mosa::Dtype;
  return named_numbers({{"float32", int(Dtype::f32)}, {"float16", int(Dtype::f16)},
                        {"bfloat16", int(Dtype::bf16)}, {"float64", int(Dtype::f64)}});
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "C++ CPU kernels of mosa_kernels; call them through mosa_kernels.cpu_kernels.";
  m.def("sample_update", &sample_update, py::arg("logits"), py::arg("logits_dtype"),
        py::arg("logits_stride"), py::arg("logits_uncond"), py::arg("logits_uncond_dtype"),
        py::arg("logits_uncond_stride"), py::arg("rows"), py::arg("width"), py::arg("cfg_scale"),
        py::arg("col_offset"), py::arg("state"), py::arg("best_index"), py::arg("temperature"),
        py::arg("tempered_confidence"), py::arg("seed"), py::arg("suppress"),
        py::arg("num_suppress"), py::arg("exclude"), py::arg("num_exclude"), py::arg("threads"));
  m.def("select_transfer", &select_transfer, py::arg("confidence"), py::arg("is_masked"),
        py::arg("rows"), py::arg("width"), py::arg("rule"), py::arg("k"),
        py::arg("threshold_or_factor"), py::arg("take"), py::arg("threads"));
  m.def("logprob_rows", &logprob_rows, py::arg("logits"), py::arg("logits_dtype"),
        py::arg("logits_stride"), py::arg("rows"), py::arg("vocab"), py::arg("targets"), py::arg("num_targets"),
        py::arg("temperature"), py::arg("ignore_index"), py::arg("grad"),
        py::arg("write_probs"), py::arg("logp"), py::arg("lse"), py::arg("threads"));
  m.def("kl_rows", &kl_rows, py::arg("logits"), py::arg("logits_dtype"),
        py::arg("logits_stride"), py::arg("ref_logits"), py::arg("ref_logits_dtype"),
        py::arg("ref_logits_stride"), py::arg("rows"), py::arg("vocab"), py::arg("grad"),
        py::arg("kl"), py::arg("threads"));
  m.def("state_columns", &state_columns,
        "Sampling-state column numbers by their mosa_kernels.interface names.");
  m.def("transfer_rules", &transfer_rules,
        "select_transfer rule codes by their mosa_kernels.interface names.");
  m.def("dtype_codes", &dtype_codes, "Element-type codes by torch dtype name.");
}
