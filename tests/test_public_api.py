"""Every public name has a docstring, the package is typed (py.typed), and docs/API.md
lists every public function of hvd_dc."""

import importlib
import inspect
from pathlib import Path

import hvd_dc

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["hvd_dc", "hvd_dc.metrics", "hvd_dc.report", "hvd_dc.launch", "hvd_dc.install_horovod",
           "hvd_dc.interop", "hvd_dc.collectives", "hvd_dc.runtime", "hvd_dc.worker"]


def test_public_names_have_docstrings():
    missing = []
    for name in MODULES:
        mod = importlib.import_module(name)
        assert inspect.getdoc(mod), name
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not obj.__doc__:
                missing.append(f"{name}.{attr}")
    assert not missing, f"no docstring: {missing}"


def test_package_is_typed():
    assert (Path(hvd_dc.__file__).parent / "py.typed").exists()
    assert 'hvd_dc = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


def test_api_reference_lists_every_public_function():
    text = (ROOT / "docs" / "API.md").read_text()
    for attr in hvd_dc.__all__:
        assert f"`{attr}" in text, f"docs/API.md does not list hvd_dc.{attr}"
