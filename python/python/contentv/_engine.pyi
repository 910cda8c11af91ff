"""Type stubs of contentv._engine, the extension module (Rust, PyO3) under the contentv
package. Use the package's ContentVPipeline and export_to_video; this module is its engine side."""
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

VERSION: str
DEFAULT_FPS: int
DEFAULT_CRF: int
DEFAULT_NEGATIVE_PROMPT: str

class Buffer:
    """An owned block of engine values (frames uint8 or latents float32) with a shape;
    ``numpy.asarray(buffer)`` views it without a copy (the array keeps it alive)."""

    @property
    def __array_interface__(self) -> Dict[str, Any]: ...
    @property
    def shape(self) -> Tuple[int, ...]: ...

class Engine:
    """A loaded pipeline; its models live on the engine's own thread."""

    @staticmethod
    def load(
        model: Union[str, PathLike[str], None] = None,
        device: Optional[str] = None,
        offload: Optional[str] = None,
        quantize: Optional[str] = None,
        vram_budget_gib: Optional[float] = None,
        vae_tiling: bool = False,
        vae_precision: Optional[str] = None,
    ) -> "Engine": ...
    @property
    def model_dir(self) -> Path: ...
    @property
    def device(self) -> str: ...
    @property
    def tiny(self) -> bool: ...
    @property
    def notes(self) -> List[str]: ...
    @property
    def warnings(self) -> List[str]: ...
    def check(
        self,
        prompt: str,
        negative_prompt: Optional[str] = None,
        frames: Optional[int] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
        shift: Optional[float] = None,
        seed: Optional[int] = None,
        latents: Optional[bytes] = None,
        latents_shape: Optional[List[int]] = None,
        cache: Optional[str] = None,
        cache_threshold: Optional[float] = None,
        cache_warmup: Optional[int] = None,
        cache_dir: Union[str, PathLike[str], None] = None,
    ) -> Tuple[int, int, List[int], List[str]]:
        """(steps, seed, latent shape, warnings) of a request, checked as `contentv generate` does."""
        ...
    def generate(
        self,
        prompt: str,
        negative_prompt: Optional[str] = None,
        frames: Optional[int] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
        shift: Optional[float] = None,
        seed: Optional[int] = None,
        latents: Optional[bytes] = None,
        latents_shape: Optional[List[int]] = None,
        cache: Optional[str] = None,
        cache_threshold: Optional[float] = None,
        cache_warmup: Optional[int] = None,
        cache_dir: Union[str, PathLike[str], None] = None,
        decode: bool = True,
        on_step: Optional[Callable[[int, int, float, Optional[Buffer]], Any]] = None,
        step_latents: bool = False,
        reply_each_step: bool = False,
    ) -> Tuple[Optional[Buffer], Buffer, int, Optional[int], List[str], Optional[Dict[str, Any]]]:
        """(frames [1, F, H, W, 3] or None, latents, seed, stopped_after, warnings, cache report
        dict (method, threshold, warmup, steps, computed, line, saved_s) or None)."""
        ...
    def close(self) -> None: ...

def export_video(
    data: bytes,
    frames: int,
    height: int,
    width: int,
    path: Union[str, PathLike[str]],
    fps: int = 24,
    crf: int = 18,
) -> Path: ...
def device_memory() -> Optional[Tuple[int, int]]:
    """GPU 0's pool as (bytes in use, bytes cached), or None without a GPU in this process."""
    ...
