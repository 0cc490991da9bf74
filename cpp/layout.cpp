#include "warppack/layout.hpp"

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

#include "warppack/common.hpp"

namespace warppack {

using detail::fail;

namespace {

void check_size(const char* name, const void* data, int64_t size, int64_t expected) {
  if (size != expected)
    fail(std::string(name) + " has " + std::to_string(size) + " entries but the layout needs exactly " +
         std::to_string(expected));
  if (expected > 0 && data == nullptr) fail(std::string(name) + " must not be null");
}

// Copies (widening) and ORs in one pass: the sign bit of the result says whether any id was negative.
template <class T>
inline int64_t copy_ids(int64_t* __restrict dst, const T* __restrict src, int64_t n) {
  int64_t any = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t v = src[j];
    dst[j] = v;
    any |= v;
  }
  return any;
}

inline int64_t copy_ids(int64_t* dst, const void* src, int32_t itemsize, int64_t n) {
  return itemsize == 4 ? copy_ids(dst, static_cast<const int32_t*>(src), n)
                       : copy_ids(dst, static_cast<const int64_t*>(src), n);
}

inline int64_t id_at(const void* src, int32_t itemsize, int64_t j) {
  return itemsize == 4 ? static_cast<const int32_t*>(src)[j] : static_cast<const int64_t*>(src)[j];
}

inline void copy_labels(int64_t* __restrict dst, const void* src, int32_t itemsize, int64_t n) {
  if (itemsize == 8) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(int64_t));
    return;
  }
  const int32_t* __restrict from = static_cast<const int32_t*>(src);
  for (int64_t j = 0; j < n; ++j) dst[j] = from[j];
}

bool valid_itemsize(int32_t itemsize) { return itemsize == 4 || itemsize == 8; }

}  // namespace

void write_layout(const LayoutSequence* sequences, int64_t n, int64_t total_tokens, int64_t num_cu,
                  int64_t pad_token_id, int64_t label_pad_id, const LayoutOutput& out) {
  if (n < 0) fail("the number of sequences must be >= 0, got " + std::to_string(n));
  if (n > 0 && sequences == nullptr) fail("sequences must not be null");
  if (n >= INT32_MAX) fail("too many sequences for int32 seq_idx: " + std::to_string(n));
  if (total_tokens < 0) fail("total_tokens must be >= 0, got " + std::to_string(total_tokens));
  if (total_tokens > INT32_MAX)
    fail("total_tokens=" + std::to_string(total_tokens) +
         " exceeds the int32 range of cu_seqlens (2147483647); lower max_tokens");
  int64_t real = 0;
  for (int64_t i = 0; i < n; ++i) {
    const LayoutSequence& s = sequences[i];
    if (s.length < 0) fail("sequence " + std::to_string(i) + " has a negative length");
    if (s.length > 0 && s.ids == nullptr) fail("sequence " + std::to_string(i) + " has no ids");
    if (!valid_itemsize(s.ids_itemsize) || (s.labels != nullptr && !valid_itemsize(s.labels_itemsize)))
      fail("sequence " + std::to_string(i) + ": token arrays must hold 4- or 8-byte integers");
    if (s.labels != nullptr && s.labels_length != s.length)
      fail("sequence " + std::to_string(i) + " has " + std::to_string(s.length) + " input_ids but " +
           std::to_string(s.labels_length) + " labels; they must have the same length");
    real += s.length;
    if (real > total_tokens)
      fail("the sequences hold more than total_tokens=" + std::to_string(total_tokens) +
           " tokens (at sequence " + std::to_string(i) + ")");
  }
  const int64_t padding = total_tokens - real;
  const int64_t needed_cu = n + 1 + (padding > 0);
  if (num_cu < needed_cu)
    fail("num_cu=" + std::to_string(num_cu) + " is too small for " + std::to_string(n) + " sequences" +
         (padding > 0 ? std::string(" and a padding segment") : std::string()) + "; it must be >= " +
         std::to_string(needed_cu));
  if (padding > 0 && pad_token_id < 0)
    fail("pad_token_id=" + std::to_string(pad_token_id) + " is negative; token ids must be non-negative");
  check_size("input_ids", out.input_ids, out.input_ids_size, total_tokens);
  check_size("labels", out.labels, out.labels_size, total_tokens);
  check_size("position_ids", out.position_ids, out.position_ids_size, total_tokens);
  check_size("seq_idx", out.seq_idx, out.seq_idx_size, total_tokens);
  check_size("cu_seqlens", out.cu_seqlens, out.cu_seqlens_size, num_cu);

  int64_t at = 0;
  out.cu_seqlens[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const LayoutSequence& s = sequences[i];
    const int64_t len = s.length;
    if (copy_ids(out.input_ids + at, s.ids, s.ids_itemsize, len) < 0) {
      for (int64_t j = 0; j < len; ++j)
        if (id_at(s.ids, s.ids_itemsize, j) < 0)
          fail("sequence " + std::to_string(i) + " has token id " +
               std::to_string(id_at(s.ids, s.ids_itemsize, j)) + " at position " + std::to_string(j) +
               "; token ids must be non-negative");
    }
    if (s.labels != nullptr)
      copy_labels(out.labels + at, s.labels, s.labels_itemsize, len);
    else  // the ids were just written, widened: copy those
      std::memcpy(out.labels + at, out.input_ids + at, static_cast<size_t>(len) * sizeof(int64_t));
    if (len > 0) out.labels[at] = label_pad_id;
    int64_t* pos = out.position_ids + at;
    for (int64_t j = 0; j < len; ++j) pos[j] = j;
    std::fill(out.seq_idx + at, out.seq_idx + at + len, static_cast<int32_t>(i));
    at += len;
    out.cu_seqlens[i + 1] = static_cast<int32_t>(at);
  }
  int64_t pieces = 0;
  if (padding > 0) {
    std::fill(out.input_ids + at, out.input_ids + total_tokens, pad_token_id);
    std::fill(out.labels + at, out.labels + total_tokens, label_pad_id);
    std::fill(out.seq_idx + at, out.seq_idx + total_tokens, kPaddingSeqIdx);
    const int64_t spare = num_cu - 1 - n;  // >= 1, checked above
    pieces = std::min(spare, (padding + kMaxPaddingSegment - 1) / kMaxPaddingSegment);
    const int64_t base = padding / pieces, longer = padding % pieces;
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t len = base + (p < longer);
      int64_t* pos = out.position_ids + at;
      for (int64_t j = 0; j < len; ++j) pos[j] = j;
      at += len;
      out.cu_seqlens[n + 1 + p] = static_cast<int32_t>(at);
    }
  }
  std::fill(out.cu_seqlens + n + 1 + pieces, out.cu_seqlens + num_cu, static_cast<int32_t>(total_tokens));
}

