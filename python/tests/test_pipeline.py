"""The contentv Python package: the diffusers calling convention on the engine.

Run by scripts/test.sh after the Rust suite, on the CPU and again on the emulated GPU; each
test uses the device from_pretrained() picks (CONTENTV_FORCE_CPU=1 forces the CPU)."""
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import contentv
from contentv import _engine

from conftest import EMU, SMALL, TINY, cli_size_args, read_safetensors, run_cli

# Also in the emulated-GPU pass: the tests whose path differs on a device (the CLI's bit
# identity, Ctrl-C during device work, freeing device memory). The rest is the same code on
# every device and runs on the CPU only (the emulator costs ~15 s per generation in CI).
emu = pytest.mark.emu


# ----- output types and shapes ----------------------------------------------------------------


def test_np_output_is_uint8_frames_without_a_copy(tiny_pipe):
    out = tiny_pipe("a red fox in the snow", generator=7, **SMALL)
    f = out.frames
    assert isinstance(f, np.ndarray) and f.dtype == np.uint8
    assert f.shape == (1, SMALL["num_frames"], SMALL["height"], SMALL["width"], 3)
    assert out.seed == 7 and out.stopped_after is None
    # A view of the engine's buffer: the array's base is it, at the buffer's own address.
    assert isinstance(f.base, _engine.Buffer)
    assert f.__array_interface__["data"][0] == f.base.__array_interface__["data"][0]
    assert f.std() > 0  # noise, not a blank video
    # diffusers' tuple form
    (g,) = tiny_pipe("a red fox in the snow", generator=7, return_dict=False, **SMALL)
    assert np.array_equal(f, g)


def test_latent_output_skips_the_decode_and_matches_the_frames_run(tiny_pipe):
    lat = tiny_pipe("a red fox", generator=3, output_type="latent", **SMALL).frames
    assert lat.dtype == np.float32 and lat.shape == (1, 16, 2, 4, 8)
    seen = {}

    def cb(pipe, step, t, kw):
        seen[step] = kw["latents"].copy()
        return kw

    tiny_pipe("a red fox", generator=3, callback_on_step_end=cb, **SMALL)
    # The latents after the last step of a full run are the latent output.
    assert np.array_equal(seen[1], lat)


def test_pil_output(tiny_pipe):
    pytest.importorskip("PIL")
    out = tiny_pipe("a red fox", generator=1, output_type="pil", **SMALL)
    assert len(out.frames) == 1 and len(out.frames[0]) == 5
    im = out.frames[0][2]
    assert im.size == (64, 32) and im.mode == "RGB"
    ref = tiny_pipe("a red fox", generator=1, **SMALL).frames
    assert np.array_equal(np.asarray(im), ref[0, 2])


def test_pil_without_pillow_says_how_to_get_it(tiny_pipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        tiny_pipe("a red fox", generator=1, output_type="pil", **SMALL)


def test_generator_object_and_random_seed(tiny_pipe):
    class Gen:  # torch.Generator's interface
        def initial_seed(self):
            return 11

    a = tiny_pipe("x", generator=Gen(), output_type="latent", **SMALL)
    b = tiny_pipe("x", generator=11, output_type="latent", **SMALL)
    assert a.seed == 11 and np.array_equal(a.frames, b.frames)
    c = tiny_pipe("x", output_type="latent", **SMALL)  # a drawn seed, reported
    d = tiny_pipe("x", generator=c.seed, output_type="latent", **SMALL)
    assert np.array_equal(c.frames, d.frames)


def test_given_latents_are_the_initial_noise(tiny_pipe):
    noise = np.random.default_rng(0).standard_normal((1, 16, 2, 4, 8)).astype(np.float32)
    a = tiny_pipe("x", latents=noise, output_type="latent", **SMALL).frames
    with pytest.warns(UserWarning, match="generator has no effect with latents"):
        b = tiny_pipe("x", latents=noise, generator=99, output_type="latent", **SMALL).frames
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"latents: shape \[1, 16, 3, 4, 8\] does not match"):
        tiny_pipe("x", latents=np.zeros((1, 16, 3, 4, 8), np.float32), **SMALL)


