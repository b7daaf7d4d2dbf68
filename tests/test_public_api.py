"""The public surface of ``drifttrio`` and the no-trio promise of the pure layers."""

from __future__ import annotations

import subprocess
import sys

import pytest

import drifttrio

EXPECTED_PUBLIC = {
    "CapacityError",
    "CloseCode",
    "Config",
    "ConfigError",
    "DriftApp",
    "DriftError",
    "Hub",
    "ProtocolError",
    "PushConflict",
    "RoomNotFound",
    "RunningServer",
    "StorageError",
    "Subscription",
    "__version__",
    "open_hub",
    "open_server",
    "serve",
}


def test_all_is_exactly_the_expected_surface() -> None:
    assert set(drifttrio.__all__) == EXPECTED_PUBLIC
    assert len(drifttrio.__all__) == len(EXPECTED_PUBLIC), "duplicates in __all__"


@pytest.mark.parametrize("name", sorted(EXPECTED_PUBLIC))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(drifttrio, name) is not None


def test_public_classes_live_in_private_or_subpackage_modules() -> None:
    # Public namespaces only re-export: nothing is defined in drifttrio/__init__.py.
    for name in drifttrio.__all__:
        obj = getattr(drifttrio, name)
        module = getattr(obj, "__module__", None)
        if module is not None:
            assert module != "drifttrio", name
            assert module.startswith("drifttrio."), (name, module)


def test_version_is_a_string() -> None:
    assert isinstance(drifttrio.__version__, str)
    assert drifttrio.__version__.count(".") >= 1


def test_exception_tree() -> None:
    for exc in (
        drifttrio.ConfigError,
        drifttrio.ProtocolError,
        drifttrio.RoomNotFound,
        drifttrio.StorageError,
    ):
        assert issubclass(exc, drifttrio.DriftError)
    assert issubclass(drifttrio.DriftError, Exception)
    err = drifttrio.ProtocolError("nope")
    assert (err.message, err.status) == ("nope", 400)


def test_close_codes_are_documented_values() -> None:
    assert drifttrio.CloseCode.SLOW_CLIENT == 4008
    assert drifttrio.CloseCode.TOO_MANY_ERRORS == 4000
    assert drifttrio.CloseCode.MESSAGE_TOO_BIG == 1009
    assert drifttrio.CloseCode.GOING_AWAY == 1001


@pytest.mark.parametrize(
    "modules",
    [
        ["drifttrio.protocol"],
        ["drifttrio.core"],
        ["drifttrio.protocol", "drifttrio.core", "drifttrio.protocol.codec"],
    ],
)
def test_pure_layers_import_no_trio(modules: list[str]) -> None:
    imports = "; ".join(f"import {m}" for m in modules)
    code = (
        f"import sys; {imports}; "
        "bad = sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.') "
        "or m.startswith('trio_websocket') or m.startswith('hypercorn')); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{modules} pulled in: {result.stdout.strip()} {result.stderr}"


def test_subpackages_declare_all() -> None:
    import drifttrio.core
    import drifttrio.protocol
    import drifttrio.runtime

    for package in (drifttrio.protocol, drifttrio.core, drifttrio.runtime):
        for name in package.__all__:
            assert hasattr(package, name), (package.__name__, name)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = drifttrio.no_such_thing


def test_dir_lists_the_public_names() -> None:
    assert set(dir(drifttrio)) >= EXPECTED_PUBLIC


def test_star_import_gives_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from drifttrio import *", namespace)
    assert set(namespace) >= EXPECTED_PUBLIC
