// Interface between the runtime and the model code that the compiler generates into the build
// directory (build/<env>/generated/model.cc). The runtime never sees layer structure: it writes
// the input tensor, calls model_invoke() and reads the output tensor.
#pragma once

#include <cstdint>

#include "status.h"

namespace mt {

enum class DType : uint8_t { kInt8 = 1, kInt32 = 2, kFloat32 = 3 };

constexpr int kMaxRank = 6;

struct TensorDesc {
  DType dtype;
  uint8_t rank;
  int32_t dims[kMaxRank];
  float scale;          // quantization scale (per tensor); 0 for unquantized tensors
  int32_t zero_point;
  uint32_t bytes;       // product of dims times the element size
};

struct ModelDesc {
  const char* name;           // file stem of the .tflite the firmware was built from
  uint8_t hash[32];           // SHA-256 of that .tflite file
  uint32_t arena_bytes;       // size of the static tensor arena
  uint32_t weight_bytes;      // bytes of constant weights placed in flash
  uint64_t macs;              // multiply-accumulates of one inference
  TensorDesc input;
  TensorDesc output;
};

extern const ModelDesc kModel;

// Where the host's input bytes go (kModel.input.bytes long), and where the result appears after
// model_invoke() (kModel.output.bytes long). Both point into the static arena.
int8_t* model_input();
const int8_t* model_output();

// Runs one inference over the arena. Returns kOk or kInternal.
Status model_invoke();

}  // namespace mt
