"""Assertions shared by several unit test files (tests/unit is on sys.path while they run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from textloc.errors import TLInputError


def expect_user_error(call: Callable[[], Any], *names: str) -> str:
    """Run `call`, expect a TLInputError naming every given string and a fix; return the message."""
    with pytest.raises(TLInputError) as error:
        call()
    message = str(error.value)
    for name in names:
        assert name in message, message
    assert "Fix:" in message
    return message
