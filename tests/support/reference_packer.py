"""A slow, obviously-correct pure-Python model of the C++ engine, used by tests/engine/test_native.py.

It mirrors the engine's documented rules exactly (including tie-breaks and the shuffle RNG), so the
tests can compare whole plans, plus textbook best-/first-fit decreasing for bin-count bounds.
"""

from __future__ import annotations

MASK = (1 << 64) - 1


def pieces_of(lengths, max_tokens, overlong):
    """(example, start, size) in example order; raises ValueError like the engine."""
    pieces = []
    for i, length in enumerate(lengths):
        length = int(length)
        if length == 0:
            raise ValueError(f"example {i} has length 0")
        if length < 0:
            raise ValueError(f"example {i} has a negative length ({length})")
        if length <= max_tokens:
            pieces.append((i, 0, length))
        elif overlong == "error":
            raise ValueError(f"example {i} has {length} tokens, more than max_tokens={max_tokens}")
        elif overlong == "truncate":
            pieces.append((i, 0, max_tokens))
        else:
            for start in range(0, length, max_tokens):
                pieces.append((i, start, min(max_tokens, length - start)))
    return pieces


def _decreasing(pieces):
    return sorted(pieces, key=lambda p: -p[2])  # stable: ties keep example order


def best_fit_decreasing(pieces, max_tokens, max_seqs=0):
    """Engine rule: smallest sufficient room; ties to the bin that most recently reached it."""
    bins, open_by_room = [], {}
    for piece in _decreasing(pieces):
        fits = [room for room, stack in open_by_room.items() if stack and room >= piece[2]]
        if fits:
            room = min(fits)
            b = open_by_room[room].pop()
        else:
            room, b = max_tokens, len(bins)
            bins.append([])
        bins[b].append(piece)
        left = room - piece[2]
        if left > 0 and not (max_seqs and len(bins[b]) >= max_seqs):
            open_by_room.setdefault(left, []).append(b)
    return bins


def textbook_best_fit_decreasing(sizes, max_tokens):
    """Best fit decreasing with ties to the lowest bin index: returns the number of bins."""
    rooms = []
    for size in sorted(sizes, reverse=True):
        fits = [(room, b) for b, room in enumerate(rooms) if room >= size]
        if fits:
            rooms[min(fits)[1]] -= size
        else:
            rooms.append(max_tokens - size)
    return len(rooms)


def first_fit_decreasing(pieces, max_tokens, max_seqs=0):
    bins, rooms = [], []
    for piece in _decreasing(pieces):
        for b, room in enumerate(rooms):
            if room >= piece[2]:
                break
        else:
            b = len(bins)
            bins.append([])
            rooms.append(max_tokens)
        bins[b].append(piece)
        rooms[b] -= piece[2]
        if max_seqs and len(bins[b]) >= max_seqs:
            rooms[b] = 0
    return bins


class OnlineReference:
    """The online packer's rules on a plain list (see cpp/warppack/online.hpp)."""

    def __init__(self, max_tokens, max_seqs=0, buffer_size=1):
        self.max_tokens, self.max_seqs, self.buffer_size = max_tokens, max_seqs, buffer_size
        self.window = []  # (key, length, payload) in push order

    def push(self, key, length, payload=None):
        if not 1 <= length <= self.max_tokens:
            raise ValueError(f"example {key} has {length} tokens")
        if length == self.max_tokens or self.max_seqs == 1:
            return [[(key, length, payload)]]
        self.window.append((key, length, payload))
        return [self._close()] if len(self.window) > self.buffer_size else []

    def flush(self):
        out = []
        while self.window:
            out.append(self._close())
        return out

    def _take_longest(self, room):
        best = None
        for k, entry in enumerate(self.window):
            if entry[1] <= room and (best is None or entry[1] > self.window[best][1]):
                best = k
        return None if best is None else self.window.pop(best)

    def _close(self):
        first = self._take_longest(self.max_tokens)
        bin_, room = [first], self.max_tokens - first[1]
        while room > 0 and self.window and not (self.max_seqs and len(bin_) >= self.max_seqs):
            entry = self._take_longest(room)
            if entry is None:
                break
            bin_.append(entry)
            room -= entry[1]
        return bin_


def online(pieces, max_tokens, max_seqs, buffer_size):
    packer = OnlineReference(max_tokens, max_seqs, buffer_size)
    bins = []
    for piece in pieces:
        bins += packer.push(piece[0], piece[2], piece)
    bins += packer.flush()
    return [[entry[2] for entry in b] for b in bins]


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def permutation(n, seed):
    """order[k] = the bin written k-th after shuffling (the engine's Fisher-Yates)."""
    order, state = list(range(n)), seed & MASK
    for i in range(n - 1, 0, -1):
        bound = i + 1
        state, x = splitmix64(state)
        product = x * bound
        if product & MASK < bound:  # Lemire's rejection: only this rare case needs the division
            threshold = ((1 << 64) - bound) % bound
            while product & MASK < threshold:
                state, x = splitmix64(state)
                product = x * bound
        j = product >> 64
        order[i], order[j] = order[j], order[i]
    return order


def plan(lengths, max_tokens, strategy="bfd", max_seqs=0, overlong="error", buffer_size=1,
         shuffle=False, seed=0):
    """The whole plan as a list of bins of (example, start, size)."""
    pieces = pieces_of(lengths, max_tokens, overlong)
    if strategy == "bfd":
        bins = best_fit_decreasing(pieces, max_tokens, max_seqs)
    elif strategy == "ffd":
        bins = first_fit_decreasing(pieces, max_tokens, max_seqs)
    else:
        bins = online(pieces, max_tokens, max_seqs, buffer_size)
    if shuffle:
        bins = [bins[b] for b in permutation(len(bins), seed)]
    return bins


MAX_PADDING_SEGMENT = 512  # cpp/warppack/layout.hpp: kMaxPaddingSegment
PADDING_SEQ_IDX = -1  # cpp/warppack/layout.hpp: kPaddingSeqIdx


def layout(ids, labels, total_tokens, num_cu, pad_token_id, label_pad_id):
    """The batch-buffer contract as plain lists."""
    input_ids, out_labels, positions, seq_idx, cu = [], [], [], [], [0]
    for i, seq in enumerate(ids):
        seq = [int(t) for t in seq]
        lab = seq if labels[i] is None else [int(t) for t in labels[i]]
        input_ids += seq
        out_labels += ([label_pad_id] + lab[1:]) if seq else []
        positions += list(range(len(seq)))
        seq_idx += [i] * len(seq)
        cu.append(len(input_ids))
    padding = total_tokens - len(input_ids)
    if padding:  # in pieces of at most MAX_PADDING_SEGMENT tokens, as many as spare cu entries allow
        pieces = min(num_cu - 1 - len(ids), -(-padding // MAX_PADDING_SEGMENT))
        for p in range(pieces):
            n = padding // pieces + (p < padding % pieces)
            input_ids += [pad_token_id] * n
            out_labels += [label_pad_id] * n
            positions += list(range(n))
            seq_idx += [PADDING_SEQ_IDX] * n
            cu.append(len(input_ids))
    cu += [total_tokens] * (num_cu - len(cu))
    return input_ids, out_labels, positions, seq_idx, cu
