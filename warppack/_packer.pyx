# distutils: language = c++
"""Boundary to the C++ engine (cpp/): conversion and declarations only, no packing logic.

Sizes are computed and arrays allocated here; every check that protects memory is repeated in C++,
and every std::invalid_argument the engine throws surfaces as ValueError. The engine runs without
the GIL, so another thread may write an input meanwhile: plan_whole's engine reads each length
exactly once, and plan_lengths plans a private copy taken here first.
"""

import sys

import numpy as np

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memcpy
from libcpp cimport bool as cbool
from libcpp.vector cimport vector

__all__ = ["OnlinePacker", "plan_lengths", "plan_whole", "write_layout", "write_layout_into"]

cdef bint _LITTLE_ENDIAN = sys.byteorder == "little"

ctypedef fused length_t:
    int32_t
    int64_t


def _describe(obj):
    dtype = getattr(obj, "dtype", None)
    if dtype is None:
        return type(obj).__name__
    return (f"{type(obj).__module__}.{type(obj).__name__} of dtype {dtype}, "
            f"shape {tuple(getattr(obj, 'shape', ()))}, strides {getattr(obj, 'strides', None)}")


cdef int _lengths_bits(object lengths) except -1:
    hint = "; pass np.ascontiguousarray(lengths, dtype=np.int64)"
    if not isinstance(lengths, np.ndarray):
        raise TypeError(f"lengths must be a C-contiguous 1-D int32 or int64 numpy array, "
                        f"got {_describe(lengths)}{hint}")
    if (lengths.dtype != np.int32 and lengths.dtype != np.int64) or not lengths.dtype.isnative:
        raise TypeError(f"lengths must be a C-contiguous 1-D int32 or int64 array, "
                        f"got {_describe(lengths)}{hint}")
    if lengths.ndim != 1 or not lengths.flags.c_contiguous:
        raise ValueError(f"lengths must be a C-contiguous 1-D int32 or int64 array, "
                         f"got {_describe(lengths)}{hint}")
    return 32 if lengths.dtype == np.int32 else 64


cdef PlanOptions _plan_options(int64_t max_tokens, int strategy, int64_t max_seqs_per_bin, int overlong,
                               int64_t buffer_size, bint shuffle, object seed):
    return PlanOptions(max_tokens=max_tokens, strategy=strategy, max_seqs_per_bin=max_seqs_per_bin,
                       overlong=overlong, buffer_size=buffer_size, shuffle=shuffle,
                       seed=<uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF))


cdef inline int64_t* _first(int64_t[::1] view) noexcept:
    return &view[0] if view.shape[0] > 0 else NULL


def plan_lengths(lengths, int64_t max_tokens, int strategy, int64_t max_seqs_per_bin,
                 int overlong, int64_t buffer_size, bint shuffle, seed):
    """Plans `lengths` into bins; see warppack/_packer.pyi and docs/architecture.md."""
    cdef PlanOptions options = _plan_options(max_tokens, strategy, max_seqs_per_bin, overlong, buffer_size,
                                             shuffle, seed)
    cdef int bits = _lengths_bits(lengths)
    # The engine counts, then plans, reading the lengths in several passes: a private copy keeps
    # them equal across passes whatever another thread does to the caller's array meanwhile.
    snapshot = lengths.copy()
    if bits == 32:
        return _plan_lengths[int32_t](snapshot, options)
    return _plan_lengths[int64_t](snapshot, options)


cdef tuple _plan_lengths(const length_t[::1] lengths, PlanOptions options):
    cdef int64_t n = lengths.shape[0], pieces, bins
    cdef const length_t* data = &lengths[0] if n > 0 else NULL
    with nogil:
        pieces = cpp_count_pieces(data, n, options)
    items = np.empty(pieces, dtype=np.int64)
    starts = np.empty(pieces, dtype=np.int64)
    sizes = np.empty(pieces, dtype=np.int64)
    offsets = np.empty(pieces + 1, dtype=np.int64)
    cdef int64_t* items_p = _first(items)
    cdef int64_t* starts_p = _first(starts)
    cdef int64_t* sizes_p = _first(sizes)
    cdef int64_t* offsets_p = _first(offsets)
    with nogil:
        bins = cpp_plan_lengths(data, n, options, pieces, items_p, starts_p, sizes_p, offsets_p)
    # A view: the pages past bin_offsets[bins] were never touched, so they cost no memory.
    return items, starts, sizes, offsets[: bins + 1]


