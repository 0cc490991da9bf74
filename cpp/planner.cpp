// Offline planning: best-fit decreasing, first-fit decreasing and the online packer over a list.
//
// Every example becomes `full` pieces of exactly max_tokens tokens (overlong examples) and at most
// one remainder piece of 1 .. max_tokens-1 tokens. A full piece fills a bin alone and sorts first
// in any decreasing order, so the full bins are simply bins 0 .. F-1 in example order and only the
// remainders go through the packing structures.

#include "warppack/planner.hpp"

#include <algorithm>
#include <climits>
#include <limits>
#include <set>
#include <tuple>
#include <vector>

#include "warppack/common.hpp"
#include "warppack/fit.hpp"
#include "warppack/online.hpp"

namespace warppack {
namespace {

using detail::check_options;
using detail::count_impl;
using detail::fail;
using detail::fail_length;
using detail::fail_split;
using detail::kDenseCapacityLimit;
using detail::kMaxPieces;
using detail::Shape;

// A bin: `link` chains open bins of equal room (best fit) and `tail` is its newest piece. Full bins
// (one piece of max_tokens tokens) come first and store the chunk index in link and ~example in tail.
struct Bin {
  int32_t link;
  int32_t tail;
};
// Bins in creation order; each remainder opens at most one, so the capacity is known up front.
struct BinList {
  detail::Scratch<Bin> store;
  size_t size = 0;
  Bin& operator[](size_t b) { return store[b]; }
  int32_t open() {
    store[size] = Bin{-1, -1};
    return static_cast<int32_t>(size++);
  }
};


// Two int32 in one int64 slot of the output arrays, which double as the planner's scratch space.
inline int64_t pack(int32_t low, int32_t high) {
  return static_cast<int64_t>((static_cast<uint64_t>(static_cast<uint32_t>(high)) << 32) | static_cast<uint32_t>(low));
}
inline int32_t low_half(int64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v)); }
inline int32_t high_half(int64_t v) { return static_cast<int32_t>(static_cast<uint64_t>(v) >> 32); }

// Common last phases. On entry the pieces are parked in bin creation order in sizes[], as
// (example, size) or (example, ~chunk) for a full piece, and bin b is sizes[link, link + tail).
//   shuffle: whole bins moved to their shuffled place (items, and the parked piece in starts)
//   unpack:  the parked pieces become (items, starts, sizes), sequentially
template <class T>
int64_t finish(const T* lengths, const PlanOptions& o, BinList& bins, int64_t pieces, int64_t* items,
               int64_t* starts, int64_t* sizes, int64_t* offsets) {
  const int64_t cap = o.max_tokens;
  const bool split = o.overlong == kOverlongSplit;
  const int64_t count = static_cast<int64_t>(bins.size);
  const int64_t* parked = sizes;
  if (o.shuffle) {
    // A walk in shuffled order would miss the cache on every piece; moving whole parked bins
    // misses about once per bin, and prefetching hides most of that.
    int64_t* const order = offsets;  // order[k] = the bin to write k-th, read just before offsets[k] is set
    detail::random_permutation(order, count, o.seed);
    constexpr int64_t kAhead = 16;
    for (int64_t k = 0, to = 0; k < count; ++k) {
      if (k + 2 * kAhead < count) detail::prefetch(&bins[static_cast<size_t>(order[k + 2 * kAhead])]);
      if (k + kAhead < count) detail::prefetch(sizes + bins[static_cast<size_t>(order[k + kAhead])].link);
      const Bin& bin = bins[static_cast<size_t>(order[k])];
      offsets[k] = to;
      for (int32_t j = 0; j < bin.tail; ++j, ++to) starts[to] = sizes[bin.link + j];
    }
    parked = starts;
  } else {
    for (int64_t b = 0; b < count; ++b) offsets[b] = bins[static_cast<size_t>(b)].link;
  }
  offsets[count] = pieces;
  for (int64_t p = 0; p < pieces; ++p) {
    const int64_t v = parked[p];
    const int32_t item = low_half(v), field = high_half(v);
    items[p] = item;
    if (field < 0) {
      starts[p] = int64_t{~field} * cap;
      sizes[p] = cap;
    } else {
      starts[p] = split ? int64_t{lengths[item]} - field : 0;
      sizes[p] = field;
    }
  }
  return count;
}

