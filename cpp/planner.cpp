// Offline planning: best-fit decreasing, first-fit decreasing and the online packer over a list.
//
// Every example becomes `full` pieces of exactly max_tokens tokens (overlong examples) and at most
// one remainder piece of 1 .. max_tokens-1 tokens. A full piece fills a bin alone and sorts first
// in any decreasing order, so the full bins are simply bins 0 .. F-1 in example order and only the
// remainders go through the packing structures. Scratch memory: the sorted order and the bin of
// every remainder (int32 each), plus O(1) int32 per bin and O(max_tokens) for the index.

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
      pieces += length / cap + (length % cap != 0) - 1;
      if (pieces > kMaxPieces)
        fail("splitting example " + std::to_string(i) + " (" + std::to_string(length) +
             " tokens) brings the plan past 2147483646 pieces; raise max_tokens=" +
             std::to_string(cap));
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

// Best fit over per-capacity LIFO lists and a successor bitset: the open bin with the smallest
// remaining capacity >= length, ties to the bin that most recently reached that capacity.
class BestFitDense {
 public:
  BestFitDense(int64_t cap, int64_t max_seqs)
      : cap_(cap), max_seqs_(max_seqs), open_(cap + 1), head_(static_cast<size_t>(cap + 1), -1) {}

  int32_t place(int64_t length) {
    int64_t room = open_.next(length);
    int32_t bin;
    if (room < 0) {
      bin = static_cast<int32_t>(next_.size());
      next_.push_back(-1);
      if (max_seqs_) count_.push_back(0);
      room = cap_;
    } else {
      bin = head_[room];
      head_[room] = next_[bin];
      if (head_[room] < 0) open_.erase(room);
    }
    if (max_seqs_ && ++count_[bin] >= max_seqs_) return bin;
    const int64_t left = room - length;
    if (left > 0) {
      if (head_[left] < 0) open_.insert(left);
      next_[bin] = head_[left];
      head_[left] = bin;
    }
    return bin;
  }
  int64_t bins() const { return static_cast<int64_t>(next_.size()); }

 private:
  int64_t cap_, max_seqs_;
  detail::SuccessorSet open_;
  std::vector<int32_t> head_, next_, count_;
};

// The same rule (including ties) over an ordered set, for capacities too large to index densely.
class BestFitSparse {
 public:
  BestFitSparse(int64_t cap, int64_t max_seqs) : cap_(cap), max_seqs_(max_seqs) {}

  int32_t place(int64_t length) {
    auto it = open_.lower_bound(Key{length, INT64_MIN, INT32_MIN});
    int64_t room;
    int32_t bin;
    if (it == open_.end()) {
      bin = static_cast<int32_t>(bins_++);
      if (max_seqs_) count_.push_back(0);
      room = cap_;
    } else {
      room = std::get<0>(*it);
      bin = std::get<2>(*it);
      open_.erase(it);
    }
    if (max_seqs_ && ++count_[bin] >= max_seqs_) return bin;
    if (room - length > 0) open_.insert(Key{room - length, -(++stamp_), bin});
    return bin;
  }
  int64_t bins() const { return bins_; }

 private:
  using Key = std::tuple<int64_t, int64_t, int32_t>;  // (room, -stamp, bin)
  int64_t cap_, max_seqs_, stamp_ = 0, bins_ = 0;
  std::set<Key> open_;
  std::vector<int32_t> count_;
};

// First fit: a max segment tree over bins (remaining room; 0 once full or closed), leftmost fit.
class FirstFit {
 public:
  FirstFit(int64_t cap, int64_t max_seqs) : cap_(static_cast<int32_t>(cap)), max_seqs_(max_seqs) {
    resize(1024);
  }

  int32_t place(int64_t length) {
    if (tree_[1] < length) {
      if (bins_ == leaves_) resize(leaves_ * 2);
      if (max_seqs_) count_.push_back(0);
      set(bins_++, cap_);
    }
    size_t node = 1;
    while (node < leaves_) node = tree_[2 * node] >= length ? 2 * node : 2 * node + 1;
    const int32_t bin = static_cast<int32_t>(node - leaves_);
    int32_t room = tree_[node] - static_cast<int32_t>(length);
    if (max_seqs_ && ++count_[bin] >= max_seqs_) room = 0;
    set(bin, room);
    return bin;
  }
  int64_t bins() const { return static_cast<int64_t>(bins_); }

 private:
  void set(size_t bin, int32_t room) {
    size_t node = bin + leaves_;
    tree_[node] = room;
    for (node >>= 1; node >= 1; node >>= 1) tree_[node] = std::max(tree_[2 * node], tree_[2 * node + 1]);
  }
  void resize(size_t leaves) {
    std::vector<int32_t> tree(2 * leaves, 0);
    for (size_t b = 0; b < bins_; ++b) tree[leaves + b] = tree_[leaves_ + b];
    for (size_t node = leaves - 1; node >= 1; --node) tree[node] = std::max(tree[2 * node], tree[2 * node + 1]);
    tree_.swap(tree);
    leaves_ = leaves;
  }