cdef class _EngineArray:
    """Owns an int64 array the engine allocated (sized once the plan knew it) and lends it to numpy."""

    def __cinit__(self):
        self.data = NULL
        self.shape[0] = 0
        self.strides[0] = sizeof(int64_t)

    def __getbuffer__(self, Py_buffer* view, int flags):
        view.buf = self.data
        view.obj = self
        view.len = self.shape[0] * sizeof(int64_t)
        view.itemsize = sizeof(int64_t)
        view.readonly = 0
        view.ndim = 1
        # numpy's int64 is 'l' where long is 64-bit; 'q' there would be a distinct longlong dtype
        if sizeof(long) == 8:
            view.format = "l"
        else:
            view.format = "q"
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __dealloc__(self):
        cpp_free_plan_buffer(self.data)


def plan_whole(lengths, int64_t max_tokens, int strategy, int64_t max_seqs_per_bin, int overlong,
               bint shuffle, seed):
    """bfd/ffd plan of whole examples, or None when one must be truncated or split (see .pyi)."""
    cdef PlanOptions options = _plan_options(max_tokens, strategy, max_seqs_per_bin, overlong, 1, shuffle,
                                             seed)
    # No copy: the engine reads each length exactly once (cpp/whole.cpp).
    if _lengths_bits(lengths) == 32:
        return _plan_whole[int32_t](lengths, options)
    return _plan_whole[int64_t](lengths, options)


cdef object _plan_whole(const length_t[::1] lengths, PlanOptions options):
    cdef int64_t n = lengths.shape[0], bins = 0, tokens = 0
    cdef const length_t* data = &lengths[0] if n > 0 else NULL
    items = np.empty(n, dtype=np.int64)
    cdef int64_t* items_p = _first(items)
    cdef _EngineArray offsets = _EngineArray()
    cdef cbool planned
    with nogil:
        planned = cpp_plan_whole(data, n, options, items_p, &offsets.data, &bins, &tokens)
    if not planned:
        return None
    offsets.shape[0] = bins + 1
    return items, np.asarray(offsets), tokens


cdef class OnlinePacker:
    """Streaming best-fit packer over a bounded window (see _packer.pyi)."""

    def __cinit__(self, int64_t max_tokens, int64_t max_seqs_per_bin=0, int64_t buffer_size=1024):
        self._engine.reset(new CppOnlinePacker(max_tokens, max_seqs_per_bin, buffer_size))

    cdef list _take_bins(self):
        cdef CppOnlinePacker* engine = self._engine.get()
        cdef size_t count = engine.out_ends().size()
        if count == 0:
            return []
        cdef size_t total = engine.out_keys().size()
        keys = np.empty(total, dtype=np.int64)
        cdef int64_t[::1] keys_v = keys
        memcpy(&keys_v[0], engine.out_keys().data(), total * sizeof(int64_t))
        bins = []
        cdef int64_t begin = 0, end
        cdef size_t b
        for b in range(count):
            end = engine.out_ends()[b]
            bins.append(keys[begin:end])
            begin = end
        engine.clear_output()
        return bins

    def push(self, int64_t key, int64_t length):
        self._engine.get().push(key, length)
        return self._take_bins()

    def flush(self):
        self._engine.get().flush()
        return self._take_bins()

    def pending(self):
        return np.asarray(self._engine.get().pending_keys(), dtype=np.int64)

    def pending_lengths(self):
        return np.asarray(self._engine.get().pending_lengths(), dtype=np.int64)

    def __len__(self):
        return self._engine.get().pending_size()

    @property
    def max_tokens(self):
        return self._engine.get().max_tokens()

    @property
    def max_seqs_per_bin(self):
        return self._engine.get().max_seqs_per_bin()

    @property
    def buffer_size(self):
        return self._engine.get().buffer_size()

    def __reduce__(self):
        # Pickles as its settings plus the window; pushing the window again restores the state.
        return (_restore_online_packer,
                (self.max_tokens, self.max_seqs_per_bin, self.buffer_size, self.pending(),
                 self.pending_lengths()))

    def __repr__(self):
        return (f"OnlinePacker(max_tokens={self.max_tokens}, max_seqs_per_bin={self.max_seqs_per_bin}, "
                f"buffer_size={self.buffer_size}, pending={len(self)})")


