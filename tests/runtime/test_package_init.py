"""What `import capbatch` promises (capbatch/__init__.py): Captioner and CaptionResult
on first use, listed by dir(), and the usual AttributeError for anything else."""

from __future__ import annotations

import pytest

import capbatch
from capbatch import captioner


def test_the_lazy_names_are_the_captioner_modules_own():
    assert capbatch.Captioner is captioner.Captioner
    assert capbatch.CaptionResult is captioner.CaptionResult


def test_dir_lists_the_lazy_names_with_the_modules_globals():
    names = dir(capbatch)
    assert names == sorted(names)
    assert {"Captioner", "CaptionResult", "__version__", "__all__"} <= set(names)


def test_an_unknown_name_is_the_usual_attribute_error():
    with pytest.raises(AttributeError) as raised:
        capbatch.Captioners  # noqa: B018 (the access is the test)
    assert str(raised.value) == "module 'capbatch' has no attribute 'Captioners'"
    assert not hasattr(capbatch, "_LAZY_NOT_THERE")
