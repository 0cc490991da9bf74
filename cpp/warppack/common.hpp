// Internal helpers shared by the engine's translation units (not part of the public API).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if defined(_MSC_VER)
#include <intrin.h>
#endif

namespace warppack {
namespace detail {

[[noreturn]] inline void fail(const std::string& message) { throw std::invalid_argument(message); }

inline int count_trailing_zeros(uint64_t word) {
#if defined(_MSC_VER)
  unsigned long index;
  _BitScanForward64(&index, word);
  return static_cast<int>(index);
#else
  return __builtin_ctzll(word);
#endif
}

// splitmix64: tiny and bit-identical on every platform, unlike std:: distributions whose output
// differs between standard libraries (a plan must not change when the wheel does).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound) by rejection (no modulo bias), bound >= 1.
  uint64_t below(uint64_t bound) {
    const uint64_t threshold = (0 - bound) % bound;
    for (;;) {
      const uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }

 private:
  uint64_t state_;
};

// out[b] = the position of bin b after shuffling: Fisher-Yates on the identity.
inline void random_permutation(int32_t* out, int64_t n, uint64_t seed) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(i);
  SplitMix64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(out[i], out[j]);
  }
}

// A set of integers in [0, n) as a 64-ary tree of bitsets: insert, erase and "smallest element
// >= x" in O(log64 n) word operations (3 levels cover 262,144 values).
class SuccessorSet {
 public:
  explicit SuccessorSet(int64_t n) {
    int64_t size = n < 1 ? 1 : n;
    do {
      size = (size + 63) / 64;
      levels_.emplace_back(static_cast<size_t>(size), 0);
    } while (size > 1);
  }

  void insert(int64_t x) {
    for (auto& level : levels_) {
      uint64_t& word = level[static_cast<size_t>(x >> 6)];
      const bool had_any = word != 0;
      word |= uint64_t{1} << (x & 63);
      if (had_any) return;  // the parents already mark this word as non-empty
      x >>= 6;
    }
  }

  void erase(int64_t x) {
    for (auto& level : levels_) {
      uint64_t& word = level[static_cast<size_t>(x >> 6)];
      word &= ~(uint64_t{1} << (x & 63));
      if (word != 0) return;
      x >>= 6;
    }
  }

  // Smallest element >= x, or -1 when there is none.
  int64_t next(int64_t x) const {
    size_t depth = 0;
    for (; depth < levels_.size(); ++depth) {
      const auto& level = levels_[depth];
      const int64_t index = x >> 6;
      if (index >= static_cast<int64_t>(level.size())) return -1;
      const uint64_t word = level[static_cast<size_t>(index)] & (~uint64_t{0} << (x & 63));
      if (word != 0) {
        x = (index << 6) | count_trailing_zeros(word);
        break;
      }
      x = index + 1;  // the following words of this level are the following bits one level up
    }
    if (depth == levels_.size()) return -1;
    while (depth > 0) {
      --depth;
      x = (x << 6) | count_trailing_zeros(levels_[depth][static_cast<size_t>(x)]);
    }
    return x;
  }

 private:
  std::vector<std::vector<uint64_t>> levels_;
};

}  // namespace detail
}  // namespace warppack