// Best-/first-fit decreasing. Apart from O(max_tokens) for the capacity index and 8 bytes per bin,
// all working state lives in the output arrays, which must be written anyway: fresh memory costs a
// page fault per 4 KiB, more than the packing itself at 16M sequences. Phases:
//   sort:    sizes[s]  = (example, size) of remainder piece s, by decreasing size then index
//   assign:  items[s]  = (example, previous piece of the same bin), starts[s] = size; a bin is a
//            backward list from its tail
//   walk:    bins from last to first, parked from the end: sizes[at] = (example, size or ~chunk)
//   then finish() (shuffle, unpack)
template <class T>
int64_t plan_decreasing(const T* lengths, int64_t n, const PlanOptions& o, int64_t pieces,
                        int64_t* items, int64_t* starts, int64_t* sizes, int64_t* offsets) {
  const int64_t cap = o.max_tokens;
  const bool split = o.overlong == kOverlongSplit;
  const bool dense = cap <= kDenseCapacityLimit && cap <= std::max<int64_t>(int64_t{1} << 16, 4 * n);
  const Shape shape{cap, split};

  // One pass: validate, count, histogram the remainders (dense) and note the examples >= cap.
  std::vector<int32_t> group(dense ? static_cast<size_t>(cap) : 0, 0);
  std::vector<int32_t> long_items;
  int64_t full_bins = 0, remainders = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t length = lengths[i];
    int64_t rem = length;
    if (length < 1 || length >= cap) {
      if (length < 1 || (length > cap && o.overlong == kOverlongError)) fail_length(i, length, cap);
      const int64_t full = shape.full(length);
      if (full > kMaxPieces - full_bins) fail_split(i, length, cap);
      full_bins += full;
      long_items.push_back(static_cast<int32_t>(i));
      rem = shape.rem(length);
      if (rem == 0) continue;
    }
    ++remainders;
    if (dense) ++group[static_cast<size_t>(rem)];
  }
  if (full_bins + remainders != pieces)
    fail("output arrays hold " + std::to_string(pieces) + " pieces but the plan has " +
         std::to_string(full_bins + remainders) + " (call count_pieces with the same lengths and options)");

  BinList bins{detail::Scratch<Bin>(static_cast<size_t>(pieces))};
  for (const int32_t i : long_items) {
    const int64_t full = shape.full(lengths[i]);
    for (int64_t j = 0; j < full; ++j) bins[bins.size++] = Bin{static_cast<int32_t>(j), ~i};
  }
  std::vector<int32_t>().swap(long_items);

  // sort
  if (dense) {
    int32_t at = 0;
    for (int64_t r = cap - 1; r >= 1; --r) {
      const int32_t count = group[r];
      group[r] = at;
      at += count;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = shape.rem(lengths[i]);
      if (r != 0) sizes[group[r]++] = pack(static_cast<int32_t>(i), static_cast<int32_t>(r));
    }
    std::vector<int32_t>().swap(group);
  } else {
    int64_t at = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = shape.rem(lengths[i]);
      if (r != 0) sizes[at++] = pack(static_cast<int32_t>(i), static_cast<int32_t>(r));
    }
    std::stable_sort(sizes, sizes + remainders, [](int64_t x, int64_t y) { return high_half(x) > high_half(y); });
  }

  // assign
  // Placers number the bins of remainders from 0; the full bins come before them.
  auto assign = [&](auto&& packer) {
    for (int64_t s = 0; s < remainders; ++s) {
      const int64_t piece = sizes[s];
      const size_t local = static_cast<size_t>(packer.place(high_half(piece)));
      if (local + full_bins == bins.size) bins.open();
      Bin& bin = bins[local + full_bins];
      items[s] = pack(low_half(piece), bin.tail);
      starts[s] = high_half(piece);
      bin.tail = static_cast<int32_t>(s);
    }
  };
  const int64_t expected_bins = remainders / 4;
  if (o.strategy == kFirstFitDecreasing)
    assign(detail::FirstFit(cap, o.max_seqs_per_bin, expected_bins));
  else if (dense)
    assign(detail::BestFitDense(cap, o.max_seqs_per_bin, expected_bins));
  else
    assign(detail::BestFitSparse(cap, o.max_seqs_per_bin, expected_bins));
  const int64_t count = static_cast<int64_t>(bins.size);

  // walk: creation order keeps it cache-local (bins opened together are filled together)
  int64_t at = pieces;
  for (int64_t b = count - 1; b >= 0; --b) {
    Bin& bin = bins[static_cast<size_t>(b)];
    const int64_t end = at;
    if (b < full_bins) {
      sizes[--at] = pack(~bin.tail, ~bin.link);
    } else {
      for (int32_t s = bin.tail; s >= 0;) {
        const int64_t link = items[s];
        sizes[--at] = pack(low_half(link), static_cast<int32_t>(starts[s]));
        s = high_half(link);
      }
    }
    bin.link = static_cast<int32_t>(at);
    bin.tail = static_cast<int32_t>(end - at);
  }
  if (at != 0) fail("internal error: the plan lost pieces");
  return finish(lengths, o, bins, pieces, items, starts, sizes, offsets);
}

