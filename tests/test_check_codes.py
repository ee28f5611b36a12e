"""The C core's check codes are named after the reasons of vring._errors, one to one, and turn into errors
through the module's own mapping (not by their position in CHAIN_REASONS / USED_REASONS)."""

from __future__ import annotations

import pytest

from vring import MalformedChain, MalformedUsed
from vring._errors import CHAIN_REASONS, USED_REASONS

from conftest import twin_module


@pytest.fixture
def cring():
    return twin_module("cython")


@pytest.mark.parametrize("codes_name, reasons", [("CHAIN_CHECK_CODES", CHAIN_REASONS),
                                                 ("USED_CHECK_CODES", USED_REASONS)])
def test_one_code_per_reason(cring, codes_name, reasons):
    codes = getattr(cring, codes_name)
    assert set(codes) == set(reasons) and len(codes) == len(reasons)
    assert len(set(codes.values())) == len(codes), "two reasons share a code"
    assert all(isinstance(code, int) and code > 0 for code in codes.values())  # 0 means "no error" in C


def test_each_chain_code_words_its_reason(cring):
    for reason, code in cring.CHAIN_CHECK_CODES.items():
        error = cring._chain_check_error(code, 3, 1, False, 0, 0)
        assert isinstance(error, MalformedChain)
        assert error.reason == reason and f"({reason})" in str(error)


def test_each_used_code_words_its_reason(cring):
    for reason, code in cring.USED_CHECK_CODES.items():
        error = cring._used_check_error(code, 5, 0, 0)
        assert isinstance(error, MalformedUsed)
        assert error.reason == reason and f"({reason})" in str(error)
