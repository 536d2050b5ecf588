"""The LightningModule that trains and validates an audio tagging backbone.

Batches are the DataModule's dicts (``waveform`` int16 (B, 320000), ``target`` (B, C),
``index`` (B,)). On the device: waveform -> log-mel front end (train-time augmentations in
training mode) -> batch mixup + label smoothing (training) -> backbone -> logits (B, C) ->
BCE-with-logits.

The training step never waits for the device: the batch is copied on a side stream
(:mod:`.transfer`), the augmentation and mixup draws are made on the host and sent together with one
non-blocking copy, the loss is logged as a device tensor for the loggers only (converted at
their logging steps; a progress-bar metric would be read every step), the progress bar's loss
is a host copy that is never waited for (:attr:`AudioTaggingModule.recent_loss`), the non-finite
loss check is decided on the device (:mod:`.step_guard`: a fused optimizer skips a bad update
itself and the run stops :data:`GUARD_LAG` steps later; other optimizers are checked before
their update), and on CUDA AdamW/Adam run fused (no per-parameter host work). With ``compile`` the
whole training forward (front end, augmentations, mixup, backbone, loss) is one compiled
function; CUDA-graph modes replay it. Validation gathers logits with clip indices and logs the exact AudioSet
metrics (``val/mAP``, ``val/mAUC``, ``val/d_prime``; ``*_ema`` for the EMA weights).

Checkpoints are self-describing: the backbone lives under ``net``, the EMA copy under
``ema_net``, and the hyper-parameters hold the model name, its kwargs, the class count and
the class names/mids.
"""

from __future__ import annotations

import hashlib
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from dcls_core.conv import autotune

from ..evaluation.metrics import AudioSetMetrics
from ..features import LogMelFrontEnd
from ..features.augment import MixupDraws, apply_mixup, draws_to, sample_mixup_draws
from ..models import CheckpointMismatchError, create_model, load_checkpoint
from .config import AugmentSection, ModelConfig, OptimConfig
from .ema import make_ema, update_ema
from .optim import build_optimizer, is_position_param, lr_lambda
from .step_guard import HostCopies, NonFiniteGuard, NonFiniteStep, supports_found_inf
from .transfer import SideStreamCopier

__all__ = ["GUARD_LAG", "AudioTaggingModule", "NonFiniteLossError"]

#: steps between a loss and the host's non-finite check of it when the optimizer skips bad
#: updates on the device (the read then finds the device long done: no wait)
GUARD_LAG = 3

_OPTIM, _AUGMENT, _MODEL = OptimConfig(), AugmentSection(), ModelConfig()  # the one place of each default

#: ``torch.compile`` modes that replay CUDA graphs (a replay overwrites the last one's outputs)
_CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


_BATCHES_KEY = "dcls_audio_batches_trained"
_CONV_CHOICES_KEY = "dcls_core_conv_choices"  # the convolution path measured per call shape


