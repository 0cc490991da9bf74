#include "warppack/online.hpp"

#include <algorithm>
#include <climits>
#include <iterator>
#include <string>

#include "warppack/common.hpp"

namespace warppack {

using detail::fail;

OnlinePacker::OnlinePacker(int64_t max_tokens, int64_t max_seqs_per_bin, int64_t buffer_size)
    : max_tokens_(max_tokens), max_seqs_per_bin_(max_seqs_per_bin), buffer_size_(buffer_size) {
  if (max_tokens <= 0 || max_tokens > INT32_MAX)
    fail("max_tokens must be in 1..2147483647 (the int32 range of cu_seqlens), got " +
         std::to_string(max_tokens));
  if (max_seqs_per_bin < 0)
    fail("max_seqs_per_bin must be >= 0 (0 means unlimited), got " + std::to_string(max_seqs_per_bin));
  if (buffer_size < 1) fail("buffer_size must be >= 1, got " + std::to_string(buffer_size));
}

void OnlinePacker::push(int64_t key, int64_t length) {
  if (length < 1 || length > max_tokens_)
    fail("example " + std::to_string(key) + " has " + std::to_string(length) +
         " tokens; the online packer takes 1..max_tokens=" + std::to_string(max_tokens_) +
         " tokens per item (truncate or split overlong examples and drop empty ones first)");
  const Entry entry{length, next_order_++, key};
  if (length == max_tokens_ || max_seqs_per_bin_ == 1) {
    emit(entry);
    end_bin();
    return;
  }
  window_.insert(entry);
  if (static_cast<int64_t>(window_.size()) > buffer_size_) close_one_bin();
}

void OnlinePacker::flush() {
  while (!window_.empty()) close_one_bin();
}

void OnlinePacker::close_one_bin() {
  auto it = std::prev(window_.end());
  int64_t room = max_tokens_ - it->length;
  int64_t count = 1;
  emit(*it);
  window_.erase(it);
  while (room > 0 && !window_.empty() && (max_seqs_per_bin_ == 0 || count < max_seqs_per_bin_)) {
    // First entry longer than room: entries of length == room all sort before this probe.
    it = window_.upper_bound(Entry{room, -1, 0});
    if (it == window_.begin()) break;
    --it;
    room -= it->length;
    ++count;
    emit(*it);
    window_.erase(it);
  }
  end_bin();
}

void OnlinePacker::clear_output() {
  out_keys_.clear();
  out_lengths_.clear();
  out_ends_.clear();
}

std::vector<OnlinePacker::Entry> OnlinePacker::pending_entries() const {
  std::vector<Entry> entries(window_.begin(), window_.end());
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.order < b.order; });
  return entries;
}

std::vector<int64_t> OnlinePacker::pending_keys() const {
  std::vector<int64_t> keys;
  for (const Entry& e : pending_entries()) keys.push_back(e.key);
  return keys;
}

std::vector<int64_t> OnlinePacker::pending_lengths() const {
  std::vector<int64_t> lengths;
  for (const Entry& e : pending_entries()) lengths.push_back(e.length);
  return lengths;
}

}  // namespace warppack
