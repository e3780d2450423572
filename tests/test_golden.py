"""The golden manifests stay byte-identical, and the hostile ones stay rejected."""

import pytest
from golden import GOLDEN, golden_manifests

import thetadist as td
from thetadist.manifest.delta import apply_delta


def test_golden_manifests_are_reproduced_exactly() -> None:
    for name, data in golden_manifests().items():
        assert (GOLDEN / name).read_bytes() == data, f"{name} changed: the format is frozen"


@pytest.mark.parametrize("path", sorted((GOLDEN / "hostile").glob("*.tdm")), ids=lambda p: p.name)
def test_hostile_examples_rejected(path) -> None:
    with pytest.raises(td.ManifestError):
        td.Manifest.load(path)


def test_golden_patch_links_to_its_previous_version() -> None:
    v1 = td.Manifest.load(GOLDEN / "sample-v1.tdm")
    v2 = td.Manifest.load(GOLDEN / "sample-v2.tdm")
    assert v2.previous == v1.id
    assert 0 < td.diff(v1, v2).bytes_to_fetch < v2.total_size


def test_golden_aligned_patch_and_its_delta() -> None:
    v1 = td.Manifest.load(GOLDEN / "sample-v1.tdm")
    plain = td.Manifest.load(GOLDEN / "sample-v2.tdm")
    aligned = td.Manifest.load(GOLDEN / "sample-v2-aligned.tdm")
    assert aligned.derived and aligned.previous == v1.id
    delta = (GOLDEN / "sample-v2-aligned-from-v1.tddelta").read_bytes()
    assert apply_delta(v1, delta).encode() == aligned.encode()
    assert td.diff(v1, aligned).data_bytes_to_fetch < td.diff(v1, plain).data_bytes_to_fetch
