"""Shared fixtures. Tests needing torch import it through `needs_torch`."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the train/export extras (torch)")


if "mutmut" in sys.modules:  # the mutation job (docs/testing.md, benchmarks/mutation.py)
    _popen_init = subprocess.Popen.__init__

    def _child_outside_the_coverage_pass(self, *args, env=None, **kwargs):
        # In mutmut's coverage pass ("stats") a capbatch child process would record
        # its hits through mutmut's config, which it cannot find from its own working
        # directory, and the test would fail on the unmutated code. Children run the
        # plain code in that pass and inherit the mutant under test in the others.
        if os.environ.get("MUTANT_UNDER_TEST") == "stats":
            env = {**(os.environ if env is None else env), "MUTANT_UNDER_TEST": ""}
        _popen_init(self, *args, env=env, **kwargs)

    subprocess.Popen.__init__ = _child_outside_the_coverage_pass
