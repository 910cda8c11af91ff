"""contentv: ContentV-8B text-to-video on the contentv engine (Rust with hand-written CUDA
kernels), with the diffusers calling convention and no PyTorch.

    import contentv
    pipe = contentv.ContentVPipeline.from_pretrained("ByteDance/ContentV-8B")
    video = pipe("a red fox in the snow", num_frames=49, generator=7).frames[0]
    contentv.export_to_video(video, "fox.mp4", fps=24)

Without a model (``from_pretrained()``) the built-in tiny random model runs (its video is noise,
and a warning says so). The frames and latents are bit-identical to ``contentv generate`` with
the same model, seed and parameters.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _engine

__all__ = [
    "ContentVPipeline",
    "ContentVPipelineOutput",
    "export_to_video",
    "DEFAULT_NEGATIVE_PROMPT",
    "__version__",
]

__version__: str = _engine.VERSION
DEFAULT_NEGATIVE_PROMPT: str = _engine.DEFAULT_NEGATIVE_PROMPT

logger = logging.getLogger("contentv")

_MAX_U64 = (1 << 64) - 1


def _whole(name: str, v: Any, minimum: int = 0) -> Optional[int]:
    """None, or a Python int (not a bool) >= minimum; TypeError / ValueError naming `name`."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} ({v!r})")
    v = int(v)
    if v < minimum:
        raise ValueError(f"{name} = {v} is too small: expected a whole number >= {minimum}")
    if v > _MAX_U64:
        raise ValueError(f"{name} = {v} is too large (at most {_MAX_U64})")
    return v


