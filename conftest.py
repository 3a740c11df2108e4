"""Names the docstring examples may use without importing them, as module code does.

``python -m pytest --doctest-modules tvdenoise`` (a CI step) runs every ``>>>`` example;
modules that import only ``from torch import Tensor`` would otherwise leave ``torch``
undefined there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict[str, Any]) -> None:
    doctest_namespace.update(np=np, torch=torch)