def test_tiny_model_defaults_and_warning():
    with pytest.warns(UserWarning, match="built-in tiny random model"):
        p = contentv.ContentVPipeline.from_pretrained()
    steps, _, shape, _ = p._engine.check("x")
    assert steps == 8 and shape == [1, 16, 5, 18, 32]  # 17 frames at 256x144, as the CLI
    with pytest.warns(UserWarning, match="rounded down to 5"):
        out = p("x", num_frames=6, height=32, width=64, num_inference_steps=1, generator=0, output_type="latent")
    assert out.frames.shape[2] == 2


# ----- the same results as the CLI --------------------------------------------------------------


@emu
@pytest.mark.parametrize("model", ["tiny", "fixture"])
def test_bit_identical_to_contentv_generate(model, tiny_pipe, fixture_dir, tmp_path, request):
    if EMU and model == "fixture":
        pytest.skip("the fixture layout on the emulated GPU: parity_variants_pipeline covers it; here the CPU pass")
    pipe = tiny_pipe if model == "tiny" else request.getfixturevalue("fixture_pipe")
    args = ["generate", "--prompt", "a red fox in the snow", "--seed", "42", *cli_size_args(),
            "--output", str(tmp_path / "cli.mp4"), "--save-latents", str(tmp_path / "cli.safetensors")]
    if model == "fixture":
        args += ["--model", str(fixture_dir)]
    run_cli(*args)
    cli_latents = read_safetensors(tmp_path / "cli.safetensors")["latents"]
    lat = pipe("a red fox in the snow", generator=42, output_type="latent", **SMALL).frames
    assert lat.shape == cli_latents.shape
    assert np.array_equal(lat.view(np.uint32), cli_latents.view(np.uint32)), "latents differ from the CLI's"
    frames = pipe("a red fox in the snow", generator=42, **SMALL).frames
    # The same frames through the same encoder give the same file, byte for byte.
    contentv.export_to_video(frames[0], tmp_path / "py.mp4", fps=24)
    assert (tmp_path / "py.mp4").read_bytes() == (tmp_path / "cli.mp4").read_bytes(), "the video differs from the CLI's"


# ----- the step callback -----------------------------------------------------------------------


def test_callback_sees_every_step_with_its_timestep(tiny_pipe):
    seen = []

    def cb(pipe, step, timestep, kw):
        assert pipe is tiny_pipe
        seen.append((step, timestep, kw["latents"].shape, kw["latents"].flags.writeable))
        return kw

    tiny_pipe("x", generator=5, callback_on_step_end=cb, num_frames=5, height=32, width=64, num_inference_steps=4)
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    ts = [s[1] for s in seen]
    assert ts[0] == 1000.0 and all(a > b > 0 for a, b in zip(ts, ts[1:]))
    assert all(s[2] == (1, 16, 2, 4, 8) and s[3] is False for s in seen)
    assert tiny_pipe.num_timesteps == 4


def test_callback_stops_the_run_and_the_latents_reached_are_decoded(tiny_pipe):
    steps = []

    def stop_after_1(pipe, step, t, kw):
        steps.append(step)
        if step == 1:
            pipe._interrupt = True
        return kw

    kw = dict(SMALL, num_inference_steps=3)
    out = tiny_pipe("x", generator=2, callback_on_step_end=stop_after_1, output_type="latent", **kw)
    assert steps == [0, 1] and out.stopped_after == 1
    kept = {}

    def keep(pipe, step, t, k):
        kept[step] = k["latents"].copy()
        return k

    tiny_pipe("x", generator=2, callback_on_step_end=keep, output_type="latent", **kw)
    assert np.array_equal(out.frames, kept[1])
    steps.clear()
    frames = tiny_pipe("x", generator=2, callback_on_step_end=stop_after_1, **kw)
    assert steps == [0, 1] and frames.stopped_after == 1
    assert frames.frames.shape == (1, SMALL["num_frames"], SMALL["height"], SMALL["width"], 3)
    assert tiny_pipe.interrupt is True
    # the next call starts afresh
    assert tiny_pipe("x", generator=2, output_type="latent", **SMALL).stopped_after is None