def _number(name: str, v: Any) -> Optional[float]:
    """None, or a real number (not a bool); TypeError naming `name`."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} ({v!r})")
    return float(v)


def _cache_method(v: Any) -> Optional[str]:
    """None, or a str: the engine checks the name (its message lists the methods)."""
    if v is None or isinstance(v, str):
        return v
    raise TypeError(f"cache must be a str (\"easy\", \"fbcache\" or \"mag\") or None, got {type(v).__name__} ({v!r})")


def _text(name: str, v: Any) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise ValueError(
                f"{name}: a list of {len(v)} prompts was given; this pipeline makes one video per call "
                "(call it once per prompt)"
            )
        v = v[0]
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a str, got {type(v).__name__} ({v!r})")
    return v


def _seed_of(generator: Any) -> Optional[int]:
    """The seed of `generator`: an int, an object with ``initial_seed()`` (torch.Generator) or
    a ``seed`` attribute, or a list of one of those."""
    if generator is None:
        return None
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError(
                f"generator: a list of {len(generator)} generators was given; one video per call takes one"
            )
        generator = generator[0]
    if isinstance(generator, bool):
        raise TypeError("generator must be an int seed or an object with a seed, got bool")
    if isinstance(generator, (int, np.integer)):
        return _whole("generator", generator)
    if callable(getattr(generator, "initial_seed", None)):
        return _whole("generator.initial_seed()", generator.initial_seed())
    if hasattr(generator, "seed") and not callable(generator.seed):
        return _whole("generator.seed", generator.seed)
    raise TypeError(
        f"generator must be an int seed or an object with initial_seed() or a seed attribute, got {type(generator).__name__}"
    )


class ContentVPipelineOutput:
    """What a call returns. ``frames``: for ``output_type="np"`` a uint8 array [1, F, H, W, 3]
    (a view of the engine's buffer, no copy); for ``"pil"`` a list with one list of F PIL
    images; for ``"latent"`` the final latents, a float32 array [1, C, T, h, w].
    ``seed`` is the seed used (drawn when no generator was given); ``stopped_after`` the step
    (0-based) after which the callback stopped the run, or None. ``cache``: with a step cache
    (``cache=...``), the run's report as a dict: ``method``, ``threshold`` and ``warmup`` (the
    values used, defaults filled in), ``steps``, ``computed`` (the indices of the steps the
    transformer computed; the others reused its result), ``line`` (``contentv generate``'s
    ``computed 5/8: 0-3 7``) and ``saved_s`` (estimated seconds saved); also for
    output_type="latent", and for a run the callback stopped early (then ``steps`` is the
    number of steps run); None without a cache."""

    def __init__(
        self,
        frames: Any,
        seed: int,
        stopped_after: Optional[int] = None,
        cache: Optional[Dict[str, Any]] = None,
    ):
        self.frames = frames
        self.seed = seed
        self.stopped_after = stopped_after
        self.cache = cache

    def __getitem__(self, i: int) -> Any:
        return (self.frames,)[i]

    def __repr__(self) -> str:
        f = self.frames
        what = f"array{tuple(f.shape)} {f.dtype}" if isinstance(f, np.ndarray) else f"{len(f)} list(s) of {len(f[0])} images"
        return f"ContentVPipelineOutput(frames={what}, seed={self.seed})"


class ContentVPipeline:
    """The ContentV-8B text-to-video pipeline on the contentv engine.

    Load it with :meth:`from_pretrained`, call it like a diffusers pipeline. One generation
    runs at a time per pipeline object: a second call while one runs (from another thread,
    or from the step callback) raises RuntimeError; load a second pipeline to run two at once.
    The engine works without the GIL, so other Python threads keep running. Ctrl-C stops the
    run at the next step boundary and raises KeyboardInterrupt. ``del pipe`` (or
    :meth:`close`) frees the models and their device memory.
    """

    def __init__(self, engine: "_engine.Engine"):
        self._engine = engine
        self._progress_bar_config: Dict[str, Any] = {}
        self._interrupt = False
        self._num_timesteps = 0

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, "os.PathLike[str]", None] = None,
        *,
        device: Optional[str] = None,
        offload: Optional[str] = None,
        quantize: Optional[str] = None,
        vram_budget_gib: Optional[float] = None,
        vae_tiling: bool = False,
        vae_precision: Optional[str] = None,
        torch_dtype: Any = None,
    ) -> "ContentVPipeline":
        """Loads the pipeline.

        Args:
            pretrained_model_name_or_path: a model folder in diffusers layout, a Hugging Face
                repository id already in the hub cache (``"ByteDance/ContentV-8B"``;
                ``HF_HUB_CACHE`` / ``HF_HOME`` are honoured, nothing is downloaded) or a cache
                entry folder (``.../models--ByteDance--ContentV-8B``), as ``--model`` takes it.
                None: the built-in tiny random model (its video is noise; a warning says so).
            device: "cuda", "cpu", or None (the GPU if one is usable, else the CPU).
            offload: None, "model" or "sequential" (``--offload``).
            quantize: None or "int8" (``--quantize``).
            vram_budget_gib: a cap on GPU memory in GiB (``--vram-budget``).
            vae_tiling: decode in overlapping spatial tiles (``--vae-tiling``).
            vae_precision: None (bf16 on a GPU, f32 on the CPU), "bf16" or "f32" (``--vae-precision``).
            torch_dtype: accepted for diffusers scripts and ignored (the engine chooses its
                precisions: bf16 weights, f32 on the CPU).

        Raises:
            FileNotFoundError: the model folder (or a component of it) is missing.
            ValueError: a bad option or a broken checkpoint (the engine's message).
            TypeError: an option of the wrong type.
            RuntimeError: no usable GPU with device="cuda", and other engine errors.
        """
        model = pretrained_model_name_or_path
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise TypeError(
                f"pretrained_model_name_or_path must be a str or a path, got {type(model).__name__}"
            )
        for name, v in (("device", device), ("offload", offload), ("quantize", quantize), ("vae_precision", vae_precision)):
            if v is not None and not isinstance(v, str):
                raise TypeError(f"{name} must be a str or None, got {type(v).__name__} ({v!r})")
        if not isinstance(vae_tiling, bool):
            raise TypeError(f"vae_tiling must be a bool, got {type(vae_tiling).__name__}")
        budget = _number("vram_budget_gib", vram_budget_gib)
        engine = _engine.Engine.load(
            os.fspath(model) if model is not None else None,
            device,
            offload,
            quantize,
            budget,
            vae_tiling,
            vae_precision,
        )
        for w in engine.warnings:
            warnings.warn(w, UserWarning, stacklevel=2)
        for n in engine.notes:
            logger.info(n)
        return cls(engine)

    # ----- diffusers-style properties -------------------------------------------------------

    @property
    def device(self) -> str:
        """The device the models run on: "cpu" or "cuda:0 <name>"."""
        return self._engine.device

    @property
    def model_dir(self) -> str:
        """The model folder used (a hub cache id resolved to its snapshot)."""
        return os.fspath(self._engine.model_dir)

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` in ``callback_on_step_end`` to stop after that step."""
        return self._interrupt

    @property
    def num_timesteps(self) -> int:
        """The number of denoising steps of the current (or last) call."""
        return self._num_timesteps

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options of the tqdm progress bar (as in diffusers), e.g. ``disable=True``. The bar
        shows only when tqdm is installed."""
        self._progress_bar_config = dict(kwargs)

    def to(self, device: Optional[str] = None, *args: Any, **kwargs: Any) -> "ContentVPipeline":
        """diffusers compatibility: the device is chosen at load (``from_pretrained(device=)``);
        this accepts the device the pipeline already runs on and refuses another one."""
        if device is None:
            return self
        want = str(device)
        have = "cpu" if self.device == "cpu" else "cuda"
        if want.split(":")[0] != have:
            raise ValueError(
                f"device: this pipeline runs on {self.device}; load it with from_pretrained(..., device={want!r}) instead of .to()"
            )
        return self

    def close(self) -> None:
        """Frees the models and their device memory now (``del pipe`` does the same)."""
        self._engine.close()

    def _progress_bar(self, total: int) -> Any:
        if self._progress_bar_config.get("disable", False):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=total, **self._progress_bar_config)

    # ----- the call -------------------------------------------------------------------------

    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        negative_prompt: Union[str, List[str], None] = None,
        num_frames: Optional[int] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        shift: Optional[float] = None,
        generator: Any = None,
        latents: Any = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[..., Any]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        num_videos_per_prompt: int = 1,
        cache: Optional[str] = None,
        cache_threshold: Optional[float] = None,
        cache_warmup: Optional[int] = None,
        cache_dir: Union[str, "os.PathLike[str]", None] = None,
    ) -> Any:
        """Generates one video.

        Args:
            prompt: what the video should show.
            negative_prompt: what it should not show (default: the ContentV demo's).
            num_frames: 4k+1 (1, 5, ..., 125); other values are rounded down with a warning.
                Default 125 (17 with the tiny model).
            height, width: multiples of 16. Default 432 x 768 (144 x 256 with the tiny model).
            num_inference_steps: default 50 (8 with the tiny model).
            guidance_scale: classifier-free guidance; <= 1 turns it off. Default 6.
            shift: the scheduler's shift (default: the model's scheduler config).
            generator: an int seed, or an object with ``initial_seed()`` (torch.Generator) or
                a ``seed`` attribute; None draws a seed (``output.seed`` tells it).
            latents: initial noise, float32 [1, C, (F-1)/4+1, H/8, W/8] (``--init-noise``).
            output_type: "np" (uint8 [1, F, H, W, 3], no copy), "pil" (needs Pillow) or
                "latent" (the final latents, float32 [1, C, T, h, w]; the VAE is skipped).
            return_dict: False returns a tuple ``(frames,)``.
            callback_on_step_end: ``f(pipe, step, timestep, callback_kwargs)`` after each step;
                ``callback_kwargs["latents"]`` holds the latents after the step (a copy: they
                are read-only to the callback). Return ``callback_kwargs`` (or None). Setting
                ``pipe._interrupt = True`` stops the run after this step; the latents reached
                are then decoded (as in diffusers).
            callback_on_step_end_tensor_inputs: only "latents" is available.
            num_videos_per_prompt: only 1.
            cache: step caching, as ``contentv generate --cache``: None (off, the default:
                every step computed), "easy" (EasyCache), "fbcache" (First-Block-Cache) or
                "mag" (MagCache: needs ``contentv calibrate-cache`` for this model, steps and
                shift). Reused steps skip the transformer; ``output.cache`` reports them.
            cache_threshold: the method's reuse threshold, 0 to 10 (0 computes every step;
                default easy 0.2, fbcache 0.05, mag 0.12). ``--cache-threshold``.
            cache_warmup: steps always computed first, below num_inference_steps (default
                easy 15% of the steps, mag 20%, fbcache 1). ``--cache-warmup``.
            cache_dir: the folder of mag's calibrations (default
                ``$XDG_DATA_HOME/contentv/cache``, else ``~/.local/share/contentv/cache``).
                ``--cache-dir``.

        Raises:
            ValueError / TypeError: a bad argument (the message names it).
            ImportError: output_type="pil" without Pillow.
            KeyboardInterrupt: Ctrl-C (the run stops at the next step boundary).
            RuntimeError: a second concurrent call on this pipeline, or an engine error.
        """
        prompt = _text("prompt", prompt)
        if prompt is None:
            raise ValueError("prompt: no prompt given: describe the video, e.g. pipe(\"a cat surfing a wave\")")
        negative_prompt = _text("negative_prompt", negative_prompt)
        if output_type not in ("np", "pil", "latent"):
            raise ValueError(f"output_type must be \"np\", \"pil\" or \"latent\", got {output_type!r}")
        if _whole("num_videos_per_prompt", num_videos_per_prompt, 1) != 1:
            raise ValueError("num_videos_per_prompt: only 1 video per call is supported")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
        extra = [t for t in callback_on_step_end_tensor_inputs if t != "latents"]
        if extra:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs: {extra} are not available; only \"latents\" is"
            )
        pil = None
        if output_type == "pil":
            try:
                import PIL.Image as pil
            except ImportError as e:
                raise ImportError(
                    "output_type=\"pil\" needs Pillow: pip install pillow (or use output_type=\"np\")"
                ) from e
        args = dict(
            prompt=prompt,
            negative_prompt=negative_prompt,
            frames=_whole("num_frames", num_frames),
            height=_whole("height", height),
            width=_whole("width", width),
            steps=_whole("num_inference_steps", num_inference_steps),
            guidance=_number("guidance_scale", guidance_scale),
            shift=_number("shift", shift),
            seed=_seed_of(generator),
            cache=_cache_method(cache),
            cache_threshold=_number("cache_threshold", cache_threshold),
            cache_warmup=_whole("cache_warmup", cache_warmup),
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        )
        if latents is not None:
            if not hasattr(latents, "__array_interface__") and not hasattr(latents, "__array__") and not isinstance(latents, (list, tuple)):
                raise TypeError(f"latents must be an array (float32 [1, C, T, h, w]), got {type(latents).__name__}")
            arr = np.ascontiguousarray(np.asarray(latents, dtype=np.float32))
            args["latents"] = arr.tobytes()
            args["latents_shape"] = list(arr.shape)
        # The engine's checks (and messages) before any work; the steps for the progress bar.
        steps, _, shape_list, _ = self._engine.check(**args)
        shape = tuple(shape_list)
        self._num_timesteps = steps
        self._interrupt = False
        bar = self._progress_bar(steps)
        callback = callback_on_step_end

        def on_step(index: int, total: int, timestep: float, lat: Any) -> bool:
            if bar is not None:
                bar.update(1)
            if callback is None:
                return False
            kwargs: Dict[str, Any] = {}
            if lat is not None:
                kwargs["latents"] = np.asarray(lat).reshape(shape)
                kwargs["latents"].flags.writeable = False
            out = callback(self, index, timestep, kwargs)
            if out is not None and not isinstance(out, dict):
                raise TypeError(
                    f"callback_on_step_end must return its callback_kwargs dict (or None), got {type(out).__name__}"
                )
            if out is not None and "latents" in out and out["latents"] is not kwargs.get("latents"):
                raise ValueError(
                    "callback_on_step_end returned new latents: changing the latents from the callback is not supported"
                )
            return bool(self._interrupt)

        try:
            frames, lat, seed, stopped, warns, cache_report = self._engine.generate(
                **args,
                decode=output_type != "latent",
                on_step=on_step if (bar is not None or callback is not None) else None,
                step_latents=callback is not None and "latents" in callback_on_step_end_tensor_inputs,
                reply_each_step=callback is not None,
            )
        finally:
            if bar is not None:
                bar.close()
        for w in warns:
            warnings.warn(w, UserWarning, stacklevel=2)
        if output_type == "latent":
            result: Any = np.asarray(lat)
        else:
            result = np.asarray(frames)
            if output_type == "pil":
                result = [[pil.fromarray(f) for f in result[0]]]
        if not return_dict:
            return (result,)
        return ContentVPipelineOutput(result, seed, stopped, cache_report)


def export_to_video(
    video_frames: Any,
    output_video_path: Union[str, "os.PathLike[str]"],
    fps: int = 24,
    crf: int = _engine.DEFAULT_CRF,
) -> str:
    """Writes frames as an MP4 (H.264) with the engine's encoder, as ``contentv generate``
    does: written under a temporary name and renamed when complete, and never over a file
    that is not a video. Returns the path.

    Args:
        video_frames: uint8 [F, H, W, 3] or [1, F, H, W, 3] (``pipe(...).frames``), float
            frames in [0, 1] (as diffusers' "np" output), or a list of PIL images / arrays.
        output_video_path: the file (.mp4, .mov or .mkv); its folder is created.
        fps: frames per second (1..240).
        crf: x264 quality, 0 (lossless) ..= 51 (``--crf``).
    """
    if not isinstance(output_video_path, (str, os.PathLike)):
        raise TypeError(f"output_video_path must be a str or a path, got {type(output_video_path).__name__}")
    fps_i = _whole("fps", fps)
    crf_i = _whole("crf", crf)
    if fps_i is None or crf_i is None:
        raise TypeError("fps and crf must be ints")
    if isinstance(video_frames, (list, tuple)):
        if len(video_frames) == 1 and isinstance(video_frames[0], (list, tuple)):
            video_frames = video_frames[0]
        arr = np.stack([np.asarray(f) for f in video_frames]) if len(video_frames) else np.zeros((0, 0, 0, 3), np.uint8)
    else:
        arr = np.asarray(video_frames)
    if arr.ndim == 5:
        if arr.shape[0] != 1:
            raise ValueError(f"video_frames: a batch of {arr.shape[0]} videos; pass one ([F, H, W, 3])")
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"video_frames must be RGB frames [F, H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"video_frames must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    arr = np.ascontiguousarray(arr)
    f, h, w, _ = arr.shape
    out = _engine.export_video(arr.tobytes(), f, h, w, os.fspath(output_video_path), fps_i, crf_i)
    return os.fspath(out)
