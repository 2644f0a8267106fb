"""Shared pieces of the benchmarks: models, data, timing, peak memory and the JSON result files.

Every benchmark measures its baseline in the same run and prints ratios against it. Nothing here
is a test; timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended: ComfyUI's own modules (e.g. `nodes`) must stay in front

from headless.tiny_model import TINY_UNET_CONFIG  # noqa: E402  (after the path set-up above)

RESULTS_DIR = ROOT / "bench" / "results"

# ComfyUI's UNetModel arguments for SD1.5 (as model detection reads them from a real checkpoint).
SD15_UNET_CONFIG: dict[str, Any] = {
    **TINY_UNET_CONFIG,  # the fixed SD1.5 fields (320 channels, 768 context, conv proj_in, 8 heads)
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
}

# SD2.x: SD1.5's layout with OpenCLIP-H's 1024-wide text, linear projections and 64-channel heads.
SD2_UNET_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,
    "context_dim": 1024,
    "use_linear_in_transformer": True,
    "num_heads": -1,
    "num_head_channels": 64,
}

# SDXL base (as model detection reads it from the checkpoint): three levels, 2048-wide text of CLIP-L + bigG.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# SD1.5's widths, heads and attention levels (maps at 64, 32, 16 and 8 at 512 px), one res block
# per level instead of two: the same attention shapes at about half the compute.
SD15_REDUCED_UNET_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,
    "num_res_blocks": [1, 1, 1, 1],
    "transformer_depth": [1, 1, 1, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 0, 0],
}


# ---------------------------------------------------------------------------------------------- numbers


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def ratio(value: float, baseline: float) -> float:
    """value / baseline; NaN when the baseline is zero or missing (never a division error)."""
    if not baseline or not math.isfinite(baseline):
        return float("nan")
    return value / baseline


def fmt_ratio(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2f}x"


def verdict(value: float, target: str) -> str:
    """'met' / 'missed' for a target written as '<= 1.10', '>= 1.3' or '1.00 +- 0.05'."""
    if not math.isfinite(value):
        return "n/a"
    text = target.replace(" ", "")
    if text.startswith("<="):
        return "met" if value <= float(text[2:]) else "missed"
    if text.startswith(">="):
        return "met" if value >= float(text[2:]) else "missed"
    if "+-" in text:
        centre, spread = (float(p) for p in text.split("+-"))
        return "met" if abs(value - centre) <= spread else "missed"
    raise ValueError(f"unknown target {target!r}")


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None
              ) -> list[float]:
    """Wall-clock seconds of `repeats` calls of fn after `warmup` untimed ones."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     sync: Callable[[], None] | None = None,
                     before: dict[str, Callable[[], Any]] | None = None) -> dict[str, list[float]]:
    """Like time_call for several variants, alternating them each round so drift hits all alike.

    before[name]() runs untimed ahead of each call of fns[name] (e.g. loading that variant's model).
    """
    sync = sync or (lambda: None)
    before = before or {}
    for name, fn in fns.items():
        for _ in range(warmup):
            before.get(name, lambda: None)()
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            before.get(name, lambda: None)()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------- memory


def _proc_status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS starts from what is in use."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


@dataclass
class PeakMemory:
    """Peak memory of a block, in bytes above what was in use when it started.

    CUDA: torch.cuda.max_memory_allocated (tensors only). CPU: the process's peak resident set
    size (VmHWM, reset through /proc/self/clear_refs) minus its RSS at the start, after a garbage
    collection and malloc_trim; where /proc cannot be reset, RSS sampled every millisecond by psutil.
    """

    device: torch.device
    method: str = ""
    peak_bytes: int = 0
    total_peak_bytes: int = 0
    """The absolute peak: all tensors on the GPU (CUDA), the whole process's peak RSS (CPU)."""
    reserved_peak_bytes: int = 0
    """CUDA only: the caching allocator's peak reservation (what the card must really hold, less the context)."""
    _start: int = 0
    _samples: list[int] = field(default_factory=list)

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated minus allocated at start"
            yield self
            torch.cuda.synchronize(self.device)
            self.total_peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.reserved_peak_bytes = torch.cuda.max_memory_reserved(self.device)
            self.peak_bytes = self.total_peak_bytes - self._start
            return
        _release_free_memory()
        if _can_reset_peak_rss():
            self.method = "peak RSS (VmHWM after clear_refs reset) minus RSS at start, after malloc_trim"
            self._start = (_proc_status_kib("VmRSS") or 0) * 1024
            yield self
            self.total_peak_bytes = (_proc_status_kib("VmHWM") or 0) * 1024
            self.peak_bytes = self.total_peak_bytes - self._start
            return
        import psutil

        self.method = "RSS sampled every 1 ms by psutil, peak minus RSS at start, after malloc_trim"
        process = psutil.Process()
        self._start = process.memory_info().rss
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                self._samples.append(process.memory_info().rss)
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()
        self.total_peak_bytes = max(self._samples + [process.memory_info().rss])
        self.peak_bytes = self.total_peak_bytes - self._start


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int, str]:
    """(peak bytes above the start, how it was measured) of one call of fn."""
    meter = PeakMemory(device)
    with meter.measure():
        fn()
    return meter.peak_bytes, meter.method


