// The batch layout writer: one packed row (see "Batch buffer" in docs/architecture.md).
#pragma once

#include <cstdint>

namespace warppack {

struct LayoutSequence {
  const int64_t* ids = nullptr;
  int64_t length = 0;
  const int64_t* labels = nullptr;  // nullptr: labels are the ids
  int64_t labels_length = 0;
};

struct LayoutOutput {
  int64_t* input_ids = nullptr;
  int64_t input_ids_size = 0;
  int64_t* labels = nullptr;
  int64_t labels_size = 0;
  int64_t* position_ids = nullptr;
  int64_t position_ids_size = 0;
  int32_t* seq_idx = nullptr;
  int64_t seq_idx_size = 0;
  int32_t* cu_seqlens = nullptr;
  int64_t cu_seqlens_size = 0;
};

// Writes n sequences then a padding segment up to total_tokens. Checks every size first (outputs
// must hold exactly total_tokens and num_cu entries); throws std::invalid_argument on any misuse
// and on negative token ids (the outputs are then partially written).
void write_layout(const LayoutSequence* sequences, int64_t n, int64_t total_tokens, int64_t num_cu,
                  int64_t pad_token_id, int64_t label_pad_id, const LayoutOutput& out);

}  // namespace warppack
