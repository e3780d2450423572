import os
import random
from pathlib import Path

import pytest


def write_tree(
    root: Path,
    files: dict[str, bytes],
    *,
    executable: set[str] = frozenset(),
    empty_dirs: tuple[str, ...] = (),
) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if rel in executable:
            path.chmod(0o755)
    for rel in empty_dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    rng = random.Random(7)
    root = tmp_path / "build"
    write_tree(
        root,
        {
            "bin/game": rng.randbytes(300_000),
            "data/archive.pak": rng.randbytes(3_000_000),
            "data/zeros.bin": bytes(700_000),
            "readme.txt": b"hello\n",
            "empty.cfg": b"",
            "unicode/caf\u00e9.txt": "d\u00e9j\u00e0 vu\n".encode(),
        },
        executable={"bin/game"},
        empty_dirs=("saves/slot1",),
    )
    os.utime(root, None)
    return root