// The online packer over the examples in index order (chunks of an overlong example in order).
template <class T>
int64_t plan_online(const T* lengths, int64_t n, const PlanOptions& o, int64_t pieces, int64_t* items,
                    int64_t* starts, int64_t* sizes, int64_t* offsets) {
  const int64_t cap = o.max_tokens;
  const Shape shape{cap, o.overlong == kOverlongSplit};
  OnlinePacker packer(cap, o.max_seqs_per_bin, o.buffer_size);
  BinList bins{detail::Scratch<Bin>(static_cast<size_t>(pieces))};
  int64_t at = 0;
  int64_t chunk = 0;  // the chunk being pushed: a full piece is emitted by the very push that takes it
  auto drain = [&] {
    const auto& keys = packer.out_keys();
    const auto& lens = packer.out_lengths();
    int64_t begin = 0;
    for (const int64_t end : packer.out_ends()) {
      if (end - begin > pieces - at) fail("internal error: the online plan has too many pieces");
      Bin& bin = bins[static_cast<size_t>(bins.open())];
      bin.link = static_cast<int32_t>(at);
      bin.tail = static_cast<int32_t>(end - begin);
      for (int64_t k = begin; k < end; ++k) {
        const int32_t item = static_cast<int32_t>(keys[k]);
        sizes[at++] = pack(item, lens[k] == cap ? ~static_cast<int32_t>(chunk) : static_cast<int32_t>(lens[k]));
      }
      begin = end;
    }
    packer.clear_output();
  };
  for (int64_t i = 0; i < n; ++i) {
    const int64_t full = shape.full(lengths[i]);
    for (chunk = 0; chunk < full; ++chunk) {
      packer.push(i, cap);
      drain();
    }
    const int64_t rem = shape.rem(lengths[i]);
    if (rem != 0) {
      packer.push(i, rem);
      drain();
    }
  }
  packer.flush();
  drain();
  if (at != pieces) fail("internal error: the online plan lost pieces");
  return finish(lengths, o, bins, pieces, items, starts, sizes, offsets);
}

template <class T>
int64_t plan_impl(const T* lengths, int64_t n, const PlanOptions& o, int64_t pieces, int64_t* items,
                  int64_t* starts, int64_t* sizes, int64_t* offsets) {
  check_options(o);
  if (n < 0 || n > kMaxPieces) fail("the number of lengths must be in 0..2147483646, got " + std::to_string(n));
  if (pieces > 0 && (items == nullptr || starts == nullptr || sizes == nullptr))
    fail("output arrays must not be null");
  if (offsets == nullptr) fail("bin_offsets must not be null");
  if (o.strategy != kOnline) return plan_decreasing(lengths, n, o, pieces, items, starts, sizes, offsets);
  const int64_t expected = count_impl(lengths, n, o);
  if (pieces != expected)
    fail("output arrays hold " + std::to_string(pieces) + " pieces but the plan has " +
         std::to_string(expected) + " (call count_pieces with the same lengths and options)");
  return plan_online(lengths, n, o, pieces, items, starts, sizes, offsets);
}

}  // namespace

int64_t count_pieces(const int32_t* lengths, int64_t n, const PlanOptions& options) {
  return count_impl(lengths, n, options);
}
int64_t count_pieces(const int64_t* lengths, int64_t n, const PlanOptions& options) {
  return count_impl(lengths, n, options);
}

int64_t plan_lengths(const int32_t* lengths, int64_t n, const PlanOptions& options, int64_t pieces,
                     int64_t* items, int64_t* starts, int64_t* sizes, int64_t* bin_offsets) {
  return plan_impl(lengths, n, options, pieces, items, starts, sizes, bin_offsets);
}
int64_t plan_lengths(const int64_t* lengths, int64_t n, const PlanOptions& options, int64_t pieces,
                     int64_t* items, int64_t* starts, int64_t* sizes, int64_t* bin_offsets) {
  return plan_impl(lengths, n, options, pieces, items, starts, sizes, bin_offsets);
}

}  // namespace warppack
