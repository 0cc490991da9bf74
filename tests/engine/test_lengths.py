"""lengths_of over the containers users have: examples, columns, numpy, Arrow."""

import numpy as np
import pytest
import torch

from warppack import lengths_of


def test_examples_columns_and_arrays():
    examples = [{"input_ids": [1, 2, 3]}, {"input_ids": np.arange(5)}, {"input_ids": torch.ones(2)}]
    assert lengths_of(examples).tolist() == [3, 5, 2]
    assert lengths_of({"input_ids": [[1], [1, 2]]}).tolist() == [1, 2]
    assert lengths_of([[1, 2], [3]]).tolist() == [2, 1]
    assert lengths_of(np.array([4, 5], dtype=np.int32)).dtype == np.int64
    assert lengths_of([{"ids": [1]}], column="ids").tolist() == [1]


def test_errors_name_the_example():
    with pytest.raises(KeyError, match=r"example 1 has no 'input_ids'"):
        lengths_of([{"input_ids": [1]}, {"text": "x"}])
    with pytest.raises(TypeError, match="example 0 is the int 3"):
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
