"""constraints.txt is the one place versions are decided: requirements.txt, the installed
environment and every bundle's metadata.json must agree with it."""

import importlib.metadata
import json
import re
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
METADATA = sorted(REPO.glob("monai_bundles/*/configs/metadata.json"))


def _lines(path: Path):
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield line


def _pins() -> dict:
    """{canonical name: version} of constraints.txt; every line must be an exact pin."""
    pins = {}
    for line in _lines(REPO / "constraints.txt"):
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not an exact 'name==version' pin"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def _project_version() -> str:
    return re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1)


def test_constraints_pin_every_requirement():
    pins = _pins()
    for line in _lines(REPO / "requirements.txt"):
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.txt names {req.name}; constraints.txt has no pin"
        assert req.specifier.contains(
            pins[name], prereleases=True
        ), f"constraints.txt pins {req.name}=={pins[name]}, outside requirements.txt's {line!r}"


def test_installed_versions_are_the_pinned_ones():
    """The environment `make env` built is what constraints.txt says (a stale .venv fails here)."""
    pins = _pins()
    wrong = []
    # site-packages only: setuptools puts its vendored copies (packaging, tomli, ...) on sys.path
    # once imported, and those are not what pip installed.
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    for dist in importlib.metadata.distributions(path=site):
        name = canonicalize_name(dist.metadata["Name"])
        if name in pins and dist.version != pins[name]:
            wrong.append(f"{name}: installed {dist.version}, pinned {pins[name]}")
    assert not wrong, "run `make env` (or fix constraints.txt): " + "; ".join(wrong)


@pytest.mark.parametrize("path", METADATA, ids=[p.parent.parent.name for p in METADATA])
def test_bundle_metadata_versions_equal_the_pins(path):
    pins = _pins()
    meta = json.loads(path.read_text())
    named = {
        "monai": meta["monai_version"],
        "torch": meta["pytorch_version"],
        "numpy": meta["numpy_version"],
    }
    for key in ("required_packages_version", "optional_packages_version"):
        named.update(meta.get(key, {}))
    assert len(named) > 3
    for name, version in named.items():
        name = canonicalize_name(name)
        expected = _project_version() if name == "sslseg" else pins.get(name)
        assert expected is not None, f"{path}: {name} is not pinned in constraints.txt"
        assert version == expected, f"{path}: {name} {version}, constraints.txt says {expected}"


def test_metadata_found():
    assert {p.parent.parent.name for p in METADATA} >= {"dmd", "supervised_unet"}
