"""Shared fixtures. Tests needing torch import it through `needs_torch`."""

from __future__ import annotations

import importlib.util

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the train/export extras (torch)")