def mib(count: int) -> float:
    return count / 2**20


# ---------------------------------------------------------------------------------------------- results


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return info


def result_record(name: str, data: dict[str, Any], device: torch.device | None = None,
                  argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON document of one benchmark run: what, when, where, how it was started, and the numbers."""
    return {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "command": " ".join(argv if argv is not None else [Path(sys.executable).name, *sys.argv]),
        **data,
    }


def write_result(name: str, data: dict[str, Any], device: torch.device | None = None,
                 out_dir: Path | None = None, argv: Sequence[str] | None = None) -> Path:
    """Write bench/results/<name>.json (atomically) and return its path.

    A benchmark that set up ComfyUI records the attention it asked for and the kernel that ran, and
    writes nothing when they differ (AttentionKernelError).
    """
    data = {**_attention_record(data), **data} if _asked_attention is not None else data
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    record = _finite(result_record(name, data, device, argv))
    tmp.write_text(json.dumps(record, indent=1, default=_json_default, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def _attention_record(data: dict[str, Any]) -> dict[str, str]:
    """{"attention_asked", "attention_kernel"} of this process, checked against each other and the data."""
    kernel = checked_attention_kernel()
    stated = data.get("attention_kernel", kernel)
    if stated != kernel:
        raise AttentionKernelError(f"the result states attention kernel {stated}, but ComfyUI runs {kernel}.")
    return {"attention_asked": str(_asked_attention), "attention_kernel": kernel}


def _finite(value: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers); containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (printed and returned), numbers as given."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text)
    return text


# ---------------------------------------------------------------------------------------------- models


ATTENTION_CHOICES = ("pytorch", "comfy-default")
# The kernel each forced choice must give; "comfy-default" is whatever ComfyUI picks by itself here.
ATTENTION_KERNELS = {"pytorch": "attention_pytorch"}
_asked_attention: str | None = None  # what `boot` was asked for in this process


class AttentionKernelError(RuntimeError):
    """ComfyUI runs another attention kernel than the benchmark asked for, so its figures would be mislabelled."""


def boot(attention: str = "pytorch") -> str:
    """Make ComfyUI importable in this process (CPU unless a CUDA GPU is there); return the attention kernel.

    "pytorch" sets ComfyUI's own --use-pytorch-cross-attention, the SDPA kernel ComfyUI picks by
    itself on NVIDIA GPUs; "comfy-default" keeps what ComfyUI picks here (sub-quadratic attention
    on a CPU). ComfyUI chooses when its model management is first imported, so the flag is set
    before that; a process that imported ComfyUI earlier runs another kernel and is refused here
    (and by `write_result`).
    """
    global _asked_attention
    from headless.comfy_boot import boot_comfy

    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}")
    if _asked_attention not in (None, attention):
        raise AttentionKernelError(f"this process already set up ComfyUI for attention '{_asked_attention}', "
                                   f"so it cannot run '{attention}': start a new process.")
    boot_comfy(pytorch_attention=attention == "pytorch")
    _asked_attention = attention
    return checked_attention_kernel()


def _boot_once() -> None:
    """Boot with the default attention unless the benchmark already chose one."""
    if _asked_attention is None:
        boot()


def attention_kernel() -> str:
    """The kernel ComfyUI's attention layers run (every layer the pack does not capture)."""
    import comfy.ldm.modules.attention

    return comfy.ldm.modules.attention.optimized_attention.__name__


def checked_attention_kernel() -> str:
    """The kernel ComfyUI runs; AttentionKernelError when it is not the one `boot` was asked for."""
    kernel = attention_kernel()
    expected = ATTENTION_KERNELS.get(_asked_attention or "")
    if expected is not None and kernel != expected:
        raise AttentionKernelError(
            f"asked for attention '{_asked_attention}' ({expected}) but ComfyUI runs {kernel}: ComfyUI chose its "
            "kernel before the flag was set (was it imported before bench.common.boot?).")
    return kernel


def load_checkpoint(path: Path | None = None) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) of a checkpoint, loaded inside inference mode as ComfyUI's executor does.

    None loads the tiny random-weight SD1.5 checkpoint (built into .cache/ on first use).
    """
    _boot_once()
    import comfy.sd

    from headless.tiny_model import ensure_tiny_checkpoint

    path = Path(path) if path is not None else ensure_tiny_checkpoint()
    with torch.inference_mode():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            str(path), output_vae=True, output_clip=True)[:3]
    return model, clip, vae


def _init_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Norm weights 1, biases 0, other weights N(0, 1/fan_in), written in place."""
    for name, param in module.named_parameters(recurse=False):
        with torch.no_grad():
            if name == "bias":
                param.zero_()
            elif isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                param.fill_(1.0)
            else:
                fan_in = math.prod(param.shape[1:]) or 1
                values = torch.randn(param.shape, generator=generator) / math.sqrt(fan_in)
                param.copy_(values.to(param.dtype))


