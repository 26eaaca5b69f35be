"""Shared fixtures. Kept minimal: every test module in the tree shares this file."""

from __future__ import annotations

from pathlib import Path

import pytest

# the reference implementation's published data files, kept beside the repository (never inside it)
REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "reference-data"


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """Path of ../shared/reference-data; tests that need it skip with a reason when it is absent."""
    if not (REFERENCE_DATA / "official-checkpoint-keys.json").is_file():
        pytest.skip(f"reference data not found at {REFERENCE_DATA} (see the design notes: tests read it from there)")
    return REFERENCE_DATA
