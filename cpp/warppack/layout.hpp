// The batch layout writer: one packed row (see "Batch buffer" in docs/architecture.md).
#pragma once

#include <cstdint>

namespace warppack {

// Token sources are read in place as int32 or int64 (Arrow columns are often int32): widening
// while copying costs nothing, converting first would cost an allocation and a pass per example.
struct LayoutSequence {
  const void* ids = nullptr;
  int64_t length = 0;
  const void* labels = nullptr;  // nullptr: labels are the ids
  int64_t labels_length = 0;
  int32_t ids_itemsize = 8;     // bytes per id: 4 (int32) or 8 (int64)
  int32_t labels_itemsize = 8;  // bytes per label: 4 or 8
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

// Longest padding segment the writer makes when num_cu leaves room for more than one: attention
// runs over padding like over a sequence (its cost grows with the square of a segment's length in
// the exact kernels, and its positions count up like a sequence's), so a static-shape batch that is
// mostly padding must not hold it as one budget-long segment.
constexpr int64_t kMaxPaddingSegment = 512;

// seq_idx of every padding token: no real sequence (real ones are 0 .. n-1).
constexpr int32_t kPaddingSeqIdx = -1;

// Writes n sequences then the padding up to total_tokens: as few segments of at most
// kMaxPaddingSegment tokens as the spare cu_seqlens entries allow, lengths as even as possible
// (one segment when num_cu has room for only one), positions restarting in each, seq_idx
// kPaddingSeqIdx, labels label_pad_id. Checks every size
// first (outputs must hold exactly total_tokens and num_cu entries, itemsizes 4 or 8); throws
// std::invalid_argument on any misuse and on negative token ids (the outputs are then partially
// written).
void write_layout(const LayoutSequence* sequences, int64_t n, int64_t total_tokens, int64_t num_cu,
                  int64_t pad_token_id, int64_t label_pad_id, const LayoutOutput& out);

// The same row inside one byte buffer, at the offsets of docs/architecture.md ("Batch buffer",
// mirrored by warppack.batch.packed.BufferLayout): input_ids, labels, position_ids as int64[total_tokens],
// then seq_idx int32[total_tokens], then cu_seqlens int32[num_cu]. The buffer must be 8-byte
// aligned and hold at least that many bytes.
void write_layout_buffer(const LayoutSequence* sequences, int64_t n, int64_t total_tokens, int64_t num_cu,
                         int64_t pad_token_id, int64_t label_pad_id, void* buffer, int64_t nbytes);

}  // namespace warppack