def unet_patcher(unet_config: dict[str, Any], dtype: torch.dtype | None = torch.float32, seed: int = 0,
                 meta: bool = False) -> Any:
    """A ModelPatcher of a UNet (an SD1.x, SD2.x or SDXL config) built by ComfyUI's classes at random init.

    ComfyUI's model detection picks the model config (SD15 for SD1.5's fixed fields), its
    BaseModel wraps the UNetModel, and ModelPatcher manages it as for a loaded checkpoint.
    dtype None takes the weight dtype and manual cast ComfyUI would choose when loading it here.
    meta=True builds it on the meta device (shapes only, no memory, nothing can run).
    """
    _boot_once()
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    config = {k: v for k, v in unet_config.items() if k != "dtype"}
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    if model_config is None:
        raise ValueError("ComfyUI does not recognise this UNet config")
    manual_cast = None
    if dtype is None:
        supported = list(model_config.supported_inference_dtypes)
        dtype = mm.unet_dtype(model_params=-1, supported_dtypes=supported)
        manual_cast = mm.unet_manual_cast(dtype, mm.get_torch_device(), supported)
    model_config.set_inference_dtype(dtype, manual_cast)
    if meta:
        with torch.device("meta"):
            model = model_config.get_model({}, device=torch.device("meta"))
        device = torch.device("meta")
        return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    model = model_config.get_model({}, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    for module in model.diffusion_model.modules():
        _init_(module, generator)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- data


def toy_dataset(resolution: int, concepts: int = 1, folder: Path | None = None, prior: bool = False) -> Any:
    """The sample set (or `folder`, authors' layout) with `concepts` Mask Target concepts.

    Concept i uses the folder's mask (i mod K) + 1, so a third concept on a two-mask set reuses
    mask_1 under its own token: the same work per step as a real third object.
    """
    from headless.paths import SAMPLE_DATA_DIR
    from textloc.data.dataset import build_concept, load_dataset

    folder = Path(folder) if folder is not None else SAMPLE_DATA_DIR / "toy_pair"
    with torch.inference_mode():
        dataset = load_dataset(folder.parent, folder.name, resolution=resolution)
        for i in range(concepts):
            index = i % dataset.num_folder_masks + 1
            class_images = dataset.images.flip(2) if prior else None
            dataset = dataset.with_concept(build_concept(
                dataset, token=f"tl_concept{i + 1}", class_word=["ball", "box", "toy"][i % 3],
                mask_index=index, class_images=class_images))
    return dataset


# ---------------------------------------------------------------------------------------------- training


@dataclass
class StepRunner:
    """A prepared trainer whose `step()` runs one full training step (forward, losses, backward, update)."""

    trainer: Any
    class_conds: list[Any]
    checkpointing: bool = False
    step_index: int = 0

    def activate(self) -> None:
        """Load this trainer's model clone (another clone of the same model may have been loaded since)."""
        from textloc import host

        host.load_for_training(self.trainer.patcher)

    def step(self) -> None:
        from textloc.training.grad_checkpointing import gradient_checkpointing
        from textloc.training.token_embedding import trainable_text_encoder

        with torch.inference_mode(False), torch.enable_grad(), trainable_text_encoder(self.trainer.job.clip), \
                gradient_checkpointing(self.trainer.base_model.diffusion_model, self.checkpointing):
            losses, _, _ = self.trainer.step(self.step_index, self.class_conds)
        self.trainer.recorder.begin_step()  # drop this step's maps, so they do not count towards the next
        self.step_index += 1
        if not math.isfinite(losses.total):
            raise RuntimeError(f"training step gave a non-finite loss {losses.total}")


def prepare_trainer(model: Any, clip: Any, vae: Any, dataset: Any, config: Any, work_dir: Path,
                    variant: Callable[[Any], None] | None = None, checkpointing: bool = False) -> StepRunner:
    """The pack's trainer, prepared as train() prepares it, ready for timed steps.

    `variant(trainer)` runs after the map sizes are known, e.g. to swap the attention capture.
    """
    from textloc.training.loop import TrainingJob, _Trainer
    from textloc.training.run_files import plan_run
    from textloc.training.token_embedding import trainable_text_encoder

    run, _ = plan_run(work_dir, "bench", False)
    job = TrainingJob(model=model, clip=clip, vae=vae, dataset=dataset, config=config, run=run)
    with torch.inference_mode(False), torch.enable_grad():
        trainer = _Trainer(job)
        trainer.prepare()
        with trainable_text_encoder(clip):
            class_conds = trainer.class_conditions() if trainer.with_prior else []
            context, columns = trainer.instance_condition()
            trainer.discover_resolutions(context.detach(), columns)
        if variant is not None:
            variant(trainer)
    return StepRunner(trainer, class_conds, checkpointing)


def set_threads() -> None:
    """Honour OMP_NUM_THREADS for torch's intra-op pool (benchmarks ask for 1 on shared machines)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        torch.set_num_threads(int(threads))


@dataclass
class StepStats:
    """Step times (seconds) and the largest peak memory (bytes above the start) over the timed steps."""

    times: list[float]
    peak_bytes: int
    memory_method: str
    total_peak_bytes: int = 0
    reserved_peak_bytes: int = 0

    @property
    def median_s(self) -> float:
        return median(self.times)

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": round(self.median_s, 4), "times_s": [round(t, 4) for t in self.times],
                "peak_mib": round(mib(self.peak_bytes), 1), "total_peak_mib": round(mib(self.total_peak_bytes), 1),
                "reserved_peak_mib": round(mib(self.reserved_peak_bytes), 1), "memory_method": self.memory_method}


def measure_steps(runners: dict[str, StepRunner], repeats: int, warmup: int = 1,
                  device: torch.device | None = None) -> dict[str, StepStats]:
    """Time training steps of several variants in alternating rounds, with peak memory per step.

    Each variant's model clone is (re)loaded untimed before its step; the memory meter's garbage
    collection also runs outside the timed part.
    """
    device = device or next(iter(runners.values())).trainer.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for runner in runners.values():
        for _ in range(warmup):
            runner.activate()
            runner.step()
    times: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, int] = {name: 0 for name in runners}
    totals: dict[str, int] = {name: 0 for name in runners}
    reserved: dict[str, int] = {name: 0 for name in runners}
    method = ""
    for _ in range(repeats):
        for name, runner in runners.items():
            runner.activate()
            meter = PeakMemory(device)
            with meter.measure():
                sync()
                start = time.perf_counter()
                runner.step()
                sync()
                times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], meter.peak_bytes)
            totals[name] = max(totals[name], meter.total_peak_bytes)
            reserved[name] = max(reserved[name], meter.reserved_peak_bytes)
            method = meter.method
    return {name: StepStats(times[name], peaks[name], method, totals[name], reserved[name]) for name in runners}
