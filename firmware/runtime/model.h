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
  // The input is pulled from the host a few rows at a time while the model runs
  // (model_pull_input_rows) instead of arriving whole before it: INFER then carries no
  // payload, TRAIN and EVAL only the label, and model_input() is nullptr.
  bool input_pulled;
};

extern const ModelDesc kModel;

// Where the host's input bytes go (kModel.input.bytes long), and where the result appears after
// model_invoke() (kModel.output.bytes long). Both point into the static arena.
int8_t* model_input();
const int8_t* model_output();

// Runs one inference over the arena. Returns kOk, or the status of a failed input pull.
Status model_invoke();

// Provided by the runtime for models whose input is pulled (ModelDesc::input_pulled): asks the
// host for input rows [first_row, first_row + rows) of the current request and stores them at
// dst (rows * width * channels bytes). Returns kOk, or why they did not arrive (a refused or
// corrupt frame, a timeout); the generated code then stops and returns that status, so a
// failed pull changes nothing.
Status model_pull_input_rows(int8_t* dst, int32_t first_row, int32_t rows);

// ---- on-device training (docs/training.md); present in every build, enabled by a scheme ----

enum class LossKind : uint8_t { kNone = 0, kCrossEntropy = 1, kMeanSquaredError = 2 };

struct TrainDesc {
  bool enabled;           // false when the firmware was built without a training scheme
  LossKind loss;
  uint16_t num_classes;   // cross-entropy: labels must be < num_classes
  uint32_t label_bytes;   // 2 (uint16 class, little-endian) or 4 * outputs (float32 targets)
  float default_lr;
  uint32_t seed;          // PRNG seed for stochastic rounding, restored by model_train_reset()
  uint32_t state_bytes;   // size of the trainable-parameter block (model_train_state())
  uint64_t backward_macs;
};

extern const TrainDesc kTrain;

struct TrainResult {
  float loss;
  uint16_t prediction;  // argmax of the output (cross-entropy); 0 for regression
};

// One training step on the input already written to model_input(). `label` holds
// kTrain.label_bytes bytes. Checks the label first (kBadLabel / kNotFinite) and changes nothing
// when it is refused. With update == false it only evaluates (forward + loss).
Status model_train_step(const uint8_t* label, bool update, TrainResult* result);

// Trainable copies back to the flashed weights; PRNG and learning rate back to their defaults.
void model_train_reset();

// kNotFinite for NaN, infinity or a negative rate; the rate is unchanged then.
Status model_set_lr(float lr);
float model_lr();

// The trainable parameters as one block of kTrain.state_bytes bytes (layout in report.json).
const uint8_t* model_train_state();

// Board counter units (runtime/../bsp/board.h) each schedule step took in the last
// model_invoke(), one entry per step of report.json's "operators" (a row-streamed step sums its
// bands), when the model was generated with profiling (custom_profile = on); the count in
// *steps. Without profiling: nullptr and 0 steps.
const uint32_t* model_profile(uint32_t* steps);

}  // namespace mt
