"""lengths_of over the containers users have: examples, columns, numpy, Arrow."""

import numpy as np
import pytest
import torch

from warppack import lengths_of


def test_examples_columns_and_arrays():
    examples = [{"input_ids": [1, 2, 3]}, {"input_ids": np.arange(5)}, {"input_ids": torch.ones(2, dtype=torch.long)}]
    assert lengths_of(examples).tolist() == [3, 5, 2]
    assert lengths_of({"input_ids": [[1], [1, 2]]}).tolist() == [1, 2]
    assert lengths_of([[1, 2], [3]]).tolist() == [2, 1]
    assert lengths_of(np.array([4, 5], dtype=np.int32)).dtype == np.int64
    assert lengths_of([{"ids": [1]}], column="ids").tolist() == [1]


def test_errors_name_the_example():
    with pytest.raises(KeyError, match=r"example 1 has no 'input_ids'"):
        lengths_of([{"input_ids": [1]}, {"text": "x"}])
    with pytest.raises(TypeError, match=r"data\[0\] is 3 \(int\), not a sequence of token ids; pass an int array"):
        lengths_of([3, 4])


def test_arrow_offsets_without_a_row_loop():
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"input_ids": [[1, 2, 3], [4], [5, 6]]})
    assert lengths_of(table).tolist() == [3, 1, 2]
    chunked = pa.chunked_array([[[1, 2]], [[3], [4, 5, 6]]])
    assert lengths_of(chunked).tolist() == [2, 1, 3]
    with pytest.raises(KeyError, match="column 'labels' not in the table"):
        lengths_of(table, column="labels")


def test_hf_dataset_through_arrow_offsets_honours_select_and_shuffle():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1] * n for n in (5, 1, 7, 3)]})
    assert lengths_of(ds).tolist() == [5, 1, 7, 3]
    view = ds.select([3, 0, 2])
    assert lengths_of(view).tolist() == [3, 5, 7]
    shuffled = ds.shuffle(seed=1)
    assert lengths_of(shuffled).tolist() == [len(r["input_ids"]) for r in shuffled]
    with pytest.raises(KeyError, match="column 'labels' not in the dataset"):
        lengths_of(ds, column="labels")


@pytest.mark.parametrize(
    "data, error, match",
    [
        (["hello", "world"], TypeError, r"data\[0\] is 'hello' \(str\), not a sequence of token ids; tokenize first"),
        ({"text": [[1, 2]]}, KeyError, r"column 'input_ids' not in data; it has \['text'\]"),
        ({"text": [[1, 2]]}, ValueError, r"column 'input_ids' not in data"),
        ([{"input_ids": "some text"}], TypeError, r"example 0: 'input_ids' is 'some text' \(str\).*tokenize first"),
        ([[[1, 2]], [[3]]], TypeError, r"data\[0\] holds \[1, 2\] \(list\) at position 0, not an integer token id"),
        ([{"input_ids": np.asarray(3)}], TypeError, r"example 0: 'input_ids' is a ndarray of dtype int64 and shape \(\)"),
        ([None], TypeError, r"data\[0\] is None \(NoneType\)"),
        (np.array([1.5, 2.0]), TypeError, r"data has dtype float64; lengths_of reads a 1-D integer array"),
        (np.array([3, 2**63], np.uint64), ValueError, r"data\[1\] = 9223372036854775808 overflows int64"),
        (np.array([3, -1]), ValueError, r"data\[1\] = -1 is negative"),
        (np.ones((2, 3), np.int64), ValueError, r"data has shape \(2, 3\); lengths_of reads a 1-D integer array"),
        ((n for n in [[1], [2]]), TypeError, r"data must be a dataset, a list of examples.*got <generator"),
        (7, TypeError, r"data must be a dataset, a list of examples or sequences, or an array of lengths, got 7"),
    ],
)
def test_malformed_data_names_what_to_pass(data, error, match):
    with pytest.raises(error, match=match):
        lengths_of(data)


def test_arrow_columns_of_any_list_kind_and_of_lengths():
    pa = pytest.importorskip("pyarrow")
    table = pa.table({
        "input_ids": pa.array([[1, 2], [3, 4]], pa.list_(pa.int32(), 2)),  # fixed-size lists
        "large": pa.array([[1], [2, 3, 4]], pa.large_list(pa.int64())),
        "length": pa.array([5, 9], pa.int64()),  # an integer column is taken as the lengths
        "text": ["a b", "c"],
        "words": [["a"], ["b", "c"]],
        "nulls": pa.array([[1], None]),
    })
    assert lengths_of(table).tolist() == [2, 2]
    assert lengths_of(table, column="large").tolist() == [1, 3]
    assert lengths_of(table, column="length").tolist() == [5, 9]
    with pytest.raises(TypeError, match=r"column 'text' holds text \(string\), not lists of integer token ids.*tokenize"):
        lengths_of(table, column="text")
    with pytest.raises(TypeError, match=r"column 'words' holds list<item: string>"):
        lengths_of(table, column="words")
    with pytest.raises(ValueError, match=r"column 'nulls' has 1 null rows; drop or fill them"):
        lengths_of(table, column="nulls")
    with pytest.raises(ValueError, match=r"data\[0\] = -2 is negative"):
        lengths_of(pa.array([-2, 3]))


def test_an_empty_dataset_column_has_no_lengths():
    datasets = pytest.importorskip("datasets")
    empty = datasets.Dataset.from_dict({"input_ids": []})  # Arrow infers the null type
    assert lengths_of(empty).tolist() == [] and lengths_of(empty).dtype == np.int64
    nulls = datasets.Dataset.from_dict({"input_ids": [None, None]})
    with pytest.raises(ValueError, match=r"column 'input_ids' holds only nulls \(2 rows\)"):
        lengths_of(nulls)
