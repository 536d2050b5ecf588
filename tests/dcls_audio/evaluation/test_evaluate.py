"""``dcls-audio eval``: outputs and their schema, equality with an independent forward, DDP."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import h5py
import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from dcls_audio import cli
from dcls_audio.data import AudioSetDataModule, ClassInfo, load_class_names
from dcls_audio.evaluation.evaluate import EvaluationModule, write_outputs
from dcls_audio.evaluation.metrics import tagging_metrics
from dcls_audio.features import LogMelFrontEnd
from dcls_audio.models import create_model, load_checkpoint, save_upstream_checkpoint
from dcls_audio.training.config import load_config
from dcls_audio.training.run import train

from dcls_testing import png_size


def _eval_h5(tone_h5, path: Path, labels: list[list[int]], num_classes: int = 527, seed: int = 0) -> Path:
    """Tones at 150 + 40 c Hz, each at a random phase, in clips named Y0000, Y0001, ..."""
    return tone_h5(
        path, labels, num_classes, seed, name_format="Y{:04d}", base_hz=150.0, step_hz=40.0, random_phase=True
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory, tone_h5):
    root = tmp_path_factory.mktemp("eval")
    labels = [[0], [1], [2], [0, 1], [2], [1], [0]]  # 7 clips: not divisible by 2
    eval_h5 = _eval_h5(tone_h5, root / "eval.h5", labels)
    train_h5 = _eval_h5(tone_h5, root / "train.h5", [[i % 3] for i in range(4)], seed=1)
    cfg = load_config(
        "demo",
        {
            "model.name": "convnext_dcls_audio_tiny",
            "model.depths": "[1, 1, 1, 1]",
            "model.dims": "[8, 16, 32, 64]",
            "model.kernel_count": "4",
            "model.dilated_kernel_size": "5",
            "data.train_files": str(train_h5),
            "data.val_files": str(eval_h5),
            "data.batch_size": "2",
            "data.num_workers": "0",
            "data.pin_memory": "false",
            "trainer.max_steps": "2",
            "trainer.enable_progress_bar": "false",
            "ema.enabled": "true",
            "run.output_dir": str(root / "runs"),
        },
    )
    result = train(cfg)
    return {"eval": eval_h5, "ckpt": result.best_checkpoint, "root": root}


def _independent_logits(net, h5_path: Path) -> np.ndarray:
    with h5py.File(h5_path) as h5:
        waves = torch.from_numpy(h5["waveform"][:])
    front_end = LogMelFrontEnd(augment=False).eval()
    with torch.no_grad():
        return net.eval()(front_end(waves)).numpy()


def test_eval_outputs_and_schema(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "eval",
                "--checkpoint",
                str(files["ckpt"]),
                "--data",
                str(files["eval"]),
                "--output-dir",
                str(out),
                "--accelerator",
                "cpu",
                "--num-workers",
                "0",
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    printed = captured.out
    for word in ("mAP", "mAUC", "d-prime", "clips    7", "3 scored of 527"):
        assert word in printed
    bar = captured.out.split("\n")[0]  # Lightning's bars draw on stdout, before the report
    assert "Evaluating" in bar and "Testing" not in bar and "DataLoader" not in bar

    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "per_class.csv",
        "per_class_ap.png",
        "predictions.npz",
    ]
    # 3 scored classes: one column, 7 in x (1.0 + 3 x 0.18 + 0.8) in at 100 dpi
    assert png_size(out / "per_class_ap.png") == (700, 234)
    assert str(out / "per_class_ap.png") in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mAP", "mAUC", "d_prime", "num_clips", "num_classes_scored"} <= set(metrics)
    assert metrics["num_clips"] == 7 and metrics["num_classes_scored"] == 3
    assert metrics["num_classes_without_positives"] == 524 and "excluded" in metrics["note"]

    pred = np.load(out / "predictions.npz")
    with h5py.File(files["eval"]) as h5:
        names = [n.decode() for n in h5["audio_name"][:]]
        target = h5["target"][:]
    assert list(pred["audio_name"]) == names
    assert pred["scores"].shape == (7, 527) and pred["scores"].dtype == np.float32
    np.testing.assert_array_equal(pred["target"], target.astype(np.uint8))
    np.testing.assert_allclose(pred["scores"], 1 / (1 + np.exp(-pred["logits"].astype(np.float64))), atol=1e-6)
    net = load_checkpoint(None, files["ckpt"])
    np.testing.assert_allclose(pred["logits"], _independent_logits(net, files["eval"]), atol=1e-4)

    # the metrics are computed from the logits (the same ranking as the scores, before float32
    # saturation of the sigmoid can tie them)
    scored = [c for c in range(527) if 0 < target[:, c].sum() < 7]
    ap = [average_precision_score(target[:, c], pred["logits"][:, c]) for c in scored]
    auc = [roc_auc_score(target[:, c], pred["logits"][:, c]) for c in scored]
    assert metrics["mAP"] == pytest.approx(np.mean(ap), abs=1e-6)
    assert metrics["mAUC"] == pytest.approx(np.mean(auc), abs=1e-6)

    with open(out / "per_class.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["index", "mid", "display_name", "AP", "AUC", "d_prime", "positives"]
    assert len(rows) == 527
    classes = load_class_names()
    assert [r["display_name"] for r in rows] == [c.display_name for c in classes]
    assert [int(r["positives"]) for r in rows] == target.sum(0).tolist()
    assert rows[5]["AP"] == "" and float(rows[1]["AP"]) == pytest.approx(ap[1], abs=1e-6)


def _written_module(n: int = 6, num_classes: int = 3):
    g = torch.Generator().manual_seed(0)
    targets = (torch.arange(n)[:, None] % num_classes == torch.arange(num_classes)).to(torch.uint8)
    logits = torch.randn(n, num_classes, generator=g) + 2 * targets
    return SimpleNamespace(
        result=tagging_metrics(logits, targets.float()),
        info={"checkpoint": "x.ckpt"},
        classes=[ClassInfo(c, f"/m/{c}", f"class {c}") for c in range(num_classes)],
        audio_names=[f"Y{i}" for i in range(n)],
        logits=logits,
        targets=targets,
        indices=torch.arange(n),
    )


def test_outputs_replace_old_files_whole_or_not_at_all(tmp_path, monkeypatch):
    module = _written_module()
    write_outputs(module, tmp_path)
    rows = list(csv.DictReader((tmp_path / "per_class.csv").read_text().splitlines()))
    assert [r["positives"] for r in rows] == ["2", "2", "2"]
    assert float(rows[1]["AUC"]) == pytest.approx(module.result.auc[1].item(), abs=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "predictions.npz")["logits"], module.logits.numpy())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_written(file, **arrays) -> None:  # as a full disk would
        (file.write if hasattr(file, "write") else Path(file).write_bytes)(b"PK half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", half_written)
    with pytest.raises(OSError, match="No space"):
        write_outputs(module, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temporary file left
    assert (tmp_path / "predictions.npz").read_bytes() == before["predictions.npz"]


def test_eval_of_an_upstream_pth_with_ema_choice(files, tmp_path, capsys):
    torch.manual_seed(0)
    net = create_model("convnext_audio_tiny")
    ema = create_model("convnext_audio_tiny")
    path = save_upstream_checkpoint(net, tmp_path / "upstream.pth", model_ema=ema)
    out = tmp_path / "up"
    assert (
        cli.main(
            [
                "eval",
                "-c",
                str(path),
                "-d",
                str(files["eval"]),
                "-o",
                str(out),
                "--use-ema",
                "--accelerator",
                "cpu",
                "--num-workers",
                "0",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    pred = np.load(out / "predictions.npz")
    np.testing.assert_allclose(pred["logits"], _independent_logits(ema, files["eval"]), atol=1e-4)
    assert json.loads((out / "metrics.json").read_text())["model"] == "convnext_audio_tiny"


def test_eval_errors_before_scoring(files, tmp_path, capsys, tone_h5):
    def run(*extra: str) -> int:
        return cli.main(["eval", "--accelerator", "cpu", "--num-workers", "0", *extra])

    assert run("-c", str(tmp_path / "nothing.ckpt"), "-d", str(files["eval"])) == 2
    assert "nothing.ckpt" in capsys.readouterr().err
    assert run("-c", str(files["ckpt"]), "-d", str(tmp_path / "missing.h5")) == 2
    assert "missing.h5" in capsys.readouterr().err
    other = _eval_h5(tone_h5, tmp_path / "ten.h5", [[1], [2]], num_classes=10)
    assert run("-c", str(files["ckpt"]), "-d", str(other)) == 2
    assert "527 classes" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run("-c", str(files["ckpt"]), "-d", str(files["eval"]), "-o", str(blocker / "out")) == 2
    assert "cannot write" in capsys.readouterr().err
    for bad in ("abc", "0", "1,x", "-2"):
        with pytest.raises(SystemExit) as exit_info:
            run("-c", str(files["ckpt"]), "-d", str(files["eval"]), "--devices", bad)
        assert exit_info.value.code == 2
        assert "argument --devices" in capsys.readouterr().err


def test_devices_option_values():
    parser = cli.build_parser()

    def devices(value: str):
        return parser.parse_args(["eval", "-c", "x.ckpt", "-d", "x.h5", "--devices", value]).devices

    assert devices("2") == 2 and devices("0,1") == [0, 1] and devices("auto") == "auto" and devices("3,") == [3]
    assert devices("-1") == -1  # all devices, as the trainer takes it


def test_two_process_ddp_eval_equals_one_process(files, tmp_path):
    net = load_checkpoint(None, files["ckpt"])
    results = {}
    for devices in (1, 2):
        dm = AudioSetDataModule(
            test_files=[files["eval"]], batch_size=2, num_workers=0, pin_memory=False, persistent_workers=False
        )
        out = tmp_path / f"dev{devices}"
        out.mkdir()
        module = EvaluationModule(net, dm.classes, out)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp_spawn" if devices > 1 else "auto",
            logger=False,
            enable_checkpointing=False,
            use_distributed_sampler=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.test(module, datamodule=dm, verbose=False)
        results[devices] = (json.loads((out / "metrics.json").read_text()), np.load(out / "predictions.npz"))
    (one, pred1), (two, pred2) = results[1], results[2]
    assert two["num_clips"] == one["num_clips"] == 7
    for key in ("mAP", "mAUC", "d_prime", "d_prime_of_mAUC", "num_classes_scored"):
        assert two[key] == one[key], key
    assert list(pred2["audio_name"]) == list(pred1["audio_name"])
    np.testing.assert_allclose(pred2["logits"], pred1["logits"], atol=1e-5)
