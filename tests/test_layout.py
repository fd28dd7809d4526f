"""The package layout: the core never imports plotting or book-only code."""
import subprocess
import sys

CORE = ["sgwsss.data", "sgwsss.model", "sgwsss.losses", "sgwsss.refine", "sgwsss.crf", "sgwsss.evaluate",
        "sgwsss.train", "sgwsss.cli", "sgwsss.paper", "sgwsss.pipeline", "sgwsss.files"]


def test_core_imports_no_book_or_plotting_code():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'ipywidgets', 'IPython')"
              " or m.startswith('sgwsss.book'))\nprint(','.join(bad))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"the core imported book/plotting modules: {res.stdout.strip()}"
