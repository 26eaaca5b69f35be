"""Shared fixtures. Kept minimal: every test module in the tree shares this file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from reference_fakes import write_reference_data

# the reference implementation's published data files, kept beside the repository (never inside it);
# only tests/test_reference_published_files.py reads them
PUBLISHED_REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "reference-data"


@pytest.fixture(scope="session")
def reference_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reference-data folder in the published files' formats and layout, written by the tests
    (random values), so the reading and loading paths are tested on every clone."""
    return write_reference_data(tmp_path_factory.mktemp("reference-data"))


@pytest.fixture(scope="session")
def published_reference_data() -> Path:
    """Path of ../shared/reference-data, the reference's real files; skips with the reason when absent."""
    if not (PUBLISHED_REFERENCE_DATA / "official-checkpoint-keys.json").is_file():
        pytest.skip(
            f"the reference's published files are not at {PUBLISHED_REFERENCE_DATA} (they cannot ship "
            "with msrn: the reference has no license); the same formats are tested on generated copies"
        )
    return PUBLISHED_REFERENCE_DATA


def torch_on_one_thread() -> Iterator[None]:
    """Torch on one thread, then back: tiny training runs are faster so on a shared machine, and runs
    compared bit for bit need the same reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


one_thread = pytest.fixture(torch_on_one_thread, name="one_thread")  # for one test
one_thread_per_module = pytest.fixture(torch_on_one_thread, scope="module", name="one_thread_per_module")
