// Internal to the planner's translation units: option checks, error messages and the placement
// rules shared by the whole-example path (whole.cpp) and the general one (planner.cpp).
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "warppack/common.hpp"
#include "warppack/planner.hpp"

namespace warppack {
namespace detail {

// Piece and bin ids are int32 in the scratch arrays.
inline constexpr int64_t kMaxPieces = INT32_MAX - 1;
// Capacity-indexed structures (counting sort, per-capacity lists) cost O(max_tokens) memory; above
// this size, or when max_tokens dwarfs the number of examples, the comparison-based path is used.
inline constexpr int64_t kDenseCapacityLimit = int64_t{1} << 22;

inline void check_options(const PlanOptions& o) {
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

[[noreturn]] inline void fail_length(int64_t index, int64_t length, int64_t max_tokens) {
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

[[noreturn]] inline void fail_split(int64_t index, int64_t length, int64_t max_tokens) {
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

// Every placer returns the bin (numbered 0, 1, ... in creation order) that takes a piece of
// `length` tokens, and keeps the number of pieces per bin: the offsets of the plan come from
// those counts, and max_seqs_per_bin closes a bin when its count reaches the limit.
class PlacerBase {
 public:
  PlacerBase(int64_t cap, int64_t max_seqs, int64_t expected_bins) : cap_(cap), max_seqs_(max_seqs) {
    count_.reserve(static_cast<size_t>(std::max<int64_t>(expected_bins, 16)));
  }
  int64_t bins() const { return static_cast<int64_t>(count_.size()); }
  std::vector<int32_t>& counts() { return count_; }

 protected:
  int32_t open_bin() {
    count_.push_back(0);
    return static_cast<int32_t>(count_.size() - 1);
  }
  // Counts the piece in; false when the bin is now closed by max_seqs_per_bin.
  bool stays_open(int32_t bin) { return ++count_[static_cast<size_t>(bin)] < max_seqs_ || max_seqs_ == 0; }

  int64_t cap_, max_seqs_;
  std::vector<int32_t> count_;
};

// Best fit over per-room LIFO lists and a successor bitset: the open bin with the smallest room
// >= length, ties to the bin that most recently reached that room. O(max_tokens) memory.
class BestFitDense : public PlacerBase {
 public:
  BestFitDense(int64_t cap, int64_t max_seqs, int64_t expected_bins)
      : PlacerBase(cap, max_seqs, expected_bins), open_(cap + 1), head_(static_cast<size_t>(cap + 1), -1) {
    link_.reserve(count_.capacity());
  }

  int32_t place(int64_t length) {
    int64_t room = open_.next(length);
    int32_t bin;
    if (room < 0) {
      bin = open_bin();
      link_.push_back(-1);
      room = cap_;
    } else {
      bin = head_[static_cast<size_t>(room)];
      const int32_t next = link_[static_cast<size_t>(bin)];
      head_[static_cast<size_t>(room)] = next;
      if (next < 0)
        open_.erase(room);
      else
        prefetch(&link_[static_cast<size_t>(next)]);  // the next bin this room will hand out
    }
    if (!stays_open(bin)) return bin;
    const int64_t left = room - length;
    if (left > 0) {
      int32_t& head = head_[static_cast<size_t>(left)];
      if (head < 0) open_.insert(left);
      link_[static_cast<size_t>(bin)] = head;
      head = bin;
    }
    return bin;
  }

 private:
  SuccessorSet open_;
  std::vector<int32_t> head_, link_;
};

// The same rule (including ties) over an ordered set, for capacities too large to index densely.
class BestFitSparse : public PlacerBase {
 public:
  using PlacerBase::PlacerBase;

  int32_t place(int64_t length) {
    auto it = open_.lower_bound(Key{length, INT64_MIN, INT32_MIN});
    int64_t room;
    int32_t bin;
    if (it == open_.end()) {
      bin = open_bin();
      room = cap_;
    } else {
      room = std::get<0>(*it);
      bin = std::get<2>(*it);
      open_.erase(it);
    }
    if (!stays_open(bin)) return bin;
    if (room - length > 0) open_.insert(Key{room - length, -(++stamp_), bin});
    return bin;
  }

 private:
  using Key = std::tuple<int64_t, int64_t, int32_t>;  // (room, -stamp, bin)
  int64_t stamp_ = 0;
  std::set<Key> open_;
};

// First fit: a max segment tree over bins (remaining room; 0 once full or closed), leftmost fit.
class FirstFit : public PlacerBase {
 public:
  FirstFit(int64_t cap, int64_t max_seqs, int64_t expected_bins) : PlacerBase(cap, max_seqs, expected_bins) {
    resize(1024);
  }

  int32_t place(int64_t length) {
    if (tree_[1] < length) {
      if (static_cast<size_t>(bins()) == leaves_) resize(leaves_ * 2);
      const int32_t bin = open_bin();
      set(static_cast<size_t>(bin), static_cast<int32_t>(cap_));
    }
    size_t node = 1;
    while (node < leaves_) node = tree_[2 * node] >= length ? 2 * node : 2 * node + 1;
    const int32_t bin = static_cast<int32_t>(node - leaves_);
    const int32_t room = stays_open(bin) ? tree_[node] - static_cast<int32_t>(length) : 0;
    set(static_cast<size_t>(bin), room);
    return bin;
  }

 private:
  void set(size_t leaf, int32_t room) {
    size_t node = leaf + leaves_;
    tree_[node] = room;
    for (node >>= 1; node >= 1; node >>= 1) tree_[node] = std::max(tree_[2 * node], tree_[2 * node + 1]);
  }
  void resize(size_t leaves) {
    std::vector<int32_t> tree(2 * leaves, 0);
    for (size_t b = 0; b < static_cast<size_t>(bins()); ++b) tree[leaves + b] = tree_[leaves_ + b];
    for (size_t node = leaves - 1; node >= 1; --node) tree[node] = std::max(tree[2 * node], tree[2 * node + 1]);
    tree_.swap(tree);
    leaves_ = leaves;
  }

  size_t leaves_ = 0;
  std::vector<int32_t> tree_;
};

}  // namespace detail
}  // namespace warppack