  int32_t cap_;
  int64_t max_seqs_;
  size_t leaves_ = 0, bins_ = 0;
  std::vector<int32_t> tree_;
  std::vector<int32_t> count_;
};

// Writes the full bins and the packed remainders into the outputs, bins in creation order or
// permuted by `rank` (rank[b] = output position of bin b). bin_offsets serves as the cursor array.
template <class T>
int64_t scatter(const T* lengths, int64_t n, const Shape& shape, int64_t full_bins,
                const std::vector<int32_t>& order, const std::vector<int32_t>& bin_of,
                int64_t remainder_bins, const PlanOptions& o, int64_t* items, int64_t* starts,
                int64_t* sizes, int64_t* offsets) {
  const int64_t bins = full_bins + remainder_bins;
  std::vector<int32_t> rank;
  if (o.shuffle) {
    rank.resize(static_cast<size_t>(bins));
    detail::random_permutation(rank.data(), bins, o.seed);
  }
  auto position = [&](int64_t bin) { return o.shuffle ? int64_t{rank[static_cast<size_t>(bin)]} : bin; };

  std::fill(offsets, offsets + bins + 1, 0);
  for (int64_t b = 0; b < full_bins; ++b) offsets[position(b) + 1] = 1;
  for (int32_t b : bin_of) offsets[position(full_bins + b) + 1] += 1;
  for (int64_t k = 0; k < bins; ++k) offsets[k + 1] += offsets[k];

  const int64_t cap = shape.cap;
  if (full_bins > 0) {
    int64_t bin = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t full = shape.full(lengths[i]);
      for (int64_t j = 0; j < full; ++j) {
        const int64_t at = offsets[position(bin++)]++;
        items[at] = i;
        starts[at] = j * cap;
        sizes[at] = cap;
      }
    }
  }
  for (size_t s = 0; s < order.size(); ++s) {
    const int64_t i = order[s];
    const int64_t length = lengths[i];
    const int64_t rem = shape.rem(length);
    const int64_t at = offsets[position(full_bins + bin_of[s])]++;
    items[at] = i;
    starts[at] = length - rem;
    sizes[at] = rem;
  }
  // Each cursor now points at the end of its bin, i.e. the start of the next one.
  for (int64_t k = bins; k > 0; --k) offsets[k] = offsets[k - 1];
  offsets[0] = 0;
  return bins;
}

template <class T>
int64_t plan_decreasing(const T* lengths, int64_t n, const PlanOptions& o, int64_t* items,
                        int64_t* starts, int64_t* sizes, int64_t* offsets) {
  const int64_t cap = o.max_tokens;
  const Shape shape{cap, o.overlong == kOverlongSplit};
  int64_t full_bins = 0, remainders = 0;
  for (int64_t i = 0; i < n; ++i) {
    full_bins += shape.full(lengths[i]);
    remainders += shape.rem(lengths[i]) != 0;
  }
  const bool dense = cap <= kDenseCapacityLimit && cap <= std::max<int64_t>(int64_t{1} << 16, 4 * n);

  // Remainders sorted by decreasing length, ties by index (stable).
  std::vector<int32_t> order(static_cast<size_t>(remainders));
  std::vector<int32_t> group_end;  // dense: group_end[r] = end of the group of length r in order
  if (dense) {
    group_end.assign(static_cast<size_t>(cap), 0);
    for (int64_t i = 0; i < n; ++i) ++group_end[static_cast<size_t>(shape.rem(lengths[i]))];
    int32_t at = 0;
    for (int64_t r = cap - 1; r >= 1; --r) {
      const int32_t count = group_end[r];
      group_end[r] = at;
      at += count;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = shape.rem(lengths[i]);
      if (r != 0) order[static_cast<size_t>(group_end[r]++)] = static_cast<int32_t>(i);
    }
  } else {
    size_t at = 0;
    for (int64_t i = 0; i < n; ++i)
      if (shape.rem(lengths[i]) != 0) order[at++] = static_cast<int32_t>(i);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return shape.rem(lengths[a]) > shape.rem(lengths[b]);
    });
  }

  std::vector<int32_t> bin_of(order.size());
  auto assign = [&](auto& packer) {
    if (dense) {
      size_t s = 0;
      for (int64_t r = cap - 1; r >= 1; --r)
        for (const size_t end = static_cast<size_t>(group_end[r]); s < end; ++s)
          bin_of[s] = packer.place(r);
    } else {
      for (size_t s = 0; s < order.size(); ++s) bin_of[s] = packer.place(shape.rem(lengths[order[s]]));
    }
    return packer.bins();
  };
  int64_t remainder_bins;
  if (o.strategy == kFirstFitDecreasing) {
    FirstFit packer(cap, o.max_seqs_per_bin);
    remainder_bins = assign(packer);
  } else if (dense) {
    BestFitDense packer(cap, o.max_seqs_per_bin);
    remainder_bins = assign(packer);
  } else {
    BestFitSparse packer(cap, o.max_seqs_per_bin);
    remainder_bins = assign(packer);
  }
  std::vector<int32_t>().swap(group_end);
  return scatter(lengths, n, shape, full_bins, order, bin_of, remainder_bins, o, items, starts,
                 sizes, offsets);
}