def _restore_online_packer(max_tokens, max_seqs_per_bin, buffer_size, keys, lengths):
    packer = OnlinePacker(max_tokens, max_seqs_per_bin, buffer_size)
    for key, length in zip(keys.tolist(), lengths.tolist()):
        if packer.push(key, length):
            raise ValueError("the pickled window of an OnlinePacker does not fit its buffer_size")
    return packer


cdef bint _format_ok(const Py_buffer* view, Py_ssize_t itemsize) noexcept:
    # itemsize 0: a token source, int32 or int64; 1: the uint8 layout buffer; 4 or 8: that int exactly.
    cdef const char* f = view.format
    if f == NULL:
        return False
    if itemsize == 0:
        if view.itemsize != 4 and view.itemsize != 8:
            return False
    elif view.itemsize != itemsize:
        return False
    if f[0] == b'@' or f[0] == b'=' or (f[0] == b'<' and _LITTLE_ENDIAN):
        f += 1
    if itemsize == 1:
        return f[0] == b'B' and f[1] == 0
    return (f[0] == b'i' or f[0] == b'l' or f[0] == b'q') and f[1] == 0


cdef object _bad_buffer(object obj, bint writable, Py_ssize_t itemsize, str what, Py_ssize_t index,
                        object error):
    # Messages are built only here, on failure: the success path runs once per sequence per batch.
    name = what if index < 0 else f"{what}[{index}]"
    width = {0: "int32 or int64", 1: "uint8"}.get(itemsize, f"int{itemsize * 8}")
    expected = f"a {'writable ' if writable else ''}C-contiguous 1-D {width} numpy array"
    hint = "; convert a torch tensor with .numpy()" if hasattr(obj, "numpy") else ""
    detail = f" ({error})" if error is not None else ""
    return TypeError(f"{name} must be {expected}, got {_describe(obj)}{detail}{hint}")


cdef class _Buffers:
    """The buffers one layout call reads or writes, released together when the call returns.

    A local of the calling function: CPython frees it, and so releases every buffer, as that
    function returns or raises.
    """

    cdef Py_buffer* views
    cdef Py_ssize_t held, capacity

    def __cinit__(self):
        self.views = NULL
        self.held = 0
        self.capacity = 0

    @staticmethod
    cdef _Buffers reserve(Py_ssize_t capacity):
        # A factory rather than __init__ arguments: this runs once per batch.
        cdef _Buffers buffers = _Buffers.__new__(_Buffers)
        buffers.views = <Py_buffer*>PyMem_Malloc((capacity if capacity > 0 else 1) * sizeof(Py_buffer))
        if buffers.views == NULL:
            raise MemoryError()
        buffers.capacity = capacity
        return buffers

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.held):
            PyBuffer_Release(&self.views[i])
        PyMem_Free(self.views)

    cdef Py_buffer* take(self, object obj, bint writable, Py_ssize_t itemsize, str what,
                         Py_ssize_t index=-1) except NULL:
        """A 1-D C-contiguous buffer of ``obj`` whose items ``_format_ok`` accepts, or TypeError."""
        if self.held == self.capacity:
            raise RuntimeError("internal error: more buffers than the layout call reserved")
        cdef Py_buffer* view = &self.views[self.held]
        cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
        if writable:
            flags |= PyBUF_WRITABLE
        try:
            PyObject_GetBuffer(obj, view, flags)
        except (BufferError, TypeError, ValueError) as error:
            raise _bad_buffer(obj, writable, itemsize, what, index, error) from None
        self.held += 1
        if view.ndim != 1 or not _format_ok(view, itemsize):
            raise _bad_buffer(obj, writable, itemsize, what, index, None)
        return view

    cdef int output(self, object obj, Py_ssize_t itemsize, str what, void** data, int64_t* size) except -1:
        cdef Py_buffer* view = self.take(obj, True, itemsize, what)
        data[0] = view.buf
        size[0] = view.shape[0]
        return 0


