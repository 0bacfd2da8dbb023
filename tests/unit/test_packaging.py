"""The package as users install it: one top-level name, the shipped models inside it.

`.ci/check-package` builds the wheel and sdist and runs the demo from each in a fresh venv; these
tests pin, without a network, the configuration that makes that work.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from polypstream import runner

ROOT = Path(__file__).resolve().parents[2]


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_installs_under_polypstream_from_the_repository_layout() -> None:
    config = setuptools_config()
    assert all(name == "polypstream" or name.startswith("polypstream.") for name in config["packages"])
    assert config["package-dir"] == {"polypstream": "service", "polypstream.models": "models"}
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["polypstream"]
    assert script == "polypstream.cli:main"


def test_every_shipped_model_and_its_checksums_are_package_data() -> None:
    patterns = setuptools_config()["package-data"]["polypstream.models"]
    shipped = [line.split()[1].lstrip("*") for line in (ROOT / "models/SHA256SUMS").read_text().splitlines()]
    assert shipped, "models/SHA256SUMS lists no model"
    for name in [*shipped, "SHA256SUMS"]:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} would not be installed with the package"


def test_the_live_views_page_and_the_sample_clip_are_package_data() -> None:
    config = setuptools_config()
    for folder in ("static", "data"):
        package = f"polypstream.{folder}"
        assert package in config["packages"]  # else setuptools warns, and a future one may drop it
        patterns = config["package-data"][package]
        names = [f.name for f in (ROOT / "service" / folder).iterdir()]
        for name in names:
            assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{folder}/{name} would not be installed"
    page = {f.name for f in (ROOT / "service" / "static").iterdir()}
    assert {"index.html", "login.html", "app.js", "style.css"} <= page


def test_the_models_folder_is_the_installed_packages_then_the_checkouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(runner.MODELS_DIR_ENV, raising=False)
    package = tmp_path / "polypstream"
    package.mkdir()
    monkeypatch.setattr(runner, "__file__", str(package / "runner.py"))
    assert runner.models_dir() == tmp_path / "models"  # a checkout: models/ beside service/
    (package / "models").mkdir()
    assert runner.models_dir() == package / "models"  # installed: polypstream/models/
    monkeypatch.setenv(runner.MODELS_DIR_ENV, "/elsewhere")
    assert runner.models_dir() == Path("/elsewhere")


def test_the_docker_image_copies_the_models_before_installing_the_package() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    copy_models = next(i for i, line in enumerate(lines) if line.startswith("COPY models/"))
    install = next(i for i, line in enumerate(lines) if "pip install" in line and not line.startswith("#"))
    assert copy_models < install
