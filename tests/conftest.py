"""Pytest fixtures shared by every test folder; the helpers tests import are in `helpers.py`."""

from __future__ import annotations

import pytest
from helpers import tiny_model

from modeling_missrec import MISSRecModel


@pytest.fixture
def model() -> MISSRecModel:
    return tiny_model()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps a process-wide state once an `Accelerator` exists: reset it after the test."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
