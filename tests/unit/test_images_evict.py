"""images/evict.sh drops old image builds but never one that another checkout names."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

EVICT = Path(__file__).resolve().parents[2] / "images" / "evict.sh"


def _builds(images: Path, count: int) -> list[Path]:
    """count builds of the operator image, oldest first (modification times one minute apart)."""
    builds = []
    for i in range(count):
        build = images / f"operator-{i:016x}"
        (build / "rootfs").mkdir(parents=True)
        os.utime(build, (1_700_000_000 + 60 * i, 1_700_000_000 + 60 * i))
        builds.append(build)
    return builds


def _register(images: Path, checkout: Path, build: Path) -> None:
    records = checkout / "build" / "images"
    records.mkdir(parents=True)
    (records / "operator.json").write_text(json.dumps({"image": "x", "key": build.name[-16:], "dir": str(build)}))
    (images / "checkouts").mkdir(exist_ok=True)
    (images / "checkouts" / checkout.name).symlink_to(records)


def test_old_builds_go_beyond_the_newest_six_except_one_another_checkout_names(tmp_path):
    images = tmp_path / "images"
    builds = _builds(images, 10)
    _register(images, tmp_path / "other-checkout", builds[1])
    _register(images, tmp_path / "removed-checkout", builds[2])
    (images / "checkouts" / "removed-checkout").resolve().parent.parent.joinpath("build/images/operator.json").unlink()
    gone = tmp_path / "deleted-checkout"
    _register(images, gone, builds[3])
    subprocess.run(["rm", "-rf", str(gone)], check=True)

    result = subprocess.run([str(EVICT), str(images), "operator", "6"], capture_output=True, text=True, check=True)

    evicted = sorted(result.stdout.split())
    assert evicted == sorted(b.name[-16:] for b in (builds[0], builds[2], builds[3])), result.stdout
    assert [b.exists() for b in builds] == [False, True, False, False] + [True] * 6
    # The registration of a checkout that no longer exists is dropped; the others stay.
    assert sorted(p.name for p in (images / "checkouts").iterdir()) == ["other-checkout", "removed-checkout"]


def test_nothing_goes_while_there_are_six_builds_or_fewer(tmp_path):
    images = tmp_path / "images"
    builds = _builds(images, 6)
    result = subprocess.run([str(EVICT), str(images), "operator"], capture_output=True, text=True, check=True)
    assert result.stdout == "" and all(b.exists() for b in builds)


@pytest.mark.skipif(os.geteuid() != 0, reason="an overlay mount needs root")
def test_a_build_that_a_running_pods_overlay_uses_stays(tmp_path):
    """As the node agent runs a pod: in a mount namespace of its own, over the image's rootfs."""
    images = tmp_path / "images"
    builds = _builds(images, 8)
    upper, work, root = (tmp_path / d for d in ("upper", "work", "root"))
    for d in (upper, work, root):
        d.mkdir()
    options = f"lowerdir={builds[0] / 'rootfs'},upperdir={upper},workdir={work}"
    pod = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t overlay overlay -o {options} {root} && echo mounted && exec sleep 60"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert pod.stdout is not None and pod.stdout.readline().strip() == "mounted"
        result = subprocess.run([str(EVICT), str(images), "operator", "6"], capture_output=True, text=True, check=True)
    finally:
        pod.kill()
        pod.wait()
    assert result.stdout.split() == [builds[1].name[-16:]]
    assert builds[0].exists() and not builds[1].exists()
