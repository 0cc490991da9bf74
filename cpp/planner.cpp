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
#include "warppack/online.hpp"

namespace warppack {
namespace {

using detail::fail;

// Piece and bin ids are int32 in the scratch arrays.
constexpr int64_t kMaxPieces = INT32_MAX - 1;
// Capacity-indexed structures (counting sort, per-capacity lists) cost O(max_tokens) memory; above
// this size, or when max_tokens dwarfs the number of examples, the comparison-based path is used.
constexpr int64_t kDenseCapacityLimit = int64_t{1} << 22;

void check_options(const PlanOptions& o) {
  if (o.max_tokens <= 0)
    fail("max_tokens must be a positive number of tokens, got " + std::to_string(o.max_tokens));
  if (o.max_tokens > INT32_MAX)
    fail("max_tokens=" + std::to_string(o.max_tokens) +
         " exceeds 2147483647, the int32 range of cu_seqlens; lower max_tokens");
  if (o.strategy < kBestFitDecreasing || o.strategy > kOnline)
    fail("strategy must be 0 (bfd), 1 (ffd) or 2 (online), got " + std::to_string(o.strategy));
  if (o.overlong < kOverlongError || o.overlong > kOverlongSplit)
    fail("overlong must be 0 (error), 1 (truncate) or 2 (split), got " + std::to_string(o.overlong));
  if (o.max_seqs_per_bin < 0)
    fail("max_seqs_per_bin must be >= 0 (0 means unlimited), got " +
         std::to_string(o.max_seqs_per_bin));
  if (o.strategy == kOnline && o.buffer_size < 1)
    fail("buffer_size must be >= 1, got " + std::to_string(o.buffer_size));
}

[[noreturn]] void fail_length(int64_t index, int64_t length, int64_t max_tokens) {
  if (length == 0)
    fail("example " + std::to_string(index) +
         " has length 0; empty examples must be filtered out before packing (or skipped by the "
         "caller)");
  if (length < 0)
    fail("example " + std::to_string(index) + " has a negative length (" + std::to_string(length) +
         "); lengths must be token counts >= 1");
  fail("example " + std::to_string(index) + " has " + std::to_string(length) +
       " tokens, more than max_tokens=" + std::to_string(max_tokens) +
       "; drop it, raise max_tokens, or pass overlong='truncate' or overlong='split'");
}

[[noreturn]] void fail_split(int64_t index, int64_t length, int64_t max_tokens) {
  fail("splitting example " + std::to_string(index) + " (" + std::to_string(length) +
       " tokens) brings the plan past 2147483646 pieces; raise max_tokens=" + std::to_string(max_tokens));
}

template <class T>
int64_t count_impl(const T* lengths, int64_t n, const PlanOptions& o) {
  check_options(o);
  if (n < 0) fail("the number of lengths must be >= 0, got " + std::to_string(n));
  if (n > kMaxPieces) fail("at most 2147483646 examples can be planned at once, got " + std::to_string(n));
  const int64_t cap = o.max_tokens;
  int64_t pieces = n;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t length = lengths[i];
    if (length >= 1 && length <= cap) continue;
    if (length < 1 || o.overlong == kOverlongError) fail_length(i, length, cap);
    if (o.overlong == kOverlongSplit) {
      const int64_t extra = length / cap + (length % cap != 0) - 1;
      if (extra > kMaxPieces - pieces) fail_split(i, length, cap);
      pieces += extra;
    }
  }
  return pieces;
}

// Per-example decomposition: `full` pieces of cap tokens, then a remainder of rem tokens (0: none).
struct Shape {
  int64_t cap;
  bool split;
  int64_t full(int64_t length) const { return length < cap ? 0 : (split ? length / cap : 1); }
  int64_t rem(int64_t length) const { return length < cap ? length : (split ? length % cap : 0); }
};

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

// Best fit over per-capacity LIFO lists and a successor bitset: the open bin with the smallest
// remaining capacity >= length, ties to the bin that most recently reached that capacity.
class BestFitDense {
 public:
  BestFitDense(int64_t cap, int64_t max_seqs, BinList& bins)
      : cap_(cap), max_seqs_(max_seqs), bins_(bins), open_(cap + 1), head_(static_cast<size_t>(cap + 1), -1) {}

