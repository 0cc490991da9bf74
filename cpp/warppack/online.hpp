// Streaming packing over a bounded look-ahead window.
#pragma once

#include <cstdint>
#include <set>
#include <vector>

namespace warppack {

// Best-fit packing of a stream with a window of at most `buffer_size` pending items.
//
// push(): an item of exactly max_tokens tokens (or any item when max_seqs_per_bin == 1) is a bin on
// its own and is emitted at once. Otherwise it joins the window; when the window then holds
// buffer_size + 1 items, one bin is closed: it opens with the longest pending item and is filled
// best-fit (repeatedly the longest pending item that still fits, ties to the earliest pushed) until
// nothing fits or max_seqs_per_bin is reached. buffer_size == 1 therefore still pairs items.
// flush() closes bins the same way until the window is empty.
//
// The state depends only on the sequence of pushed (key, length) pairs, so pushing
// pending_keys()/pending_lengths() into a fresh packer restores it (used to resume).
class OnlinePacker {
 public:
  OnlinePacker(int64_t max_tokens, int64_t max_seqs_per_bin, int64_t buffer_size);

  void push(int64_t key, int64_t length);
  void flush();

  // Bins finished since the last clear_output(): bin b is out_keys()[out_ends()[b-1] .. out_ends()[b]).
  const std::vector<int64_t>& out_keys() const { return out_keys_; }
  const std::vector<int64_t>& out_lengths() const { return out_lengths_; }
  const std::vector<int64_t>& out_ends() const { return out_ends_; }
  void clear_output();

  // The window, in push order.
  std::vector<int64_t> pending_keys() const;
  std::vector<int64_t> pending_lengths() const;
  int64_t pending_size() const { return static_cast<int64_t>(window_.size()); }

  int64_t max_tokens() const { return max_tokens_; }
  int64_t max_seqs_per_bin() const { return max_seqs_per_bin_; }
  int64_t buffer_size() const { return buffer_size_; }

 private:
  struct Entry {
    int64_t length;
    int64_t order;  // push counter: ties go to the earliest
    int64_t key;
  };
  // Ascending length, then descending order, so that the last entry of length <= r is the
  // longest fitting one and, among equals, the earliest pushed.
  struct Less {
    bool operator()(const Entry& a, const Entry& b) const {
      return a.length != b.length ? a.length < b.length : a.order > b.order;
    }
  };

  void close_one_bin();
  void emit(const Entry& entry) {
    out_keys_.push_back(entry.key);
    out_lengths_.push_back(entry.length);
  }
  void end_bin() { out_ends_.push_back(static_cast<int64_t>(out_keys_.size())); }
  std::vector<Entry> pending_entries() const;

  int64_t max_tokens_;
  int64_t max_seqs_per_bin_;
  int64_t buffer_size_;
  int64_t next_order_ = 0;
  std::set<Entry, Less> window_;
  std::vector<int64_t> out_keys_, out_lengths_, out_ends_;
};

}  // namespace warppack
