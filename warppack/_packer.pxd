# Declarations of the C++ engine (cpp/warppack/*.hpp).
from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.memory cimport unique_ptr
from libcpp.vector cimport vector


cdef extern from "warppack/planner.hpp" namespace "warppack" nogil:
    cdef struct PlanOptions:
        int64_t max_tokens
        int strategy
        int64_t max_seqs_per_bin
        int overlong
        int64_t buffer_size
        cbool shuffle
        uint64_t seed

    int64_t cpp_count_pieces "warppack::count_pieces"(const int32_t* lengths, int64_t n, const PlanOptions& options) except +
    int64_t cpp_count_pieces "warppack::count_pieces"(const int64_t* lengths, int64_t n, const PlanOptions& options) except +
    int64_t cpp_plan_lengths "warppack::plan_lengths"(
        const int32_t* lengths, int64_t n, const PlanOptions& options, int64_t pieces,
        int64_t* items, int64_t* starts, int64_t* sizes, int64_t* bin_offsets) except +
    int64_t cpp_plan_lengths "warppack::plan_lengths"(
        const int64_t* lengths, int64_t n, const PlanOptions& options, int64_t pieces,
        int64_t* items, int64_t* starts, int64_t* sizes, int64_t* bin_offsets) except +

    cbool cpp_plan_whole "warppack::plan_whole"(
        const int32_t* lengths, int64_t n, const PlanOptions& options, int64_t* items,
        int64_t** bin_offsets, int64_t* num_bins, int64_t* num_tokens) except +
    cbool cpp_plan_whole "warppack::plan_whole"(
        const int64_t* lengths, int64_t n, const PlanOptions& options, int64_t* items,
        int64_t** bin_offsets, int64_t* num_bins, int64_t* num_tokens) except +
    void cpp_free_plan_buffer "warppack::free_plan_buffer"(int64_t* buffer)


cdef class _EngineArray:
    cdef int64_t* data
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]


cdef extern from "warppack/online.hpp" namespace "warppack" nogil:
    cdef cppclass CppOnlinePacker "warppack::OnlinePacker":
        CppOnlinePacker(int64_t max_tokens, int64_t max_seqs_per_bin, int64_t buffer_size) except +
        void push(int64_t key, int64_t length) except +
        void flush() except +
        const vector[int64_t]& out_keys()
        const vector[int64_t]& out_lengths()
        const vector[int64_t]& out_ends()
        void clear_output()
        vector[int64_t] pending_keys() except +
        vector[int64_t] pending_lengths() except +
        int64_t pending_size()
        int64_t max_tokens()
        int64_t max_seqs_per_bin()
        int64_t buffer_size()


cdef extern from "warppack/layout.hpp" namespace "warppack" nogil:
    cdef cppclass LayoutSequence:
        const void* ids
        int64_t length
        const void* labels
        int64_t labels_length
        int32_t ids_itemsize
        int32_t labels_itemsize

    cdef cppclass LayoutOutput:
        int64_t* input_ids
        int64_t input_ids_size
        int64_t* labels
        int64_t labels_size
        int64_t* position_ids
        int64_t position_ids_size
        int32_t* seq_idx
        int64_t seq_idx_size
        int32_t* cu_seqlens
        int64_t cu_seqlens_size

    void cpp_write_layout "warppack::write_layout"(
        const LayoutSequence* sequences, int64_t n, int64_t total_tokens, int64_t num_cu,
        int64_t pad_token_id, int64_t label_pad_id, const LayoutOutput& out) except +
    void cpp_write_layout_buffer "warppack::write_layout_buffer"(
        const LayoutSequence* sequences, int64_t n, int64_t total_tokens, int64_t num_cu,
        int64_t pad_token_id, int64_t label_pad_id, void* buffer, int64_t nbytes) except +


cdef class OnlinePacker:
    cdef unique_ptr[CppOnlinePacker] _engine
    cdef list _take_bins(self)