def test_callback_errors_propagate_and_the_pipeline_stays_usable(tiny_pipe):
    def boom(pipe, step, t, kw):
        raise LookupError("from the callback")

    with pytest.raises(LookupError, match="from the callback"):
        tiny_pipe("x", generator=1, callback_on_step_end=boom, **SMALL)
    with pytest.raises(TypeError, match="must return its callback_kwargs dict"):
        tiny_pipe("x", generator=1, callback_on_step_end=lambda *a: 3, **SMALL)
    with pytest.raises(ValueError, match="changing the latents from the callback is not supported"):
        tiny_pipe("x", generator=1, callback_on_step_end=lambda p, s, t, k: {"latents": k["latents"] * 2}, **SMALL)
    assert tiny_pipe("x", generator=1, output_type="latent", **SMALL).frames.shape == (1, 16, 2, 4, 8)


def test_one_generation_at_a_time(tiny_pipe):
    def reenter(pipe, step, t, kw):
        pipe("again", **SMALL)
        return kw

    with pytest.raises(RuntimeError, match="already generating"):
        tiny_pipe("x", generator=1, callback_on_step_end=reenter, **SMALL)
    # From another thread while a run is on: the second call raises at once.
    started, release = threading.Event(), threading.Event()
    errors = []

    def slow(pipe, step, t, kw):
        started.set()
        release.wait(60)
        return kw

    th = threading.Thread(target=lambda: tiny_pipe("x", generator=1, callback_on_step_end=slow, **SMALL))
    th.start()
    assert started.wait(120)
    try:
        tiny_pipe("y", **SMALL)
    except RuntimeError as e:
        errors.append(str(e))
    release.set()
    th.join(120)
    assert errors and "one generation at a time per ContentVPipeline" in errors[0]


# ----- GIL, Ctrl-C, progress bar ----------------------------------------------------------------


def test_the_gil_is_released_while_the_engine_works(tiny_pipe):
    done = []
    th = threading.Thread(target=lambda: done.append(tiny_pipe("x", generator=1, num_frames=9, height=64, width=64, num_inference_steps=4)))
    ticks = 0
    th.start()
    t0 = time.monotonic()
    while th.is_alive():
        ticks += 1  # pure Python: runs only while the other thread does not hold the GIL
    elapsed = time.monotonic() - t0
    th.join()
    assert done and elapsed > 0.2
    # With the GIL held for the whole run this loop would barely run (a few switch intervals).
    assert ticks > 10_000, f"{ticks} iterations in {elapsed:.2f}s"


@emu
def test_ctrl_c_stops_at_the_next_step_boundary(tiny_pipe):
    # SIGINT shortly after the first step is done, as a user's Ctrl-C would arrive mid-run.
    class Counter:
        n = 0

        def update(self, k):
            Counter.n += k
            if Counter.n == 1:
                threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()

        def close(self):
            pass

    orig = tiny_pipe._progress_bar
    tiny_pipe._progress_bar = lambda total: Counter()
    total = 200
    # Python's own SIGINT handler, as in a terminal: a process started in the background by a
    # non-interactive shell (a CI runner's `cmd &`) inherits SIGINT ignored, and then Python
    # installs no handler and the signal does nothing (this test failed so under such a run).
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            tiny_pipe("x", generator=1, **dict(SMALL, num_inference_steps=total))
        elapsed = time.monotonic() - t0
    finally:
        tiny_pipe._progress_bar = orig
        signal.signal(signal.SIGINT, old_handler)
    assert 0 < Counter.n < total, f"{Counter.n} of {total} steps ran"
    assert elapsed < 300
    # Not left busy: the next call runs.
    assert tiny_pipe("x", generator=1, output_type="latent", **SMALL).frames is not None


def test_progress_bar_and_its_config(tiny_pipe, capsys):
    pytest.importorskip("tqdm")
    tiny_pipe.set_progress_bar_config(disable=False, desc="fox", ascii=True)
    try:
        tiny_pipe("x", generator=1, output_type="latent", **SMALL)
        err = capsys.readouterr().err
        assert "fox" in err and "2/2" in err
        tiny_pipe.set_progress_bar_config(disable=True)
        tiny_pipe("x", generator=1, output_type="latent", **SMALL)
        assert capsys.readouterr().err == ""
    finally:
        tiny_pipe.set_progress_bar_config(disable=True)