cdef _Buffers _take_sources(object ids, object labels, Py_ssize_t outputs,
                            vector[LayoutSequence]& sequences):
    """Buffers of every ids (and labels) array, described in ``sequences``; room for ``outputs`` more."""
    ids = list(ids)
    labels = [None] * len(ids) if labels is None else list(labels)
    if len(labels) != len(ids):
        raise ValueError(f"got {len(ids)} input_ids arrays but {len(labels)} labels entries; "
                         f"pass one labels array (or None) per sequence")
    cdef Py_ssize_t i, n = len(ids)
    cdef _Buffers buffers = _Buffers.reserve(2 * n + outputs)
    cdef Py_buffer* view
    sequences.resize(n)  # default members: labels NULL, i.e. the ids are the labels
    for i in range(n):
        view = buffers.take(ids[i], False, 0, "ids", i)
        sequences[i].ids = view.buf
        sequences[i].length = view.shape[0]
        sequences[i].ids_itemsize = <int32_t>view.itemsize
        if labels[i] is not None:
            view = buffers.take(labels[i], False, 0, "labels", i)
            sequences[i].labels = view.buf
            sequences[i].labels_length = view.shape[0]
            sequences[i].labels_itemsize = <int32_t>view.itemsize
    return buffers


def write_layout(ids, labels, int64_t total_tokens, int64_t num_cu, int64_t pad_token_id,
                 int64_t label_pad_id, input_ids_out, labels_out, position_ids_out, seq_idx_out,
                 cu_seqlens_out):
    """Fills one packed row; see warppack/_packer.pyi and docs/architecture.md."""
    cdef vector[LayoutSequence] sequences
    cdef _Buffers buffers = _take_sources(ids, labels, 5, sequences)
    cdef LayoutOutput out
    buffers.output(input_ids_out, 8, "input_ids_out", <void**>&out.input_ids, &out.input_ids_size)
    buffers.output(labels_out, 8, "labels_out", <void**>&out.labels, &out.labels_size)
    buffers.output(position_ids_out, 8, "position_ids_out", <void**>&out.position_ids, &out.position_ids_size)
    buffers.output(seq_idx_out, 4, "seq_idx_out", <void**>&out.seq_idx, &out.seq_idx_size)
    buffers.output(cu_seqlens_out, 4, "cu_seqlens_out", <void**>&out.cu_seqlens, &out.cu_seqlens_size)
    cdef int64_t n = sequences.size()
    with nogil:
        cpp_write_layout(sequences.data(), n, total_tokens, num_cu, pad_token_id, label_pad_id, out)


def write_layout_into(ids, labels, int64_t total_tokens, int64_t num_cu, int64_t pad_token_id,
                      int64_t label_pad_id, buffer):
    """Fills one packed row inside one byte buffer; see warppack/_packer.pyi."""
    cdef vector[LayoutSequence] sequences
    cdef _Buffers buffers = _take_sources(ids, labels, 1, sequences)
    cdef Py_buffer* out = buffers.take(buffer, True, 1, "buffer")
    cdef int64_t n = sequences.size()
    with nogil:
        cpp_write_layout_buffer(sequences.data(), n, total_tokens, num_cu, pad_token_id, label_pad_id,
                                out.buf, out.len)
