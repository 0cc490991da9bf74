// Internal helpers shared by the engine's translation units (not part of the public API).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <cstdlib>
#include <new>
#include <type_traits>

#if defined(_MSC_VER)
#include <intrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
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

inline void prefetch(const void* address) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(address);
#else
  (void)address;
#endif
}

// A fixed-size, uninitialised scratch array. Large ones ask Linux for transparent huge pages: the
// planner's scatter and list walks touch hundreds of MB at random, where 4 KiB pages make TLB
// misses and page faults cost more than the work itself.
template <class T>
class Scratch {
  static_assert(std::is_trivially_copyable<T>::value, "scratch holds plain data");

 public:
  Scratch() = default;
  explicit Scratch(size_t n) : size_(n) {
    if (n == 0) return;
    const size_t bytes = n * sizeof(T);
#if defined(__linux__)
    constexpr size_t kHuge = size_t{2} << 20;
    if (bytes >= kHuge) {
      void* p = nullptr;
      if (posix_memalign(&p, kHuge, (bytes + kHuge - 1) / kHuge * kHuge) != 0) throw std::bad_alloc();
      madvise(p, bytes, MADV_HUGEPAGE);
      data_ = static_cast<T*>(p);
      return;
    }
#endif
    data_ = static_cast<T*>(std::malloc(bytes));
    if (data_ == nullptr) throw std::bad_alloc();
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Scratch(Scratch&& other) noexcept : data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
  }
  Scratch& operator=(Scratch&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  ~Scratch() { std::free(data_); }

  T* data() { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

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
  // Uniform in [0, bound), bound >= 1: Lemire's multiply-shift with rejection (unbiased, and
  // no division in the common case).
  uint64_t below(uint64_t bound) {
    uint64_t high, low;
    multiply(next(), bound, high, low);
    if (low < bound) {
      const uint64_t threshold = (0 - bound) % bound;
      while (low < threshold) multiply(next(), bound, high, low);
    }
    return high;
  }

 private:
  static void multiply(uint64_t a, uint64_t b, uint64_t& high, uint64_t& low) {
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 uint128;
    const uint128 product = static_cast<uint128>(a) * b;
    high = static_cast<uint64_t>(product >> 64);
    low = static_cast<uint64_t>(product);
#else
    const uint64_t a_lo = a & 0xFFFFFFFFu, a_hi = a >> 32, b_lo = b & 0xFFFFFFFFu, b_hi = b >> 32;
    const uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
    const uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFu) + lo_hi;
    high = hi_hi + (hi_lo >> 32) + (cross >> 32);
    low = (cross << 32) | (lo_lo & 0xFFFFFFFFu);
#endif
  }

  uint64_t state_;
};

// A uniformly random permutation of 0..n-1 from `seed`: Fisher-Yates on the identity.
template <class T>
void random_permutation(T* out, int64_t n, uint64_t seed) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(i);
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
