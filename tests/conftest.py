"""Session-wide test plumbing: which test is running, for tests/helpers/scripts.py's slow-marker check."""
from __future__ import annotations

import pytest

from tests.helpers import scripts


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # Set before the item's fixtures are set up (a module-scoped fixture that starts a run counts as
    # part of the first test that needs it) and cleared after its teardown.
    scripts.current_item = item
    try:
        return (yield)
    finally:
        scripts.current_item = None
