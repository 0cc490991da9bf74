"""Loads the JSON documents next to these task YAMLs (no hub access, whatever the working directory)."""

import json
from pathlib import Path

import datasets

DATA = Path(__file__).resolve().parent / "data"


def load(file, **_):
    """lm-eval ``custom_dataset``: ``data/<file>`` (a JSON list of documents) as the ``test`` split."""
    documents = json.loads((DATA / file).read_text())
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(documents)})