def batch_seed(seed: int, rank: int, batch: int) -> int:
    """The seed of training batch ``batch`` (0-based, counted over the run) on ``rank``: distinct
    streams per rank and batch, the same on every (re)start."""
    digest = hashlib.blake2b(f"{seed}/{rank}/{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2  # leaves room for the +1 / +2 offsets


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf (outside fp16 loss scaling)."""


def _seed_global_generators(seed: int, device: torch.device) -> None:
    """Seed torch's global generators that a training step on ``device`` draws from: the CPU's and
    ``device``'s. ``torch.manual_seed`` would seed every backend too, and for backends not
    initialised in this process it records the caller's stack each time (a per-step host cost)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)
    elif device.type != "cpu":
        torch.manual_seed(seed)


class AudioTaggingModule(L.LightningModule):
    """Audio tagging: front end + backbone + BCE, AdamW/LAMB with warm-up cosine, EMA.

    Args:
        model_name: a name from ``dcls_audio.models.list_models()``.
        num_classes: output classes.
        model_kwargs: extra ``create_model`` arguments (drop_path_rate, depths, ...).
        class_names, class_mids: per-class display names and ontology ids (stored).
        optimizer, lr, min_lr, weight_decay, betas, eps, position_lr_scale: the optimizer;
            ``lr`` is the absolute peak lr (already scaled to the total batch).
        Hyper-parameter defaults are the typed config's (:mod:`dcls_audio.training.config`).
        warmup_epochs, warmup_steps: warm-up length (steps win when given).
        front_end_augment: train-time roll / speed / erasing in the front end.
        mixup_alpha, label_smoothing: batch mixup and label smoothing of training targets.
        ema_decay: keep an EMA copy of the backbone with this decay (None: no EMA).
        freeze_positions: DCLS ``P`` / ``SIG`` are not trained.
        clamp_positions: call ``clamp_parameters()`` on layers that have it after each step.
        channels_last, compile: speed switches for the backbone.
        compile_mode: ``torch.compile`` mode with ``compile`` (``"reduce-overhead"`` replays
            CUDA graphs, ``"max-autotune"`` also tunes kernels).
        init_checkpoint, init_checkpoint_ema: provenance of fine-tuning (the weights are
            loaded by :meth:`load_initial_weights`, not here).
        seed: base seed of the augmentation generators (offset by rank and step).
        fused_optimizer: fused optimizer kernels (torch Adam/AdamW only); None: on CUDA.
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int,
        model_kwargs: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        class_mids: list[str] | None = None,
        optimizer: str = _OPTIM.optimizer,
        lr: float = _OPTIM.lr,
        min_lr: float = _OPTIM.min_lr,
        weight_decay: float = _OPTIM.weight_decay,
        betas: list[float] | None = None,
        eps: float | None = None,
        position_lr_scale: float = _OPTIM.position_lr_scale,
        warmup_epochs: float = _OPTIM.warmup_epochs,
        warmup_steps: int | None = None,
        front_end_augment: bool = _AUGMENT.front_end,
        mixup_alpha: float = _AUGMENT.mixup_alpha,
        label_smoothing: float = _AUGMENT.label_smoothing,
        ema_decay: float | None = None,
        freeze_positions: bool = False,
        clamp_positions: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str = _MODEL.compile_mode,
        init_checkpoint: str | None = None,
        init_checkpoint_ema: bool = False,
        seed: int = 0,
        fused_optimizer: bool | None = None,
    ) -> None:
        super().__init__()
        if compile_mode != "default" and not compile:
            raise ValueError(f"compile_mode={compile_mode!r} needs compile=True")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.save_hyperparameters()
        self.net = create_model(model_name, num_classes=num_classes, **(model_kwargs or {}))
        self.front_end = LogMelFrontEnd(augment=front_end_augment)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if freeze_positions:
            self._freeze_positions()
        self.net.to(memory_format=self.memory_format)
        self.ema_net = make_ema(self.net) if ema_decay is not None else None
        # one layer per distinct P: layers of a stage may share their positions
        owners = {id(m.P): m for m in self.net.modules() if hasattr(m, "clamp_parameters")} if clamp_positions else {}
        self._clampable = list(owners.values())
        self.val_metrics = AudioSetMetrics(num_classes)
        self.val_metrics_ema = AudioSetMetrics(num_classes) if ema_decay is not None else None
        self._mixup_generator = torch.Generator()
        self._batches_trained = 0  # training batches of this run so far (saved in checkpoints)
        self._undecodable = 0  # rows this rank's training batches left out (did not decode)
        #: rows the training batches of this start left out on all ranks (set when training ends)
        self.undecodable_rows = 0
        self._step_losses: list[torch.Tensor] = []  # this optimizer step's losses, checked before its update
        self._guard = NonFiniteGuard()
        self._loss_copies = HostCopies()
        self._copier = SideStreamCopier()
        self._reused_outputs = compile and compile_mode in _CUDA_GRAPH_MODES
        self._compiled_forward: Any = None  # the compiled training forward, made on first use
        if compile:
            self.net.compile(mode=compile_mode)  # validation and inference

    # ------------------------------------------------------------------ weights
    def _freeze_positions(self) -> None:
        for name, param in self.net.named_parameters():
            if is_position_param(name):
                param.requires_grad_(False)

    def load_initial_weights(self, path: str, use_ema: bool = False) -> str:
        """Fine-tuning start: load a checkpoint (ours, upstream ``.pth``, state_dict) into ``net``.

        When only its classifier differs in class count (as upstream's ``--finetune``), all
        other weights are loaded and the classifier keeps its fresh initialisation. The EMA
        copy starts from the loaded weights. Returns a one-line description.
        """
        hp = self.hparams
        try:
            load_checkpoint(self.net, path, use_ema=use_ema)
            message = f"initialised from {path}"
        except CheckpointMismatchError as err:
            source_classes = _head_only_mismatch(err, hp.num_classes)
            if source_classes is None:
                raise
            kwargs = {**(hp.model_kwargs or {}), "num_classes": source_classes}
            source = load_checkpoint(hp.model_name, path, use_ema=use_ema, **kwargs)
            head = _classifier_keys(self.net)
            self.net.load_state_dict({k: v for k, v in source.state_dict().items() if k not in head}, strict=False)
            message = (
                f"initialised from {path}; new {hp.num_classes}-class head "
                f"(the checkpoint has {source_classes} classes)"
            )
        if self.ema_net is not None:
            self.ema_net.load_state_dict(self.net.state_dict())
        return message

    # ------------------------------------------------------------------ forward
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) waveform -> (B, num_classes) logits."""
        return self.net(self._spectrogram(waveform))

    def _spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.front_end(waveform).contiguous(memory_format=self.memory_format)

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        self._guard.reset()
        self._loss_copies.clear()

    @property
    def recent_loss(self) -> float | None:
        """A recent training loss that the device has already computed (None before the first);
        reading it never waits for the device (the progress bar shows it)."""
        value = self._loss_copies.latest()
        return None if value is None else float(value)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """On CUDA, copy on a side stream (:class:`.transfer.SideStreamCopier`); else Lightning's."""
        if device.type != "cuda":
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return self._copier(batch, device)

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inside the compiled step: trace the plain module
            return self.net._call_impl(x)
        return self.net(x)

    def _train_forward(
        self, waveform: torch.Tensor, target: torch.Tensor, draws: Any, mix: MixupDraws | None
    ) -> torch.Tensor:
        """Waveforms (B, S) and targets (B, C), with this step's draws on their device -> loss."""
        x = self.front_end(waveform, draws)
        y = target.float()
        hp = self.hparams
        if mix is not None or hp.label_smoothing > 0:
            x, y = apply_mixup(x, target, mix, hp.label_smoothing)
        logits = self._backbone(x.contiguous(memory_format=self.memory_format))
        return F.binary_cross_entropy_with_logits(logits.float(), y)

    def _train_forward_fn(self) -> Any:
        """:meth:`_train_forward`, compiled as a whole (``mode=compile_mode``) with ``compile``."""
        if not self.hparams.compile:
            return self._train_forward
        if self._compiled_forward is None:
            self._compiled_forward = torch.compile(self._train_forward, mode=self.hparams.compile_mode)
        return self._compiled_forward

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_compiled_forward"] = None  # compiled code is not picklable; made again on use
        state["_copier"] = SideStreamCopier()  # CUDA streams and pending copies stay here
        state["_loss_copies"] = HostCopies()
        return state

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        waveform, target = batch["waveform"], batch["target"]
        self._undecodable += int(batch.get("undecodable", 0))  # a host int: no device wait
        hp = self.hparams
        self._seed_batch()
        draws = self.front_end.sample_augmentations(waveform.shape[0])  # host draws
        mix = None
        if hp.mixup_alpha > 0:
            mix = sample_mixup_draws(waveform.shape[0], hp.mixup_alpha, self._mixup_generator)
        draws, mix = draws_to(waveform.device, draws, mix)  # both in one non-blocking copy
        if self._reused_outputs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = self._train_forward_fn()(waveform, target, draws, mix)
        if self.trainer.precision != "16-mixed":
            # fp16 loss scaling skips such steps itself; anywhere else the guard keeps a bad
            # update from the weights (see on_before_optimizer_step)
            # a CUDA-graph replay overwrites its outputs: keep a copy of each micro-batch loss
            self._step_losses.append(loss.detach().clone() if self._reused_outputs else loss.detach())
        # loggers only: a progress-bar metric is turned into a Python number every step (a host
        # wait); the bar shows recent_loss instead. Logged on the steps whose metrics Lightning
        # writes to the loggers: a log call costs host time every step, which the step pays
        if self._writes_step_logs():
            self.log("train/loss", loss, prog_bar=False, batch_size=target.shape[0])
        self._loss_copies.push(loss.detach())
        return loss

    def _writes_step_logs(self) -> bool:
        """Whether Lightning writes the loggers' step metrics after this batch (every
        ``trainer.log_every_n_steps`` optimizer steps, and on the step a stop was asked for);
        True where the trainer's rule cannot be read, so that nothing is left out."""
        try:
            return bool(self.trainer._logger_connector.should_update_logs)
        except (AttributeError, RuntimeError, NotImplementedError):  # no trainer, or a Lightning without the rule
            return True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        losses, self._step_losses = self._step_losses, []
        if not losses:
            return
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()  # non-finite if any is
        skips_itself = supports_found_inf(optimizer)
        self._guard.lag = GUARD_LAG if skips_itself else 0
        if skips_itself:
            known = self._guard.poll()  # the previous step's decision, the same on every rank
            optimizer.found_inf = self._guard.update(loss, self.global_step)  # 1: no update
            self._guard.publish()
        else:  # nothing skips the update on the device: decide before it
            self._guard.update(loss, self.global_step)
            known = self._guard.poll()
        if known is not None:
            self._raise_non_finite(known)

    def _raise_non_finite(self, known: NonFiniteStep) -> None:
        if not known.here:
            raise NonFiniteLossError(f"training loss became non-finite on another rank at step {known.step}")
        raise NonFiniteLossError(f"training loss is {known.loss} at step {known.step} (epoch {self.current_epoch})")

    def _check_non_finite_now(self) -> None:
        known = self._guard.poll(now=True)
        if known is not None:
            self._raise_non_finite(known)

    def on_train_epoch_end(self) -> None:
        self._check_non_finite_now()

    def on_train_end(self) -> None:
        self._check_non_finite_now()
        total = self.trainer.strategy.reduce(
            torch.tensor(float(self._undecodable), device=self.device), reduce_op="sum"
        )
        self.undecodable_rows = int(total)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint must never hold what a non-finite step left (reading the state waits
        # for the device, as writing a checkpoint does anyway)
        self._check_non_finite_now()
        checkpoint[_BATCHES_KEY] = self._batches_trained
        checkpoint[_CONV_CHOICES_KEY] = autotune.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._batches_trained = int(checkpoint.get(_BATCHES_KEY, 0))
        # a resumed run convolves each layer on the path it measured first
        autotune.load_state_dict(checkpoint.get(_CONV_CHOICES_KEY, {}))

    def _seed_batch(self) -> None:
        """Seed every random draw of this training batch from (seed, rank, batches trained): the
        augmentation and mixup generators and torch's global generators (drop-path, dropout). A run
        resumed from any checkpoint then draws what the uninterrupted run drew. Under CUDA-graph
        compile modes the graphs keep their own RNG state and the global generators are left alone."""
        seed = batch_seed(self.hparams.seed, self.global_rank, self._batches_trained)
        self._batches_trained += 1
        self.front_end.set_seed(seed)
        self._mixup_generator.manual_seed(seed + 1)
        if not self._reused_outputs:
            _seed_global_generators(seed + 2, self.device)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.hparams.clamp_positions:
            for module in self._clampable:
                module.clamp_parameters()
        if self.ema_net is not None:
            update_ema(self.ema_net, self.net, self.hparams.ema_decay)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = self._spectrogram(batch["waveform"])
        target, index = batch["target"], batch["index"]
        logits = self.net(x)
        if self._reused_outputs:  # the metric keeps the logits; the next replay overwrites its buffer
            logits = logits.to(torch.float32, copy=True)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        self.log("val/loss", loss, sync_dist=True, batch_size=target.shape[0])
        self.val_metrics.update(logits, target, index)
        if self.ema_net is not None:
            self.val_metrics_ema.update(self.ema_net(x), target, index)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val", "")
        if self.val_metrics_ema is not None:
            self._log_metrics(self.val_metrics_ema, "val", "_ema")

    def _log_metrics(self, metric: AudioSetMetrics, stage: str, suffix: str) -> None:
        result = metric.compute()  # gathered over ranks: the same numbers on every rank
        if not suffix:  # for the figures of validation_figures.py, which run after this hook
            self.last_validation = (result, *metric.gathered()[1:])
        metric.reset()
        values = {
            "mAP": result.mAP,
            "mAUC": result.mAUC,
            "d_prime": result.d_prime,
            "d_prime_of_mAUC": result.d_prime_of_mAUC,
            "num_classes_scored": float(result.num_classes_scored),
        }
        self.log_dict(
            {f"{stage}/{k}{suffix}": v for k, v in values.items()},
            prog_bar=False,
            sync_dist=False,
            rank_zero_only=False,
        )

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        fused = hp.fused_optimizer if hp.fused_optimizer is not None else self.device.type == "cuda"
        optimizer = build_optimizer(
            self.net,
            hp.optimizer,
            hp.lr,
            hp.weight_decay,
            hp.position_lr_scale,
            betas=hp.betas,
            eps=hp.eps,
            fused=fused,
        )
        total_steps = int(self.trainer.estimated_stepping_batches)
        warmup = hp.warmup_steps
        if warmup is None:
            batches = self.trainer.num_training_batches
            accumulate = self.trainer.accumulate_grad_batches
            steps_per_epoch = max(1, -(-int(batches) // accumulate)) if batches != float("inf") else 0
            warmup = round(hp.warmup_epochs * steps_per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, hp.lr, hp.min_lr))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _classifier_keys(net: nn.Module) -> set[str]:
    """State-dict keys of the network's classifier (timm ``get_classifier()``)."""
    classifier = net.get_classifier()
    for name, module in net.named_modules():
        if module is classifier:
            return {f"{name}.{key}" for key in module.state_dict()}
    raise ValueError(f"{type(net).__name__}: classifier not found among its modules")


def _head_only_mismatch(err: CheckpointMismatchError, num_classes: int) -> int | None:
    """The checkpoint's class count if only the classifier's (out, ...) shapes differ."""
    if err.missing or err.unexpected or not err.mismatched:
        return None
    counts = {have[0] for _, have, want in err.mismatched if want[0] == num_classes}
    if len(err.mismatched) > 2 or len(counts) != 1:
        return None
    return counts.pop()