template <class T>
int64_t plan_online(const T* lengths, int64_t n, const PlanOptions& o, int64_t pieces,
                    int64_t* items, int64_t* starts, int64_t* sizes, int64_t* offsets) {
  const int64_t cap = o.max_tokens;
  const Shape shape{cap, o.overlong == kOverlongSplit};
  OnlinePacker packer(cap, o.max_seqs_per_bin, o.buffer_size);
  // Pieces in emission order as (example, chunk), plus the size of every bin.
  std::vector<int32_t> piece_item, piece_chunk, bin_size;
  piece_item.reserve(static_cast<size_t>(pieces));
  piece_chunk.reserve(static_cast<size_t>(pieces));
  int64_t chunk = 0;  // chunk being pushed; a full chunk is emitted by the very push that takes it
  auto drain = [&] {
    const auto& ends = packer.out_ends();
    const auto& keys = packer.out_keys();
    const auto& lens = packer.out_lengths();
    size_t begin = 0;
    for (const int64_t end : ends) {
      for (size_t k = begin; k < static_cast<size_t>(end); ++k) {
        piece_item.push_back(static_cast<int32_t>(keys[k]));
        piece_chunk.push_back(static_cast<int32_t>(lens[k] == cap ? chunk : shape.full(lengths[keys[k]])));
      }
      bin_size.push_back(static_cast<int32_t>(end - static_cast<int64_t>(begin)));
      begin = static_cast<size_t>(end);
    }
    packer.clear_output();
  };
  for (int64_t i = 0; i < n; ++i) {
    const int64_t full = shape.full(lengths[i]);
    for (chunk = 0; chunk < full; ++chunk) {
      packer.push(i, cap);
      if (!packer.out_ends().empty()) drain();
    }
    const int64_t rem = shape.rem(lengths[i]);
    if (rem != 0) {
      packer.push(i, rem);
      if (!packer.out_ends().empty()) drain();
    }
  }
  packer.flush();
  drain();

  const int64_t bins = static_cast<int64_t>(bin_size.size());
  if (static_cast<int64_t>(piece_item.size()) != pieces) fail("internal error: online plan lost pieces");
  std::vector<int32_t> rank;
  if (o.shuffle) {
    rank.resize(static_cast<size_t>(bins));
    detail::random_permutation(rank.data(), bins, o.seed);
  }
  offsets[0] = 0;
  for (int64_t b = 0; b < bins; ++b) offsets[(o.shuffle ? rank[b] : b) + 1] = bin_size[b];
  for (int64_t k = 0; k < bins; ++k) offsets[k + 1] += offsets[k];
  size_t source = 0;
  for (int64_t b = 0; b < bins; ++b) {
    int64_t at = offsets[o.shuffle ? rank[b] : b];
    for (int32_t k = 0; k < bin_size[b]; ++k, ++source, ++at) {
      const int64_t i = piece_item[source];
      const int64_t length = o.overlong == kOverlongTruncate ? std::min<int64_t>(lengths[i], cap) : lengths[i];
      const int64_t start = int64_t{piece_chunk[source]} * cap;
      items[at] = i;
      starts[at] = start;
      sizes[at] = std::min(cap, length - start);
    }
  }
  return bins;
}

template <class T>
int64_t plan_impl(const T* lengths, int64_t n, const PlanOptions& o, int64_t pieces, int64_t* items,
                  int64_t* starts, int64_t* sizes, int64_t* offsets) {
  const int64_t expected = count_impl(lengths, n, o);
  if (pieces != expected)
    fail("output arrays hold " + std::to_string(pieces) + " pieces but the plan has " +
         std::to_string(expected) + " (call count_pieces with the same lengths and options)");
  if (pieces > 0 && (items == nullptr || starts == nullptr || sizes == nullptr))
    fail("output arrays must not be null");
  if (offsets == nullptr) fail("bin_offsets must not be null");
  if (o.strategy == kOnline) return plan_online(lengths, n, o, pieces, items, starts, sizes, offsets);
  return plan_decreasing(lengths, n, o, items, starts, sizes, offsets);
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
