"""lavaconv.lava.compat: Lava 0.10 / lava-dl 0.6 import on Python 3.11 only through our hook."""

import importlib.util
import subprocess
import sys

import pytest


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_var_model_needs_the_hook():
    plain = _python("import lava.magma.compiler.var_model")
    assert plain.returncode != 0
    assert "mutable default" in plain.stderr
    hooked = _python("import lavaconv.lava, lava.magma.compiler.var_model as m\n"
                     "a, b = m.CoreEncoder(), m.CoreEncoder()\n"
                     "assert a.x == b.x and a.x is not b.x")
    assert hooked.returncode == 0, hooked.stderr


def test_install_is_idempotent_and_first_on_meta_path():
    from lavaconv.lava import compat

    compat.install()
    compat.install()
    finders = [f for f in sys.meta_path if isinstance(f, compat._PatchingFinder)]
    assert len(finders) == 1 and sys.meta_path[0] is finders[0]


@pytest.mark.skipif(importlib.util.find_spec("h5py") is None,
                    reason="lava-dl's slayer and netx import h5py")
def test_lava_dl_imports_with_the_hook():
    done = _python("import lavaconv.lava, lava.lib.dl.slayer as s, lava.lib.dl.netx\n"
                   "assert 'obd' not in s.__all__ and not hasattr(s, 'obd')")
    assert done.returncode == 0, done.stderr


def test_a_changed_source_is_refused(tmp_path):
    from lavaconv.lava import compat

    module = tmp_path / "fake.py"
    module.write_text("x = 1\n")
    loader = compat._PatchingLoader("lava.magma.compiler.var_model", str(module))
    with pytest.raises(ImportError, match="does not contain"):
        loader.get_code("lava.magma.compiler.var_model")