void write_layout_buffer(const LayoutSequence* sequences, int64_t n, int64_t total_tokens, int64_t num_cu,
                         int64_t pad_token_id, int64_t label_pad_id, void* buffer, int64_t nbytes) {
  // Bounds first, so that the offsets below cannot overflow; write_layout checks the rest.
  if (total_tokens < 0 || total_tokens > INT32_MAX)
    fail("total_tokens=" + std::to_string(total_tokens) +
         " must be in 0..2147483647 (the int32 range of cu_seqlens); lower max_tokens");
  if (num_cu < 1 || num_cu > INT32_MAX) fail("num_cu must be in 1..2147483647, got " + std::to_string(num_cu));
  const int64_t t = total_tokens;
  const int64_t needed = 28 * t + 4 * num_cu;
  if (buffer == nullptr || nbytes < needed)
    fail("the buffer holds " + std::to_string(nbytes) + " bytes but the layout needs " + std::to_string(needed));
  if (reinterpret_cast<uintptr_t>(buffer) % alignof(int64_t) != 0) fail("the buffer must be 8-byte aligned");
  char* const base = static_cast<char*>(buffer);
  LayoutOutput out;
  out.input_ids = reinterpret_cast<int64_t*>(base);
  out.labels = reinterpret_cast<int64_t*>(base + 8 * t);
  out.position_ids = reinterpret_cast<int64_t*>(base + 16 * t);
  out.seq_idx = reinterpret_cast<int32_t*>(base + 24 * t);
  out.cu_seqlens = reinterpret_cast<int32_t*>(base + 28 * t);
  out.input_ids_size = out.labels_size = out.position_ids_size = out.seq_idx_size = t;
  out.cu_seqlens_size = num_cu;
  write_layout(sequences, n, total_tokens, num_cu, pad_token_id, label_pad_id, out);
}

}  // namespace warppack
