# distutils: language = c++
"""Boundary to the C++ engine (cpp/): conversion and declarations only, no packing logic.

Sizes are computed and arrays allocated here; every check that protects memory is repeated in C++,
and every std::invalid_argument the engine throws surfaces as ValueError.
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


def plan_lengths(lengths, int64_t max_tokens, int strategy, int64_t max_seqs_per_bin,
                 int overlong, int64_t buffer_size, bint shuffle, seed):
    """Plans `lengths` into bins; see warppack/_packer.pyi and docs/architecture.md."""
    cdef PlanOptions options
    options.max_tokens = max_tokens
    options.strategy = strategy
    options.max_seqs_per_bin = max_seqs_per_bin
    options.overlong = overlong
    options.buffer_size = buffer_size
    options.shuffle = shuffle
    options.seed = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)

    cdef int bits = _lengths_bits(lengths)
    cdef const int32_t[::1] view32
    cdef const int64_t[::1] view64
    cdef const int32_t* data32 = NULL
    cdef const int64_t* data64 = NULL
    cdef int64_t n, pieces, bins
    if bits == 32:
        view32 = lengths
        n = view32.shape[0]
        if n > 0:
            data32 = &view32[0]
        with nogil:
            pieces = cpp_count_pieces(data32, n, options)
    else:
        view64 = lengths
        n = view64.shape[0]
        if n > 0:
            data64 = &view64[0]
        with nogil:
            pieces = cpp_count_pieces(data64, n, options)

    items = np.empty(pieces, dtype=np.int64)
    starts = np.empty(pieces, dtype=np.int64)
    sizes = np.empty(pieces, dtype=np.int64)
    offsets = np.empty(pieces + 1, dtype=np.int64)
    cdef int64_t[::1] items_v = items, starts_v = starts, sizes_v = sizes, offsets_v = offsets
    cdef int64_t* items_p = &items_v[0] if pieces > 0 else NULL
    cdef int64_t* starts_p = &starts_v[0] if pieces > 0 else NULL
    cdef int64_t* sizes_p = &sizes_v[0] if pieces > 0 else NULL
    with nogil:
        if bits == 32:
            bins = cpp_plan_lengths(data32, n, options, pieces, items_p, starts_p, sizes_p,
                                    &offsets_v[0])
        else:
            bins = cpp_plan_lengths(data64, n, options, pieces, items_p, starts_p, sizes_p,
                                    &offsets_v[0])
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
    cdef PlanOptions options
    options.max_tokens = max_tokens
    options.strategy = strategy
    options.max_seqs_per_bin = max_seqs_per_bin
    options.overlong = overlong
    options.buffer_size = 1
    options.shuffle = shuffle
    options.seed = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)

    cdef int bits = _lengths_bits(lengths)
    cdef const int32_t[::1] view32
    cdef const int64_t[::1] view64
    cdef const int32_t* data32 = NULL
    cdef const int64_t* data64 = NULL
    cdef Py_ssize_t n = lengths.shape[0]
    items = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] items_v = items
    cdef int64_t* items_p = &items_v[0] if n > 0 else NULL
    cdef _EngineArray offsets = _EngineArray()
    cdef int64_t bins = 0, tokens = 0
    cdef cbool planned
    if bits == 32:
        view32 = lengths
        if n > 0:
            data32 = &view32[0]
        with nogil:
            planned = cpp_plan_whole(data32, n, options, items_p, &offsets.data, &bins, &tokens)
    else:
        view64 = lengths
        if n > 0:
            data64 = &view64[0]
        with nogil:
            planned = cpp_plan_whole(data64, n, options, items_p, &offsets.data, &bins, &tokens)
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


cdef bint _int_format(const Py_buffer* view, Py_ssize_t itemsize):
    # itemsize 0 accepts int32 and int64 (token sources); outputs ask for one exact width.
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
    return (f[0] == b'i' or f[0] == b'l' or f[0] == b'q') and f[1] == 0


cdef object _bad_buffer(object obj, bint writable, Py_ssize_t itemsize, str what, Py_ssize_t index,
                        object error):
    # Messages are built only here, on failure: the success path runs once per sequence per batch.
    name = what if index < 0 else f"{what}[{index}]"
    width = "int32 or int64" if itemsize == 0 else f"int{itemsize * 8}"
    expected = f"a {'writable ' if writable else ''}C-contiguous 1-D {width} numpy array"
    hint = "; convert a torch tensor with .numpy()" if hasattr(obj, "numpy") else ""
    detail = f" ({error})" if error is not None else ""
    return TypeError(f"{name} must be {expected}, got {_describe(obj)}{detail}{hint}")


cdef int _acquire(object obj, Py_buffer* view, bint writable, Py_ssize_t itemsize,
                  str what, Py_ssize_t index=-1) except -1:
    cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
    if writable:
        flags |= PyBUF_WRITABLE
    try:
        PyObject_GetBuffer(obj, view, flags)
    except (BufferError, TypeError, ValueError) as error:
        raise _bad_buffer(obj, writable, itemsize, what, index, error) from None
    if view.ndim != 1 or not _int_format(view, itemsize):
        PyBuffer_Release(view)
        raise _bad_buffer(obj, writable, itemsize, what, index, None)
    return 0


cdef list _labels_list(list ids, object labels):
    if labels is None:
        return [None] * len(ids)
    labels = list(labels)
    if len(labels) != len(ids):
        raise ValueError(f"got {len(ids)} input_ids arrays but {len(labels)} labels entries; "
                         f"pass one labels array (or None) per sequence")
    return labels


cdef int _take_sequences(list ids, list labels, vector[LayoutSequence]& sequences, Py_buffer* views,
                         Py_ssize_t* held) except -1:
    # held counts the views acquired so far: the caller releases them, also after an error here.
    cdef Py_ssize_t i, n = len(ids)
    sequences.resize(n)
    for i in range(n):
        _acquire(ids[i], &views[held[0]], False, 0, "ids", i)
        held[0] += 1
        sequences[i].ids = views[held[0] - 1].buf
        sequences[i].length = views[held[0] - 1].shape[0]
        sequences[i].ids_itemsize = <int32_t>views[held[0] - 1].itemsize
        if labels[i] is not None:
            _acquire(labels[i], &views[held[0]], False, 0, "labels", i)
            held[0] += 1
            sequences[i].labels = views[held[0] - 1].buf
            sequences[i].labels_length = views[held[0] - 1].shape[0]
            sequences[i].labels_itemsize = <int32_t>views[held[0] - 1].itemsize
        else:
            sequences[i].labels = NULL
            sequences[i].labels_length = 0
            sequences[i].labels_itemsize = 8
    return 0


def write_layout(ids, labels, int64_t total_tokens, int64_t num_cu, int64_t pad_token_id,
                 int64_t label_pad_id, input_ids_out, labels_out, position_ids_out, seq_idx_out,
                 cu_seqlens_out):
    """Fills one packed row; see warppack/_packer.pyi and docs/architecture.md."""
    ids = list(ids)
    labels = _labels_list(ids, labels)
    cdef Py_ssize_t n = len(ids)
    cdef vector[LayoutSequence] sequences
    cdef Py_ssize_t slots = 2 * n + 5, held = 0, i
    cdef Py_buffer* views = <Py_buffer*>PyMem_Malloc(slots * sizeof(Py_buffer))
    if views == NULL:
        raise MemoryError()
    cdef LayoutOutput out
    try:
        _take_sequences(ids, labels, sequences, views, &held)
        _acquire(input_ids_out, &views[held], True, 8, "input_ids_out")
        held += 1
        out.input_ids = <int64_t*>views[held - 1].buf
        out.input_ids_size = views[held - 1].shape[0]
        _acquire(labels_out, &views[held], True, 8, "labels_out")
        held += 1
        out.labels = <int64_t*>views[held - 1].buf
        out.labels_size = views[held - 1].shape[0]
        _acquire(position_ids_out, &views[held], True, 8, "position_ids_out")
        held += 1
        out.position_ids = <int64_t*>views[held - 1].buf
        out.position_ids_size = views[held - 1].shape[0]
        _acquire(seq_idx_out, &views[held], True, 4, "seq_idx_out")
        held += 1
        out.seq_idx = <int32_t*>views[held - 1].buf
        out.seq_idx_size = views[held - 1].shape[0]
        _acquire(cu_seqlens_out, &views[held], True, 4, "cu_seqlens_out")
        held += 1
        out.cu_seqlens = <int32_t*>views[held - 1].buf
        out.cu_seqlens_size = views[held - 1].shape[0]
        with nogil:
            cpp_write_layout(sequences.data(), n, total_tokens, num_cu, pad_token_id, label_pad_id,
                             out)
    finally:
        for i in range(held):
            PyBuffer_Release(&views[i])
        PyMem_Free(views)


def write_layout_into(ids, labels, int64_t total_tokens, int64_t num_cu, int64_t pad_token_id,
                      int64_t label_pad_id, buffer):
    """Fills one packed row inside one byte buffer; see warppack/_packer.pyi."""
    ids = list(ids)
    labels = _labels_list(ids, labels)
    cdef Py_ssize_t n = len(ids)
    cdef vector[LayoutSequence] sequences
    cdef Py_ssize_t held = 0, i
    cdef Py_buffer* views = <Py_buffer*>PyMem_Malloc((2 * n + 1) * sizeof(Py_buffer))
    if views == NULL:
        raise MemoryError()
    cdef Py_buffer* out
    try:
        _take_sequences(ids, labels, sequences, views, &held)
        out = &views[held]
        try:
            PyObject_GetBuffer(buffer, out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE)
        except (BufferError, TypeError, ValueError) as error:
            raise TypeError(f"buffer must be a writable C-contiguous 1-D uint8 array, got "
                            f"{_describe(buffer)} ({error})") from None
        held += 1
        if out.ndim != 1 or out.itemsize != 1 or out.format == NULL or out.format[0] != b'B':
            raise TypeError(f"buffer must be a writable C-contiguous 1-D uint8 array, got {_describe(buffer)}")
        with nogil:
            cpp_write_layout_buffer(sequences.data(), n, total_tokens, num_cu, pad_token_id, label_pad_id,
                                    out.buf, out.len)
    finally:
        for i in range(held):
            PyBuffer_Release(&views[i])
        PyMem_Free(views)
