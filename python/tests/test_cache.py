"""Step caching from Python (issue 27's engine options, issue 30's follow-up): the keyword
arguments cache / cache_threshold / cache_warmup / cache_dir go through the CLI's checks
(cli::calibrate, model::cache) and the run's report comes back as ``out.cache``.

CPU only (not marked `emu`): the cache's arithmetic is the engine's, tested on the emulated
device by tests/cache_gpu.rs."""
import numpy as np
import pytest

import contentv

from conftest import cli_size_args, run_cli

# Six steps: enough for a warm-up, reused steps and the always-computed last step.
KW = dict(num_frames=5, height=32, width=64, num_inference_steps=6)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("method", ["easy", "fbcache"])
def test_threshold_0_gives_the_uncached_frames_bit_for_bit(tiny_pipe, method):
    full = tiny_pipe("a red fox", generator=4, **KW)
    assert full.cache is None
    cached = tiny_pipe("a red fox", generator=4, cache=method, cache_threshold=0, **KW)
    assert np.array_equal(_bits(cached.frames), _bits(full.frames)), f"{method} threshold 0 changed the frames"
    c = cached.cache
    assert c["method"] == method and c["threshold"] == 0 and c["steps"] == 6
    assert c["computed"] == list(range(6)), c


def test_a_cached_run_reports_its_computed_steps_as_the_cli_does(tiny_pipe, tmp_path):
    out = tiny_pipe("a red fox", generator=4, cache="easy", cache_threshold=10, cache_warmup=1, **KW)
    c = out.cache
    # The warm-up step and the last step are always computed; threshold 10 reuses the rest.
    assert c["computed"][0] == 0 and c["computed"][-1] == 5 and len(c["computed"]) < 6, c
    assert c["warmup"] == 1 and c["threshold"] == 10
    assert c["line"].startswith(f"computed {len(c['computed'])}/6: "), c
    assert c["saved_s"] >= 0
    # The CLI with the same flags: the same line and the same latents.
    p = run_cli("generate", "--prompt", "a red fox", "--seed", "4", *cli_size_args(KW), "--cache", "easy",
                "--cache-threshold", "10", "--cache-warmup", "1", "--output", str(tmp_path / "cli.mp4"),
                "--save-latents", str(tmp_path / "cli.safetensors"))
    assert c["line"] in p.stderr, p.stderr
    contentv.export_to_video(out.frames[0], tmp_path / "py.mp4", fps=24)
    assert (tmp_path / "py.mp4").read_bytes() == (tmp_path / "cli.mp4").read_bytes(), "the cached video differs from the CLI's"
    # The default method's warm-up and threshold are filled in.
    d = tiny_pipe("a red fox", generator=4, cache="fbcache", **KW).cache
    assert d["threshold"] == pytest.approx(0.05) and d["warmup"] == 1


@pytest.mark.parametrize(
    "kw, arg, words",
    [
        (dict(cache="warp"), "cache", "is not a cache method"),
        (dict(cache="easy", cache_threshold=-0.5), "cache_threshold", "must be a number from 0 to 10"),
        (dict(cache="easy", cache_threshold=float("nan")), "cache_threshold", "must be a number from 0 to 10"),
        (dict(cache="easy", cache_warmup=6), "cache_warmup", "must be smaller than the number of steps (6)"),
        (dict(cache="easy", cache_warmup=-1), "cache_warmup", "too small"),
        (dict(cache_threshold=0.1), "cache", "without a cache method"),
    ],
)
def test_bad_values_raise_value_error_naming_the_argument(tiny_pipe, kw, arg, words):
    with pytest.raises(ValueError) as e:
        tiny_pipe("x", generator=1, **KW, **kw)
    msg = str(e.value)
    assert msg.startswith(arg), msg
    assert words in msg, msg


def test_bad_types_and_a_missing_calibration(tiny_pipe, tmp_path):
    with pytest.raises(TypeError, match="^cache must be a str"):
        tiny_pipe("x", cache=1, **KW)
    with pytest.raises(TypeError, match="^cache_threshold must be a number"):
        tiny_pipe("x", cache="easy", cache_threshold="0.1", **KW)
    # mag without a calibration in cache_dir: the CLI's message, naming the file and the fix.
    with pytest.raises(FileNotFoundError) as e:
        tiny_pipe("x", cache="mag", cache_dir=tmp_path, **KW)
    msg = str(e.value)
    assert msg.startswith("cache: --cache mag: no calibration") and str(tmp_path) in msg and "calibrate-cache" in msg, msg
    assert not any(tmp_path.iterdir()), "a failed check wrote into cache_dir"


def test_the_report_of_latent_output_and_of_a_run_stopped_early(tiny_pipe):
    kw = dict(generator=4, cache="easy", cache_threshold=10, cache_warmup=1, **KW)
    full = tiny_pipe("a red fox", **kw).cache
    lat = tiny_pipe("a red fox", output_type="latent", **kw).cache
    assert lat is not None and lat == {**full, "saved_s": lat["saved_s"]}, (lat, full)

    def stop_after_4(pipe, i, t, kwargs):
        if i == 3:
            pipe._interrupt = True
        return kwargs

    out = tiny_pipe("a red fox", callback_on_step_end=stop_after_4, **kw)
    assert out.stopped_after == 3, out.stopped_after
    c = out.cache
    assert c is not None and c["method"] == "easy" and c["steps"] == 4, c
    assert c["computed"] == [i for i in full["computed"] if i < 4], (c, full)
    assert c["line"].startswith(f"computed {len(c['computed'])}/4: "), c