# ----- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(num_frames="5"), TypeError, "num_frames must be an int, got str"),
        (dict(height=32.0), TypeError, "height must be an int, got float"),
        (dict(num_inference_steps=True), TypeError, "num_inference_steps must be an int, got bool"),
        (dict(guidance_scale="6"), TypeError, "guidance_scale must be a number"),
        (dict(generator="seed"), TypeError, "generator must be an int seed"),
        (dict(prompt=3), TypeError, "prompt must be a str"),
        (dict(latents="noise"), TypeError, "latents must be an array"),
        (dict(width=100), ValueError, "width: width must be a positive multiple of 16, got 100"),
        (dict(num_frames=0), ValueError, "num_frames: frames must be at least 1"),
        (dict(num_frames=-3), ValueError, "num_frames = -3 is too small"),
        (dict(num_inference_steps=0), ValueError, "num_inference_steps: steps must be between 1 and 1000"),
        (dict(guidance_scale=-1), ValueError, "guidance_scale: guidance must be between 0 and 100"),
        (dict(shift=0.0), ValueError, "shift: shift must be a number from 0.001"),
        (dict(prompt="   "), ValueError, "prompt: the prompt is empty"),
        (dict(prompt=["a", "b"]), ValueError, "prompt: a list of 2 prompts"),
        (dict(output_type="mp4"), ValueError, "output_type must be"),
        (dict(num_videos_per_prompt=2), ValueError, "num_videos_per_prompt"),
        (dict(callback_on_step_end_tensor_inputs=["prompt_embeds"]), ValueError, "only \"latents\""),
    ],
)
def test_bad_call_arguments(tiny_pipe, kwargs, exc, match):
    args = dict(prompt="x", generator=1, **SMALL)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        tiny_pipe(**args)


def test_unknown_argument_is_a_type_error(tiny_pipe):
    with pytest.raises(TypeError):
        tiny_pipe("x", num_frame=5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(device="tpu"), ValueError, "device: \"tpu\" is not one of \"cuda\""),
        (dict(offload="disk"), ValueError, "offload: \"disk\" is not one of"),
        (dict(quantize="int4"), ValueError, "quantize: \"int4\" is not one of"),
        (dict(vae_precision="fp8"), ValueError, "vae_precision: \"fp8\""),
        (dict(vram_budget_gib=-1), ValueError, "vram_budget_gib: --vram-budget must be a positive number of GiB"),
        (dict(vram_budget_gib="8"), TypeError, "vram_budget_gib must be a number"),
        (dict(vae_tiling="yes"), TypeError, "vae_tiling must be a bool"),
        (dict(device=0), TypeError, "device must be a str"),
    ],
)
def test_bad_load_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        contentv.ContentVPipeline.from_pretrained(str(TINY), **kwargs)