  int32_t place(int64_t length) {
    int64_t room = open_.next(length);
    int32_t bin;
    if (room < 0) {
      bin = bins_.open();
      if (max_seqs_) count_.push_back(0);
      room = cap_;
    } else {
      bin = head_[room];
      head_[room] = bins_[bin].link;
      if (head_[room] < 0)
        open_.erase(room);
      else
        detail::prefetch(&bins_[head_[room]]);  // the next bin this room will hand out
    }
    if (max_seqs_ && ++count_[bin - first_] >= max_seqs_) return bin;
    const int64_t left = room - length;
    if (left > 0) {
      if (head_[left] < 0) open_.insert(left);
      bins_[bin].link = head_[left];
      head_[left] = bin;
    }
    return bin;
  }

 private:
  int64_t cap_, max_seqs_;
  BinList& bins_;
  size_t first_ = bins_.size;
  detail::SuccessorSet open_;
  std::vector<int32_t> head_, count_;
};

// The same rule (including ties) over an ordered set, for capacities too large to index densely.
class BestFitSparse {
 public:
  BestFitSparse(int64_t cap, int64_t max_seqs, BinList& bins) : cap_(cap), max_seqs_(max_seqs), bins_(bins) {}

  int32_t place(int64_t length) {
    auto it = open_.lower_bound(Key{length, INT64_MIN, INT32_MIN});
    int64_t room;
    int32_t bin;
    if (it == open_.end()) {
      bin = bins_.open();
      if (max_seqs_) count_.push_back(0);
      room = cap_;
    } else {
      room = std::get<0>(*it);
      bin = std::get<2>(*it);
      open_.erase(it);
    }
    if (max_seqs_ && ++count_[bin - first_] >= max_seqs_) return bin;
    if (room - length > 0) open_.insert(Key{room - length, -(++stamp_), bin});
    return bin;
  }

 private:
  using Key = std::tuple<int64_t, int64_t, int32_t>;  // (room, -stamp, bin)
  int64_t cap_, max_seqs_, stamp_ = 0;
  BinList& bins_;
  size_t first_ = bins_.size;
  std::set<Key> open_;
  std::vector<int32_t> count_;
};

// First fit: a max segment tree over bins (remaining room; 0 once full or closed), leftmost fit.
class FirstFit {
 public:
  FirstFit(int64_t cap, int64_t max_seqs, BinList& bins)
      : cap_(static_cast<int32_t>(cap)), max_seqs_(max_seqs), bins_(bins) {
    resize(1024);
  }

  int32_t place(int64_t length) {
    if (tree_[1] < length) {
      if (opened_ == leaves_) resize(leaves_ * 2);
      bins_.open();
      if (max_seqs_) count_.push_back(0);
      set(opened_++, cap_);
    }
    size_t node = 1;
    while (node < leaves_) node = tree_[2 * node] >= length ? 2 * node : 2 * node + 1;
    const size_t local = node - leaves_;
    int32_t room = tree_[node] - static_cast<int32_t>(length);
    if (max_seqs_ && ++count_[local] >= max_seqs_) room = 0;
    set(local, room);
    return static_cast<int32_t>(first_ + local);
  }

 private:
  void set(size_t local, int32_t room) {
    size_t node = local + leaves_;
    tree_[node] = room;
    for (node >>= 1; node >= 1; node >>= 1) tree_[node] = std::max(tree_[2 * node], tree_[2 * node + 1]);
  }
  void resize(size_t leaves) {
    std::vector<int32_t> tree(2 * leaves, 0);
    for (size_t b = 0; b < opened_; ++b) tree[leaves + b] = tree_[leaves_ + b];
    for (size_t node = leaves - 1; node >= 1; --node) tree[node] = std::max(tree[2 * node], tree[2 * node + 1]);
    tree_.swap(tree);
    leaves_ = leaves;
  }

  int32_t cap_;
  int64_t max_seqs_;
  BinList& bins_;
  size_t first_ = bins_.size;
  size_t leaves_ = 0, opened_ = 0;
  std::vector<int32_t> tree_, count_;
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
  auto assign = [&](auto&& packer) {
    for (int64_t s = 0; s < remainders; ++s) {
      const int64_t piece = sizes[s];
      Bin& bin = bins[static_cast<size_t>(packer.place(high_half(piece)))];
      items[s] = pack(low_half(piece), bin.tail);
      starts[s] = high_half(piece);
      bin.tail = static_cast<int32_t>(s);
    }
  };
  if (o.strategy == kFirstFitDecreasing)
    assign(FirstFit(cap, o.max_seqs_per_bin, bins));
  else if (dense)
    assign(BestFitDense(cap, o.max_seqs_per_bin, bins));
  else
    assign(BestFitSparse(cap, o.max_seqs_per_bin, bins));
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
