import subprocess
import sys


def test_core_never_imports_dagster():
    code = (
        "import importlib, pkgutil, sys\n"
        "import metarater_assets.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module(f'metarater_assets.core.{m.name}')\n"
        "bad = sorted(k for k in sys.modules if k == 'dagster' or k.startswith('dagster.'))\n"
        "print(len(list(pkgutil.iter_modules(core.__path__))))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 8  # every core module was imported
