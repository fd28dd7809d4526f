"""A stand-in Colab runtime, run as a script by tests/test_colab.py: ``python colab_standin.py PLAN.json``.

It puts a stand-in ``google.colab`` (with a fake ``drive``) in ``sys.modules``, starts an IPython
shell whose ``%pip`` installs into the plan's ``target`` folder (on ``sys.path``; Colab's own pip
installs into the runtime's Python), and runs the first code cell of every chapter as Colab would,
then the plan's extra steps. Nothing of the repository is on ``sys.path``: ``sgwsss`` comes from the
install, as in Colab. The last line printed is ``RESULT <json>``.

The plan (JSON): ``chapters`` (notebook paths), ``target``, ``drive`` (Drive mount succeeds),
``drive_root`` (what stands for ``/content/drive``), ``voc_md5`` / ``sbd_md5`` (of the small test
archives), ``steps``: any of ``"train_run"``, ``"ch8"``, ``"ch8-disconnect"``.
"""
import dataclasses
import importlib
import json
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

plan = json.loads(Path(sys.argv[1]).read_text())
result = {"pip": [], "mounts": [], "roots": {}}


def mount(mountpoint, **kwargs):
    result["mounts"].append(mountpoint)
    if not plan["drive"]:
        raise RuntimeError("credential propagation was unsuccessful")  # what Colab raises when declined
    Path(plan["drive_root"], "MyDrive").mkdir(parents=True, exist_ok=True)


google, colab, drive = (types.ModuleType(n) for n in ("google", "google.colab", "google.colab.drive"))
drive.mount, colab.drive, google.colab = mount, drive, colab
sys.modules.update({"google": google, "google.colab": colab, "google.colab.drive": drive})

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

shell = InteractiveShell.instance()


def point_at_stand_ins():
    """After the install: the fake Drive's folder for /content/drive, the test archives' MD5s (their
    public hosts dropped: only $SGWSSS_VOC_SOURCES, the local mirror, is tried), and the torch path
    of the refinement (the numba kernels would compile afresh for the new install, ~10 s)."""
    import sgwsss.book
    import sgwsss.data.download as dl
    from sgwsss.refine import _cpu_kernels

    sgwsss.book.COLAB_DRIVE = Path(plan["drive_root"]) / "MyDrive"
    dl.VOC2012_TRAINVAL = dataclasses.replace(dl.VOC2012_TRAINVAL, md5=plan["voc_md5"], urls=())
    dl.SBD_ARCHIVE = dataclasses.replace(dl.SBD_ARCHIVE, md5=plan["sbd_md5"], urls=())
    _cpu_kernels.available = lambda: False


def pip(line):
    result["pip"].append(line)
    if not Path(plan["target"], "sgwsss").is_dir():  # a later runtime reuses the first one's install
        subprocess.run([sys.executable, "-m", "pip", *shlex.split(line), "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "--target", plan["target"]], check=True)
    importlib.invalidate_caches()
    point_at_stand_ins()


shell.register_magic_function(pip, "line", "pip")


def run(source: str):
    res = shell.run_cell(source)
    if not res.success:
        raise SystemExit(f"cell failed: {res.error_before_exec or res.error_in_exec!r}\n{source}")


def cells(path):
    return ["".join(c["source"]) for c in json.loads(Path(path).read_text())["cells"] if c["cell_type"] == "code"]


for chapter in plan["chapters"]:
    run(cells(chapter)[0])
    root = shell.user_ns.get("root")
    result["roots"][Path(chapter).stem] = None if root is None else str(root)
    shell.user_ns.pop("root", None)

if "train_run" in plan["steps"]:
    run('run = book.train_run("smoke")\n'
        'step1, _ = book.load_model(run, "step1")\n'
        'final, meta = book.load_model(run, "final")')
    ns = shell.user_ns
    result["train_run"] = {"run": str(ns["run"]), "kind": ns["meta"]["kind"], "config": ns["meta"]["config"].name,
                           "work_dir": str(ns["book"].work_dir())}

for step in plan["steps"]:
    if step.startswith("ch8"):
        ch8 = [c for c in plan["chapters"] if Path(c).stem.startswith("08_")][0]
        code = cells(ch8)
        first = code[0]  # the install cell comes first in every chapter
        setup = next(c for c in code if "work = " in c and "get_config(" in c)  # the configuration and its folder
        training = next(c for c in code if "train(cfg" in c)
        run(first)
        run(setup)
        if step == "ch8-disconnect":  # the runtime goes away early in step 2 (no checkpoint there yet)
            import sgwsss.train

            def disconnect(event):
                if (event["step"], event["iteration"]) == (2, 1):
                    raise KeyboardInterrupt("runtime disconnected")

            real = sgwsss.train.train
            shell.user_ns["train"] = lambda *a, **k: real(*a, callback=disconnect, **k)
            res = shell.run_cell(training)
            result["ch8"] = {"interrupted": isinstance(res.error_in_exec, KeyboardInterrupt),
                             "work": str(shell.user_ns["work"])}
        else:
            run(training)
            r = shell.user_ns["result"]
            result["ch8"] = {"work": str(shell.user_ns["work"]), "resumed_from": r["resumed_from"],
                             "final": r["final_checkpoint"]}

print("RESULT " + json.dumps(result))
