"""Every bad value or file is refused in one line that names the problem and the fix, never a
traceback and never accepted silently (the catalogue of issue 12)."""
import json
import os
import shutil

import pytest
import torch
from PIL import Image

from attnflow.cli import main
from attnflow.models import build

TRAIN = ["train", "--preset", "glow-digits", "--quiet", "--set", "model.steps=1", "--set", "model.hidden=8",
         "--set", "train.threads=1"]


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def one_line_error(capsys, argv, code=2):
    """Run the command; it must exit with ``code`` and print exactly one error line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"attnflow {argv[0]}: error: ")
    return lines[0]


def sets(*overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.parametrize(
    "overrides,match",
    [
        # raw tracebacks before
        (["train.checkpoint_every=0"], "train.checkpoint_every must be an integer in 1.."),
        (["train.log_every=0"], "train.log_every must be an integer in 1.."),
        (["train.threads=-1"], "train.threads must be an integer in 0..1,024"),
        (["model.hidden=-4"], "model.hidden must be an integer in 1..4,096"),
        (["model.hidden=0"], "model.hidden must be an integer in 1..4,096"),
        # accepted silently before
        (["train.steps=-5"], "train.steps must be an integer in 1.."),
        (["train.steps=3", "train.time_limit_s=-5"], "train.time_limit_s must be a finite number >= 0"),
        (["train.steps=3", "train.eval_every=-1"], "train.eval_every must be an integer in 0.."),
        (["train.steps=3", "train.warmup_steps=-3"], "train.warmup_steps must be an integer in 0.."),
        (["train.steps=3", "train.grad_clip=-1"], "train.grad_clip must be a finite number >= 0"),
        # wrong advice before: glow has no squeeze_first
        (["model.scales=5"], r"5 scales squeeze the 8x8 input 5 times, so its height and width must be multiples "
                             r"of 32: use scales <= 3"),
    ],
)
def test_bad_training_values(tmp_path, capsys, overrides, match):
    out = tmp_path / "run"
    line = one_line_error(capsys, TRAIN + ["--out", str(out)] + sets(*overrides))
    assert match in line and "squeeze_first" not in line
    main(TRAIN + ["--out", str(out)] + sets("train.steps=2"))  # the refused run leaves nothing in the way
    assert json.loads((out / "results.json").read_text())["step"] == 2


def test_variational_dequantizer_levels_must_match_the_data(tmp_path, capsys):
    """`flowpp-digits-vardeq` with `data.n_bits=3` trained a 17-level dequantizer on 8-level data
    and reported a false upper bound."""
    line = one_line_error(capsys, ["train", "--preset", "flowpp-digits-vardeq", "--out", str(tmp_path / "r"),
                                   "--quiet"] + sets("data.n_bits=3", "train.steps=2", "train.threads=1"))
    assert "built for data with 17 grey levels (model.levels) but the data has 8" in line
    assert "set model.levels=8" in line


@pytest.mark.parametrize(
    "argv,match",
    [
        (["reconstruct", "RUN", "--n", "0"], "argument --n: must be an integer in 1..1,000,000"),
        (["interpolate", "RUN", "--pairs", "0"], "argument --pairs: must be an integer in 1.."),
        (["perturb", "RUN", "--n", "0"], "argument --n: must be an integer in 1.."),
        (["eval", "RUN", "--batch-size", "0"], "argument --batch-size: must be an integer in 1.."),
        (["eval", "RUN", "--max-batches", "-1"], "argument --max-batches: must be an integer in 0.."),
        (["eval", "RUN", "--importance-samples", "-1"], "argument --importance-samples: must be an integer in 0.."),
        (["sample", "RUN", "--temperature", "0"], "argument --temperature: must be a finite number in (0, 100]"),
        (["sample", "RUN", "--temperature", "nan"], "argument --temperature: must be a finite number"),
        (["perturb", "RUN", "--sigmas", "-0.1"], "argument --sigmas: must be a finite number in [0, 100]"),
    ],
)
def test_bad_command_numbers(capsys, trained_run, argv, match):
    argv = [str(trained_run) if a == "RUN" else a for a in argv]
    line = one_line_error(capsys, argv)
    assert match in line and f"(see attnflow {argv[0]} --help)" in line


def test_reconstruct_more_images_than_the_split_holds(capsys, trained_run):
    line = one_line_error(capsys, ["reconstruct", str(trained_run), "--n", "361"])
    assert "361 images asked for; the test split has 360" in line


def test_broken_config_json_is_named(tmp_path, capsys, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.json").write_text('{"model": {"family": "glow"')
    line = one_line_error(capsys, ["eval", str(run)])
    assert f"{run / 'config.json'} is not a readable JSON configuration" in line


def test_hostile_checkpoint_message_gives_no_weights_only_advice(tmp_path, capsys, trained_run):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    torch.save({"model": {}, "step": 0, "x": Evil()}, run / "checkpoint.pt")
    line = one_line_error(capsys, ["eval", str(run)])
    assert f"checkpoint {run / 'checkpoint.pt'} is corrupt, truncated or not an attnflow checkpoint" in line
    assert "weights_only" not in line and not (tmp_path / "pwned").exists()


@pytest.fixture
def folder_dataset(tmp_path):
    """An image folder of 8x8 grey PNGs in train/ and test/."""
    root = tmp_path / "images"
    for split, n in (("train", 20), ("test", 4)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            image = Image.fromarray(torch.randint(0, 256, (8, 8), dtype=torch.uint8).numpy())
            image.save(root / split / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_an_unreadable_image_in_a_folder_dataset_is_named(tmp_path, capsys, folder_dataset, damage):
    bad = folder_dataset / "train" / "07.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a png at all")
    line = one_line_error(capsys, TRAIN + ["--out", str(tmp_path / "r")] + sets(
        "data.name=folder", f'data.root="{folder_dataset}"', "train.batch_size=4", "train.steps=2"))
    assert f"{bad}: cannot read the image" in line and "replace or remove the file" in line


def test_float64_input_to_log_prob_is_explained():
    flow = build("glow-digits", steps=1, hidden=8)
    with pytest.raises(ValueError, match=r"images are torch.float64 but the model's weights are torch.float32; "
                                         r"convert them with x.to\(torch.float32\)"):
        flow.log_prob(torch.rand(2, 1, 8, 8, dtype=torch.float64))
