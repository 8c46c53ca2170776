"""Model and adapter folders from users, through the CLI: a path typo, custom code, pickles.

Each is refused before any work with one line naming the argument and the fix; nothing is
looked up on a model hub, run from the folder or unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mosa import tiny
from mosa.cli import main


def tiny_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny.path(), folder)
    return folder


def one_line_exit(argv: list[str]) -> str:
    """The message ``main(argv)`` exits with, checked to be one line (a non-zero exit)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    message = exited.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "argv",
    [
        ["align", "{missing}", "--prompts", "{prompts}", "--out", "{out}"],
        ["sample", "{missing}", "--prompt", "hi"],
        ["eval", "{missing}", "--dataset", "tiny-harmful", "--out", "{out}"],
    ],
    ids=["align", "sample", "eval"],
)
def test_a_model_path_typo_fails_at_once(tmp_path, argv):
    """Never handed to a model hub: ``align`` used to try ``nonexistent`` online 10 times."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a harmful request\n")
    paths = {"missing": tmp_path / "nonexistent", "prompts": prompts, "out": tmp_path / "out"}
    message = one_line_exit([arg.format(**paths) for arg in argv])
    assert message.startswith(f"model {paths['missing']}: no such folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_custom_tokenizer_code_is_never_run(tmp_path):
    """A ``tokenizer_config.json`` whose ``auto_map`` points at a ``.py`` file in the folder:
    transformers would ask "run the custom code? [y/N]" and run it on "y". Here stdin is closed
    and the file would leave a marker if it ran."""
    folder = tiny_copy(tmp_path)
    marker = tmp_path / "custom-code-ran"
    (folder / "evil_tokenizer.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    auto_map = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
    for name in ("tokenizer_config.json", "config.json"):
        settings = json.loads((folder / name).read_text())
        settings["auto_map"] = auto_map
        (folder / name).write_text(json.dumps(settings))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "EvilTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))

    command = [sys.executable, "-m", "mosa.cli", "sample", str(folder), "--prompt", "hi"]
    done = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode != 0
    assert not marker.exists()
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mosa sample: {folder / 'tokenizer_config.json'} names custom")
    assert "never runs code from a model folder; remove auto_map" in last
    assert "trust_remote_code=True" not in done.stderr and "Traceback" not in done.stderr


def test_a_pickled_adapter_is_refused(tmp_path):
    """peft would unpickle ``adapter_model.bin``; the message says to convert it, and never to
    load it with ``weights_only=False``."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    torch.save({"base_model.model.lora_A.weight": torch.zeros(2, 2)}, adapter / "adapter_model.bin")
    argv = ["eval", "--dataset", "tiny-harmful", "--out", str(tmp_path / "out")]
    message = one_line_exit([*argv, "--adapter", str(adapter)])
    assert message.startswith(f"--adapter: {adapter} has no adapter_model.safetensors")
    assert "found adapter_model.bin" in message and "convert them to safetensors" in message
    assert "weights_only" not in message


def _break(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder / name


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("config.json", "[1, 2]", "must hold a JSON object ({...}), got a JSON array"),
        ("tokenizer.json", "{not json", "is not valid JSON (Expecting property name"),
        ("tokenizer_config.json", '{"a": 1,', "is not valid JSON ("),
    ],
)
def test_a_broken_json_file_of_the_folder_is_named(tmp_path, name, text, problem):
    """transformers failed on these with "argument after ** must be a mapping, not list" or
    "Expecting property name ... (char 1)", naming no file."""
    from mosa.models import load_model
    from mosa.text.prompts import load_tokenizer

    path = _break(tiny_copy(tmp_path), name, text)
    expected = f"{path} {problem}"
    with pytest.raises(ValueError) as raised:
        load_tokenizer(path.parent)
    assert str(raised.value).startswith(expected)
    assert str(raised.value).endswith("; restore it from the model's original files")
    if name == "config.json":
        with pytest.raises(ValueError) as raised:
            load_model(path.parent)
        assert str(raised.value).startswith(expected)
    message = one_line_exit(["sample", str(path.parent), "--prompt", "hi"])
    assert expected in message


def test_sample_names_a_missing_required_config_key(tmp_path):
    """Without n_heads the error said "not divisible by n_heads=12", a number nobody wrote."""
    folder = tiny_copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["n_heads"]
    (folder / "config.json").write_text(json.dumps(config))
    message = one_line_exit(["sample", str(folder), "--prompt", "hi"])
    assert message.startswith(f"mosa sample: {folder / 'config.json'} lacks n_heads, which every")
    assert "n_heads=12" not in message


def test_sample_names_the_prompt_holding_the_mask_token(tmp_path):
    """The canvas refuses it with an API message (response=, fill_prompt_masks=); the CLI names
    the prompt, before any sampling."""
    detail = "holds the mask token '<|mdm_mask|>' (id 4), which marks the positions to generate"
    argv = ["sample", "--gen-length", "8", "--prompt", "hi"]
    message = one_line_exit([*argv, "--prompt", "how to <|mdm_mask|> a bank"])
    assert message == f"mosa sample: --prompt 2 {detail}; remove it from the prompt"
    file = tmp_path / "prompts.txt"
    file.write_text("hello\n<|mdm_mask|> there\n")
    message = one_line_exit([*argv, "--prompts-file", str(file), "--no-chat-template"])
    assert (
        message
        == f"mosa sample: --prompts-file {file}: prompt 2 {detail}; remove it from the prompt"
    )
