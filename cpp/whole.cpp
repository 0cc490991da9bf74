// Best-/first-fit decreasing when every example fits whole (the default overlong="error" case, and
// truncate/split plans that truncate or split nothing): the plan is one index per example plus bin
// offsets, so it can be built in 12 bytes per example (the 8-byte output included) plus 16 per bin.
//
//   validate: lengths in 1..max_tokens, histogram by length (dense) and the token total; each length
//             is read here once and kept as int32 in length_of (see below)
//   sort:     order[s] = the s-th example by decreasing length, then index   (int32, in items)
//   assign:   bin_of[s] = the bin the placer chose for it                     (int32, in items)
//   offsets:  from the per-bin counts, in a fresh buffer of exactly bins + 1 entries
//   scatter:  grouped[...] = order[s], bin by bin, in placement order         (int32 scratch)
//   widen:    items[k] = grouped[k] (or whole bins in shuffled order)
// The first half of items holds order and the second half bin_of: both are dead before items is
// written as int64, so the 8-byte output doubles as 8 bytes of scratch.
//
// The caller's lengths are read exactly once, in validate: the boundary releases the GIL, so another
// thread may write them meanwhile, and a second read that disagreed with the histogram would index
// out of bounds or lose an example. Later phases read that copy, length_of: when dense, bin_of's
// half of items (the sort reads it before assign writes bin_of: no extra memory); otherwise the
// scatter scratch, allocated before assign instead of after it (assign reads lengths by example
// while bin_of fills).

#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "warppack/common.hpp"
#include "warppack/fit.hpp"
#include "warppack/planner.hpp"

namespace warppack {
namespace {

using detail::fail;

// items is written as int32 and then as int64: keep the compiler from moving one across the other.
inline void memory_barrier() {
#if defined(__GNUC__) || defined(__clang__)
  asm volatile("" ::: "memory");
#endif
}

template <class Placer, class Next>
std::vector<int32_t> assign(Placer&& placer, int64_t n, int32_t* bin_of, Next&& next_length) {
  for (int64_t s = 0; s < n; ++s) bin_of[s] = placer.place(next_length(s));
  return std::move(placer.counts());
}

template <class T>
bool plan_whole_impl(const T* lengths, int64_t n, const PlanOptions& o, int64_t* items, int64_t** offsets_out,
                     int64_t* num_bins, int64_t* num_tokens) {
  detail::check_options(o);
  if (o.strategy == kOnline) fail("plan_whole plans strategy 0 (bfd) or 1 (ffd), not online");
  if (n < 0 || n > detail::kMaxPieces)
    fail("the number of lengths must be in 0..2147483646, got " + std::to_string(n));
  if (n > 0 && (lengths == nullptr || items == nullptr)) fail("lengths and items must not be null");
  if (offsets_out == nullptr || num_bins == nullptr || num_tokens == nullptr) fail("outputs must not be null");
  *offsets_out = nullptr;
  const int64_t cap = o.max_tokens;
  const bool dense = cap <= detail::kDenseCapacityLimit && cap <= std::max<int64_t>(int64_t{1} << 16, 4 * n);

  int32_t* const order = reinterpret_cast<int32_t*>(items);
  int32_t* const bin_of = order + n;
  detail::Scratch<int32_t> grouped(dense ? 0 : static_cast<size_t>(n));
  int32_t* const length_of = dense ? bin_of : grouped.data();

  // validate
  std::vector<int32_t> group(dense ? static_cast<size_t>(cap + 1) : 0, 0);
  int64_t tokens = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t length = lengths[i];
    if (length < 1 || length > cap) {
      if (length < 1 || o.overlong == kOverlongError) detail::fail_length(i, length, cap);
      return false;  // a piece that is not a whole example: the general planner's job
    }
    length_of[i] = static_cast<int32_t>(length);  // cap < 2^31
    tokens += length;
    if (dense) ++group[static_cast<size_t>(length)];
  }

