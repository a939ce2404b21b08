"""Shared fixtures. Tests needing torch import it through `needs_torch`."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the train/export extras (torch)")

# Run first: the two longest tests (about 300 s and 230 s of the suite's ~9 minutes on
# 2 cores). Under `-n 2 --dist loadfile --no-loadscope-reorder` (README, Tests) each
# xdist worker starts with one of them, instead of one worker running both at the end.
LONGEST = ("tests/training/test_reproduce_default.py", "tests/tools/test_gpu_finetune_script.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in LONGEST)  # stable


@pytest.fixture
def reduced(tmp_path, monkeypatch):
    """A bundle whose "openvino bf16" encoder is another bundle's graph run by onnxruntime.

    Its captions differ from the reference's on some images, as a reduced precision's
    would; the reference encoder kept for close calls is the bundle's own. No openvino
    needed (tests/runtime/test_close_calls.py, tests/runtime/test_close_calls_redo.py).
    """
    import onnxruntime as ort

    import capbatch.bundle as bundle_module
    from tests.runtime_fakes import make_fake_bundle

    bundle = make_fake_bundle(tmp_path / "b")
    foreign = (make_fake_bundle(tmp_path / "other", seed=3) / "encoder.onnx").read_bytes()

    def perturbed_encoder(runtime, precision, model_bytes, threads):
        return ort.InferenceSession(foreign, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(bundle_module, "create_encoder", perturbed_encoder)
    return bundle


if "mutmut" in sys.modules:  # the mutation job (docs/testing.md, tools/mutation.py)
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
