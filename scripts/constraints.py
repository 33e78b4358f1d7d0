"""Regenerate the pinned install sets in constraints/ (``make constraints``).

Airflow's docs say to install Airflow and providers with the constraints file of the Airflow version
and Python: a set of versions known to work together, so that a new release of some dependency cannot
break an install made later. Those files live in Airflow's repository, which CI here cannot reach, so
this project keeps its own: one file per supported Airflow version and Python, resolved with uv from

- ``apache-airflow==<version>``,
- the repository's two distributions as the Makefile installs them, editable from the working tree:
  the provider (``pyproject.toml``) with every extra this repository installs (``dev``, ``deploy``,
  ``bench``, ``docs``), and the emulator (``klingfx-emulator/pyproject.toml``), which the provider's
  ``emulator`` extra requires; so the Makefile, CI, the benchmarks and the docs all install from the
  same pins,
- ``constraints/exclusions-<major.minor>.txt``: releases known to break that Airflow line, each with
  the reason (for example ``cryptography<51`` on 3.1).

The files hold ``name==version`` lines only, in the shape of Airflow's own constraints files, so
``pip install -c`` and ``uv pip install -c`` both take them. The project's own packages are left out.

    python scripts/constraints.py                 # every version and Python below (make constraints)
    python scripts/constraints.py 3.1.8           # one Airflow version, every Python
    python scripts/constraints.py 3.1.8 --python 3.10
    python scripts/constraints.py --upgrade       # the newest releases (else the current pins stay)

Regenerate after adding a dependency, when moving a supported line to a new patch release, or when the
drift job (``make drift``) shows that newer releases pass; then run ``.ci/run`` before committing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "constraints"
#: The emulator's source tree: a distribution of its own, required by the provider's ``emulator`` extra.
EMULATOR = ROOT / "klingfx-emulator"

#: The supported Airflow lines, each at the patch release CI tests, and the Pythons each is pinned for.
AIRFLOW_VERSIONS = ("3.1.8", "3.2.2", "3.3.2")
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
#: Every extra an install in this repository asks for.
EXTRAS = ("dev", "deploy", "bench", "docs")
#: Our own distributions: never pinned, always installed from the working tree.
OWN = ("airflow-provider-klingfx", "klingfx-emulator")


def uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(found).exists():
        sys.exit("uv is needed: `pip install uv` (the Makefile's venv has it: .venv/bin/python scripts/...)")
    return found


def exclusions_for(airflow: str) -> Path | None:
    line = ".".join(airflow.split(".")[:2])
    path = OUT / f"exclusions-{line}.txt"
    return path if path.exists() else None


def constraints_path(airflow: str, python: str) -> Path:
    """Where the pins for one Airflow version and Python live (Airflow's own layout)."""
    return OUT / airflow / f"constraints-{python}.txt"


def compile_one(airflow: str, python: str, *, upgrade: bool = False) -> Path:
    target = constraints_path(airflow, python)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.in"
        # Both trees as editables, not as bare pyproject.toml sources: uv would then look for
        # klingfx-emulator (the provider's `emulator` extra) and airflow-provider-klingfx (the
        # emulator's dependency) in the package registry, where the working tree's versions are not.
        requirements.write_text(f"apache-airflow=={airflow}\n-e {ROOT}[{','.join(EXTRAS)}]\n-e {EMULATOR}\n")
        raw = Path(tmp) / "out.txt"
        if target.exists() and not upgrade:
            # uv keeps the versions an existing output file pins, where they still resolve: adding
            # a dependency moves only what it must, as a lock file would.
            shutil.copy(target, raw)
        cmd = [
            uv(),
            "pip",
            "compile",
            "--quiet",
            "--python-version",
            python,
            "--no-header",
            "--no-annotate",
            "--strip-extras",
            str(requirements),
            *(arg for own in OWN for arg in ("--no-emit-package", own)),
            "-o",
            str(raw),
        ]
        excluded = exclusions_for(airflow)
        if excluded:
            cmd += ["--constraint", str(excluded)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        pins = sorted(
            (line for line in raw.read_text().splitlines() if "==" in line and not line.startswith("#")),
            key=str.lower,
        )
    header = [
        f"# Known-good versions for apache-airflow=={airflow} on Python {python}, with every extra of",
        "# airflow-provider-klingfx. Generated by `make constraints` (scripts/constraints.py) on",
        f"# {dt.date.today().isoformat()}; edit constraints/exclusions-*.txt and regenerate, never by hand.",
    ]
    if excluded:
        header.append(f"# Exclusions applied: constraints/{excluded.name}")
    target.write_text("\n".join([*header, *pins]) + "\n")
    return target


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[normalize(name)] = version.split(";")[0].strip()
    return pins


def normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def diff(path: Path) -> int:
    """Print how this interpreter's installed versions differ from the pins in *path*."""
    from importlib.metadata import distributions

    pins = read_pins(path)
    installed = {normalize(d.metadata["Name"]): d.version for d in distributions()}
    own = {normalize(name) for name in OWN} | {"pip", "uv", "setuptools", "wheel"}
    changed = [
        f"  {name}: {pins.get(name, '(not pinned)')} -> {version}"
        for name, version in sorted(installed.items())
        if name not in own and pins.get(name) != version
    ]
    # Pins of extras this venv did not install (deploy, bench) are not a difference.
    print(f"Installed versions that differ from {path} ({len(changed)}):")
    print("\n".join(changed) or "  none")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("airflow", nargs="*", default=AIRFLOW_VERSIONS, help="Airflow versions")
    parser.add_argument("--python", action="append", help="Python versions (default: all supported)")
    parser.add_argument(
        "--diff", type=Path, metavar="FILE", help="only compare this interpreter's packages with FILE"
    )
    parser.add_argument(
        "--upgrade", action="store_true", help="take the newest releases, not the versions pinned now"
    )
    args = parser.parse_args()
    if args.diff:
        sys.exit(diff(args.diff))
    for airflow in args.airflow:
        for python in args.python or PYTHONS:
            path = compile_one(airflow, python, upgrade=args.upgrade)
            print(f"{path.relative_to(ROOT)}: {len(read_pins(path))} pins", flush=True)


if __name__ == "__main__":
    main()
