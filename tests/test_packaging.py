"""The two wheels built from this repository: what each distribution ships, and nothing more.

Every Airflow worker, triggerer and api-server installs the provider's wheel, so the emulator of
the API (a distribution of its own, klingfx-emulator/) must not be in it, while the views' templates
and static files, which are not Python, must. Each wheel is built from the working tree with uv (as
``uv build --wheel``), about a second each.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UI = REPO / "airflow_provider_klingfx" / "ui"


def build(source: Path, out: Path, *kinds: str) -> None:
    """Build the distributions (``--wheel``, ``--sdist``) of the project in ``source`` into ``out``."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is needed to build the distributions (the Makefile's venv has it)")
    subprocess.run(
        [uv, "build", *kinds, "--quiet", "--out-dir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )


def build_wheel(source: Path, out: Path) -> zipfile.ZipFile:
    """Build the wheel of the distribution in ``source`` into ``out`` and open it."""
    build(source, out, "--wheel")
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


@pytest.fixture(scope="module")
def provider_dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The provider's wheel and sdist, as a release would upload them."""
    out = tmp_path_factory.mktemp("provider-dists")
    build(REPO, out, "--wheel", "--sdist")
    return out


@pytest.fixture(scope="module")
def provider_wheel(provider_dists: Path) -> list[str]:
    (wheel,) = provider_dists.glob("*.whl")
    with zipfile.ZipFile(wheel) as opened:
        return opened.namelist()


@pytest.fixture(scope="module")
def emulator_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    with build_wheel(REPO / "klingfx-emulator", tmp_path_factory.mktemp("emulator-wheel")) as wheel:
        yield wheel


def test_the_provider_wheel_holds_no_file_of_the_emulator(provider_wheel: list[str]) -> None:
    assert [n for n in provider_wheel if "emulator" in n.lower()] == []
    packages = {n.split("/", 1)[0] for n in provider_wheel if not n.split("/", 1)[0].endswith(".dist-info")}
    assert packages == {"airflow_provider_klingfx"}


def test_the_provider_wheel_holds_the_views_templates_and_static_files(provider_wheel: list[str]) -> None:
    assets = sorted(
        p.relative_to(REPO).as_posix()
        for folder in ("templates", "static")
        for p in (UI / folder).rglob("*")
        if p.is_file()
    )
    assert len(assets) >= 6  # 4 templates, a stylesheet and a script when this was written
    assert [a for a in assets if a not in provider_wheel] == []
    assert "airflow_provider_klingfx/py.typed" in provider_wheel


def test_the_emulator_wheel_holds_its_package_and_its_command(emulator_wheel: zipfile.ZipFile) -> None:
    names = emulator_wheel.namelist()
    packages = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert packages == {"klingfx_emulator"}
    for module in ("__init__", "__main__", "cli", "server", "routes", "render"):
        assert f"klingfx_emulator/{module}.py" in names
    assert "klingfx_emulator/py.typed" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = configparser.ConfigParser()
    scripts.read_string(emulator_wheel.read(entry_points).decode())
    assert scripts["console_scripts"]["klingfx-emulator"] == "klingfx_emulator.cli:main"
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [
        line.split(":", 1)[1].strip()
        for line in emulator_wheel.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    assert any(r.startswith("airflow-provider-klingfx") for r in requires)  # the vendor's rules, shared


def test_the_provider_wheel_ships_the_example_dags(provider_wheel: list[str]) -> None:
    examples = sorted(p.name for p in (REPO / "example_dags").glob("example_*.py"))
    assert examples
    shipped = sorted(
        n.rsplit("/", 1)[1] for n in provider_wheel if n.startswith("airflow_provider_klingfx/example_dags/")
    )
    assert shipped == examples


def test_the_sdist_holds_what_make_test_needs(provider_dists: Path) -> None:
    (sdist,) = provider_dists.glob("*.tar.gz")
    with tarfile.open(sdist) as opened:
        top = {name.split("/")[1] for name in opened.getnames() if name.count("/") >= 1}
    assert {"Makefile", "scripts", "constraints", "klingfx-emulator", "tests", "docs", "CHANGELOG.rst"} <= top
    assert "_build" not in " ".join(top)


def test_both_distributions_pass_twine_check(provider_dists: Path, tmp_path: Path) -> None:
    """What a package index checks on upload: the metadata, and the README rendered as the long
    description (its links absolute, so they work on the index's page)."""
    build(REPO / "klingfx-emulator", tmp_path, "--wheel", "--sdist")
    dists = [*provider_dists.iterdir(), *tmp_path.iterdir()]
    dists = [d for d in dists if d.suffix in {".whl", ".gz"}]
    assert len(dists) == 4
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dists)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (REPO / "README.md").read_text()
    relative = [link for link in re.findall(r"\]\(([^)]+)\)", readme) if "://" not in link]
    assert relative == []
