"""Server configuration: flags, environment variables and the page-token key."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from server import config as cfg
from server.app import PAGE_TOKEN_KEY_BYTES
from server.store import SqliteJobStore, StoreError


def page_token_key(data_dir: Path) -> bytes:
    """The key of the SQLite store in `data_dir` (the default store keeps it there)."""

    async def read() -> bytes:
        store = SqliteJobStore(data_dir / "clonejob.db")
        try:
            return await store.page_token_key(PAGE_TOKEN_KEY_BYTES)
        finally:
            await store.close()

    return asyncio.run(read())


def parse(argv: list[str], env: dict[str, str]) -> cfg.Config:
    parser = argparse.ArgumentParser()
    cfg.add_serve_arguments(parser)
    return cfg.from_args(parser.parse_args(argv), env)


def test_config_flags_win_over_environment_over_defaults(tmp_path: Path) -> None:
    env = {"CLONEJOB_LISTEN": "127.0.0.1:7001", "CLONEJOB_MAX_WATCHES": "5"}
    config = parse(["--listen", "127.0.0.1:7002", "--data-dir", str(tmp_path)], env)
    assert config.listen == "127.0.0.1:7002"
    assert config.max_watches == 5
    assert config.heartbeat_interval == 30.0


def test_config_data_dir_from_environment_everywhere(tmp_path: Path) -> None:
    env = {"CLONEJOB_DATA_DIR": str(tmp_path / "srv")}
    assert cfg.default_data_dir(env) == tmp_path / "srv"  # also what sample-vm uses
    assert parse([], env).data_dir == tmp_path / "srv"
    assert cfg.default_data_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "clonejob"


def test_config_insecure_from_flag_or_environment(tmp_path: Path) -> None:
    assert parse(["--data-dir", str(tmp_path)], {}).insecure is False
    assert parse(["--insecure", "--data-dir", str(tmp_path)], {}).insecure is True
    assert parse(["--data-dir", str(tmp_path)], {"CLONEJOB_INSECURE": "1"}).insecure is True


def test_config_bad_environment_value_exits_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(["--data-dir", str(tmp_path)], {"CLONEJOB_MAX_WATCHES": "zero"})
    assert "CLONEJOB_MAX_WATCHES" in str(caught.value)


@pytest.mark.parametrize("text, expected", [("64MiB", 64 << 20), ("1GiB", 1 << 30), ("512", 512)])
def test_config_parse_size(text: str, expected: int) -> None:
    assert cfg.parse_size(text) == expected


def test_page_token_key_is_made_once_and_kept(tmp_path: Path) -> None:
    key = page_token_key(tmp_path)
    assert len(key) == PAGE_TOKEN_KEY_BYTES
    assert page_token_key(tmp_path) == key
    assert not list(tmp_path.glob("*.tmp"))


def test_page_token_key_refuses_a_short_key(tmp_path: Path) -> None:
    (tmp_path / "page-token.key").write_bytes(b"")  # as a crash mid-write could leave
    with pytest.raises(StoreError, match="not a 32-byte key"):
        page_token_key(tmp_path)
