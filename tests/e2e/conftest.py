"""Fixtures of the end-to-end tests; the helpers live in e2e_support.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import ServerPool


@pytest.fixture(scope="module")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pool = ServerPool(tmp_path_factory.mktemp("run"))
    yield pool
    pool.close()
