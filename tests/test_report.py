"""JSON outputs: standard JSON that strict parsers accept, undefined numbers as null."""
import math

import numpy as np
import pytest
import torch

from helpers import strict_json_loads
from unimatch.report import append_json_line, json_safe, to_json, write_json


def test_strict_parser_refuses_the_bare_tokens_python_writes_by_default():
    import json

    with pytest.raises(ValueError, match="NaN"):
        strict_json_loads(json.dumps({"precision": float("nan")}))


def test_non_finite_numbers_become_null_at_any_depth_and_scalars_become_numbers():
    payload = {"precision": float("nan"), "hd95": float("inf"), "asd": -math.inf, "dice": 0.5,
               "per_case": [{"hd95": np.float32("nan"), "dice": np.float64(0.25)}],
               "confusion": np.array([[1, 2], [3, 4]]), "loss": torch.tensor(float("nan")),
               "count": np.int64(3), "ok": True, "name": "case1", "none": None, "pair": (1.0, float("nan"))}
    parsed = strict_json_loads(to_json(payload))
    assert parsed == {"precision": None, "hd95": None, "asd": None, "dice": 0.5,
                      "per_case": [{"hd95": None, "dice": 0.25}], "confusion": [[1, 2], [3, 4]],
                      "loss": None, "count": 3, "ok": True, "name": "case1", "none": None, "pair": [1.0, None]}
    assert json_safe(float("nan")) is None


def test_files_and_json_lines_are_strict_json(tmp_path):
    write_json(tmp_path / "out" / "metrics.json", {"precision": float("nan")})
    assert strict_json_loads((tmp_path / "out" / "metrics.json").read_text()) == {"precision": None}
    for value in (float("nan"), 1.5):
        append_json_line(tmp_path / "metrics.jsonl", {"precision": value})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [strict_json_loads(line) for line in lines] == [{"precision": None}, {"precision": 1.5}]
