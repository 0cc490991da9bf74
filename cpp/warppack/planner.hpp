// Offline planning: lengths in, bins of (example, token range) pieces out.
#pragma once

#include <cstdint>

namespace warppack {

enum Strategy : int { kBestFitDecreasing = 0, kFirstFitDecreasing = 1, kOnline = 2 };
enum Overlong : int { kOverlongError = 0, kOverlongTruncate = 1, kOverlongSplit = 2 };

struct PlanOptions {
  int64_t max_tokens = 0;        // bin capacity, 1 .. 2^31-1
  int strategy = kBestFitDecreasing;
  int64_t max_seqs_per_bin = 0;  // 0: unlimited
  int overlong = kOverlongError;
  int64_t buffer_size = 1;       // look-ahead window of the online strategy
  bool shuffle = false;          // permute the order of the bins (not their contents)
  uint64_t seed = 0;
};

// Validates lengths against the options and returns the number of pieces m of the plan (one per
// example, or ceil(length / max_tokens) per overlong example under overlong=split). Throws
// std::invalid_argument naming the offending example.
int64_t count_pieces(const int32_t* lengths, int64_t n, const PlanOptions& options);
int64_t count_pieces(const int64_t* lengths, int64_t n, const PlanOptions& options);

// Plans into caller-provided arrays: items, starts and sizes hold `pieces` entries (the value
// count_pieces returned), bin_offsets holds pieces + 1. Returns the number of bins B; bin b is
// pieces [bin_offsets[b], bin_offsets[b + 1]) and bin_offsets[0..B] are the only entries written.
// count_pieces and plan_lengths read the lengths several times: they must not change from the
// count to the end of the plan (the Python boundary plans a private copy).
int64_t plan_lengths(const int32_t* lengths, int64_t n, const PlanOptions& options, int64_t pieces,
                     int64_t* items, int64_t* starts, int64_t* sizes, int64_t* bin_offsets);
int64_t plan_lengths(const int64_t* lengths, int64_t n, const PlanOptions& options, int64_t pieces,
                     int64_t* items, int64_t* starts, int64_t* sizes, int64_t* bin_offsets);

// The plan when every example fits whole (1 <= length <= max_tokens), for bfd and ffd: the same
// bins as plan_lengths with 12 bytes of memory per example (the 8-byte output included) and 16 per
// bin. items holds n entries; on success *bin_offsets is a new array of *num_bins + 1 entries that
// the caller releases with free_plan_buffer, and *num_tokens the sum of the lengths. Returns false
// without a plan when some example is longer than max_tokens under truncate or split (use
// plan_lengths); throws std::invalid_argument like plan_lengths otherwise. Reads each length exactly
// once, so another thread writing them meanwhile gives the plan of the values read, never a bad one.
bool plan_whole(const int32_t* lengths, int64_t n, const PlanOptions& options, int64_t* items,
                int64_t** bin_offsets, int64_t* num_bins, int64_t* num_tokens);
bool plan_whole(const int64_t* lengths, int64_t n, const PlanOptions& options, int64_t* items,
                int64_t** bin_offsets, int64_t* num_bins, int64_t* num_tokens);
void free_plan_buffer(int64_t* buffer);

}  // namespace warppack