  // sort
  if (dense) {
    int32_t at = 0;
    for (int64_t r = cap; r >= 1; --r) {
      const int32_t count = group[static_cast<size_t>(r)];
      group[static_cast<size_t>(r)] = at;
      at += count;
    }
    for (int64_t i = 0; i < n; ++i) order[group[static_cast<size_t>(length_of[i])]++] = static_cast<int32_t>(i);
  } else {
    for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
    std::stable_sort(order, order + n, [length_of](int32_t a, int32_t b) { return length_of[a] > length_of[b]; });
  }

  // assign: lengths come from the histogram (group[r] now ends the run of length r), so the
  // placement loop reads no length array at random
  const int64_t expected_bins = tokens / cap + tokens / cap / 16 + 16;
  int64_t r = cap;
  auto next_dense = [&](int64_t s) {
    while (s >= group[static_cast<size_t>(r)]) --r;
    return r;
  };
  auto next_sparse = [&](int64_t s) { return static_cast<int64_t>(length_of[order[s]]); };
  std::vector<int32_t> counts;
  if (o.strategy == kFirstFitDecreasing && dense)
    counts = assign(detail::FirstFit(cap, o.max_seqs_per_bin, expected_bins), n, bin_of, next_dense);
  else if (o.strategy == kFirstFitDecreasing)
    counts = assign(detail::FirstFit(cap, o.max_seqs_per_bin, expected_bins), n, bin_of, next_sparse);
  else if (dense)
    counts = assign(detail::BestFitDense(cap, o.max_seqs_per_bin, expected_bins), n, bin_of, next_dense);
  else
    counts = assign(detail::BestFitSparse(cap, o.max_seqs_per_bin, expected_bins), n, bin_of, next_sparse);
  std::vector<int32_t>().swap(group);
  const int64_t bins = static_cast<int64_t>(counts.size());

  // offsets; counts become each bin's write cursor
  int64_t* const offsets = static_cast<int64_t*>(std::malloc(static_cast<size_t>(bins + 1) * sizeof(int64_t)));
  if (offsets == nullptr) throw std::bad_alloc();
  offsets[0] = 0;
  for (int64_t b = 0; b < bins; ++b) {
    offsets[b + 1] = offsets[b] + counts[static_cast<size_t>(b)];
    counts[static_cast<size_t>(b)] = static_cast<int32_t>(offsets[b]);
  }
  try {
    if (offsets[bins] != n) fail("internal error: the plan lost examples");
    // scatter
    if (dense) grouped = detail::Scratch<int32_t>(static_cast<size_t>(n));
    for (int64_t s = 0; s < n; ++s) grouped[static_cast<size_t>(counts[static_cast<size_t>(bin_of[s])]++)] = order[s];
    memory_barrier();
    // widen
    if (o.shuffle) {
      std::vector<int32_t> perm(static_cast<size_t>(bins));
      detail::random_permutation(perm.data(), bins, o.seed);
      int64_t to = 0;
      for (int64_t k = 0; k < bins; ++k) {
        const int32_t b = perm[static_cast<size_t>(k)];
        counts[static_cast<size_t>(k)] = static_cast<int32_t>(to);
        for (int64_t p = offsets[b]; p < offsets[b + 1]; ++p) items[to++] = grouped[static_cast<size_t>(p)];
      }
      for (int64_t k = 0; k < bins; ++k) offsets[k] = counts[static_cast<size_t>(k)];
    } else {
      for (int64_t k = 0; k < n; ++k) items[k] = grouped[static_cast<size_t>(k)];
    }
  } catch (...) {
    std::free(offsets);
    throw;
  }
  *offsets_out = offsets;
  *num_bins = bins;
  *num_tokens = tokens;
  return true;
}

}  // namespace

bool plan_whole(const int32_t* lengths, int64_t n, const PlanOptions& options, int64_t* items,
                int64_t** bin_offsets, int64_t* num_bins, int64_t* num_tokens) {
  return plan_whole_impl(lengths, n, options, items, bin_offsets, num_bins, num_tokens);
}
bool plan_whole(const int64_t* lengths, int64_t n, const PlanOptions& options, int64_t* items,
                int64_t** bin_offsets, int64_t* num_bins, int64_t* num_tokens) {
  return plan_whole_impl(lengths, n, options, items, bin_offsets, num_bins, num_tokens);
}
void free_plan_buffer(int64_t* buffer) { std::free(buffer); }

}  // namespace warppack
