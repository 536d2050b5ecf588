"""The built wheel works on its own: installed outside the checkout, run from another folder,
with torchaudio not importable at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel file, site folder it is installed in with --target)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("dcls_core", "dcls_audio"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "dist"),
            str(source),
        ]
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("dcls_audio-*.whl")
    site = work / "site"
    installed = _run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    )
    assert installed.returncode == 0, installed.stderr
    return wheel, site


def test_wheel_holds_the_package_data_and_no_top_level_cli(installed_wheel):
    wheel, _ = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    assert (
        "dcls_audio/training/configs/demo.yaml" in names
        and "dcls_audio/training/configs/convnext_dcls_audio_tiny.yaml" in names
    )
    assert "dcls_audio/resources/class_labels_indices.csv" in names
    assert {"dcls_audio/py.typed", "dcls_core/py.typed", "dcls_audio/cli.py", "dcls_audio/__main__.py"} <= names
    assert not any("/" not in name and name.endswith(".py") for name in names), "a top-level module is installed"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "dcls-audio = dcls_audio.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _isolated_env(tmp_path: Path, site: Path) -> dict[str, str]:
    """PYTHONPATH: a torchaudio that cannot be imported, then the installed wheel (ahead of the
    checkout's editable install); no DCLS_* switches."""
    blocker = tmp_path / "blocker" / "torchaudio"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("torchaudio is blocked in this test")\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCLS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), str(site)])
    env["DCLS_AUDIO_DATA"] = str(tmp_path / "data")
    return env


def test_installed_command_trains_from_another_folder_without_torchaudio(installed_wheel, tmp_path, tone_h5):
    _, site = installed_wheel
    env = _isolated_env(tmp_path, site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    where = _run(
        [
            sys.executable,
            "-c",
            "import dcls_audio; print(dcls_audio.__file__)\n"
            "try:\n    import torchaudio\nexcept ImportError:\n    print('torchaudio blocked')",
        ],
        cwd=cwd,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines()[0].startswith(str(site))
    assert where.stdout.splitlines()[1] == "torchaudio blocked"

    script = site / "bin" / "dcls-audio"
    printed = _run([str(script), "train", "--print_config"], cwd=cwd, env=env)
    assert printed.returncode == 0, printed.stderr
    assert "fastvit_dcls_audio_sa24" in printed.stdout and "demo" in printed.stdout

    train_h5 = tone_h5(tmp_path / "train.h5", [[i % 3] for i in range(4)])
    val_h5 = tone_h5(tmp_path / "val.h5", [[0], [1], [2]], seed=1)
    overrides = {
        "model.depths": "[1, 1, 1, 1]",
        "model.dims": "[8, 16, 32, 64]",
        "model.kernel_count": "4",
        "model.dilated_kernel_size": "5",
        "data.train_files": str(train_h5),
        "data.val_files": str(val_h5),
        "data.batch_size": "2",
        "data.num_workers": "0",
        "trainer.max_steps": "2",
        "trainer.enable_progress_bar": "false",
        "run.output_dir": "runs",
    }
    args = [str(script), "train"] + [item for k, v in overrides.items() for item in (f"--{k}", v)]
    trained = _run(args, cwd=cwd, env=env)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert list((cwd / "runs").rglob("last.ckpt")), trained.stdout
    module = _run([sys.executable, "-m", "dcls_audio", "models"], cwd=cwd, env=env)
    assert module.returncode == 0 and "convnext_dcls_audio_tiny" in module.stdout, module.stderr