def test_missing_and_broken_models(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="the model folder .*nope does not exist"):
        contentv.ContentVPipeline.from_pretrained(str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download Owner/Missing"):
        contentv.ContentVPipeline.from_pretrained("Owner/Missing")
    part = tmp_path / "partial"
    part.mkdir()
    (part / "transformer").symlink_to(TINY / "transformer")
    with pytest.raises(FileNotFoundError, match="is incomplete.*vae/ \\(Wan2.1 VAE\\) is missing"):
        contentv.ContentVPipeline.from_pretrained(part)
    with pytest.raises(TypeError):
        contentv.ContentVPipeline.from_pretrained(3)


def test_hugging_face_cache_id_and_entry(tmp_path, monkeypatch):
    entry = tmp_path / "hub" / "models--Owner--Tiny"
    (entry / "snapshots").mkdir(parents=True)
    (entry / "snapshots" / "abc123").symlink_to(TINY)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # "Owner/Tiny" is not a folder here
    p = contentv.ContentVPipeline.from_pretrained("Owner/Tiny")
    assert p.model_dir == str(entry / "snapshots" / "abc123")
    p2 = contentv.ContentVPipeline.from_pretrained(entry)
    assert p2.model_dir == p.model_dir
    p2.set_progress_bar_config(disable=True)
    a = p2("x", generator=4, output_type="latent", **SMALL).frames
    assert a.shape == (1, 16, 2, 4, 8)


def test_to_accepts_only_its_own_device(tiny_pipe):
    same = "cpu" if tiny_pipe.device == "cpu" else "cuda"
    other = "cuda" if same == "cpu" else "cpu"
    assert tiny_pipe.to(same) is tiny_pipe
    with pytest.raises(ValueError, match="from_pretrained"):
        tiny_pipe.to(other)


# ----- export_to_video ------------------------------------------------------------------------


def ffprobe(path):
    p = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height,avg_frame_rate,nb_read_frames,pix_fmt", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(p.stdout)["streams"][0]


def test_export_to_video_round_trip(tiny_pipe, tmp_path):
    frames = tiny_pipe("x", generator=8, **SMALL).frames
    out = contentv.export_to_video(frames, tmp_path / "sub" / "v.mp4", fps=12)
    assert out == str(tmp_path / "sub" / "v.mp4")
    s = ffprobe(out)
    assert (s["codec_name"], s["width"], s["height"], s["avg_frame_rate"], s["nb_read_frames"]) == ("h264", 64, 32, "12/1", "5")
    # float frames in [0, 1] (diffusers' np output) and PIL images give the same video
    contentv.export_to_video(frames[0].astype(np.float32) / 255.0, tmp_path / "f.mp4", fps=12)
    assert (tmp_path / "f.mp4").read_bytes() == Path(out).read_bytes()
    pytest.importorskip("PIL")
    import PIL.Image

    contentv.export_to_video([PIL.Image.fromarray(f) for f in frames[0]], tmp_path / "p.mp4", fps=12)
    assert (tmp_path / "p.mp4").read_bytes() == Path(out).read_bytes()
    # replacing its own previous video is fine
    contentv.export_to_video(frames, out, fps=12)


def test_export_to_video_refuses_bad_input_and_other_files(tmp_path):
    f = np.zeros((3, 16, 16, 3), np.uint8)
    notes = tmp_path / "notes.mp4"
    notes.write_text("my notes")
    with pytest.raises(ValueError, match="exists and is not a video"):
        contentv.export_to_video(f, notes)
    assert notes.read_text() == "my notes"
    with pytest.raises(ValueError, match="fps: --fps must be between 1 and 240, got 0"):
        contentv.export_to_video(f, tmp_path / "a.mp4", fps=0)
    with pytest.raises(ValueError, match="must end in .mp4"):
        contentv.export_to_video(f, tmp_path / "a.txt")
    with pytest.raises(ValueError, match=r"RGB frames \[F, H, W, 3\]"):
        contentv.export_to_video(np.zeros((3, 16, 16), np.uint8), tmp_path / "a.mp4")
    with pytest.raises(TypeError, match="fps must be an int"):
        contentv.export_to_video(f, tmp_path / "a.mp4", fps="24")
    assert not (tmp_path / "a.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]  # no partial files


# ----- memory ---------------------------------------------------------------------------------


@emu
def test_del_frees_the_device_memory():
    base = _engine.device_memory()
    if base is None:
        print("SKIP: del frees device memory: no CUDA device in this process (the emulated-GPU pass runs it)")
        pytest.skip("no CUDA device")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = contentv.ContentVPipeline.from_pretrained()
    p.set_progress_bar_config(disable=True)
    p("x", generator=1, **SMALL)
    loaded = _engine.device_memory()
    assert loaded[0] > base[0], f"the loaded pipeline holds no device memory? {base} -> {loaded}"
    del p
    gc.collect()
    # In use: back to the start (the session's other pipelines hold theirs); cached: the pool
    # gave its free blocks back (at most what it held at the start).
    after = _engine.device_memory()
    assert after[0] == base[0] and after[1] <= base[1], f"{base} -> {loaded} -> {after}"
    # close() does the same, and a closed pipeline says so
    p = contentv.ContentVPipeline.from_pretrained(str(TINY))
    p.close()
    after = _engine.device_memory()
    assert after[0] == base[0] and after[1] <= base[1], f"after close(): {base} -> {after}"
    with pytest.raises(RuntimeError, match="closed"):
        p("x", **SMALL)


def test_cuda_without_a_gpu_says_why():
    if _engine.device_memory() is not None:
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="no usable GPU"):
        contentv.ContentVPipeline.from_pretrained(str(TINY), device="cuda")
