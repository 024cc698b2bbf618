"""A store that cannot be opened is a typed error, never a driver's exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from klarna_flow import Payments, StorageError, TokenCipher


def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "not-a-db.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="not a database"):
        Payments.sqlite(path, cipher=TokenCipher.ephemeral())


def test_an_unreachable_postgres_is_a_storage_error_without_the_password() -> None:
    url = "postgresql://someone:pw-never-shown@127.0.0.1:1/nowhere"
    with pytest.raises(StorageError) as caught:
        Payments.postgres(
            url, cipher=TokenCipher.ephemeral(), env={"POSTGRES_CONNECT_TIMEOUT": "1"}
        )
    assert "pw-never-shown" not in str(caught.value)
