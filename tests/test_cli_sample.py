"""``mosa sample`` end to end on a tiny random checkpoint with its own word-level tokenizer."""

import json
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mosa.cli import main
from mosa.models import build_model

sys.path.insert(0, str(Path(__file__).parent / "models"))
from tiny_checkpoints import TINY_CONFIGS, random_weights  # noqa: E402

SPECIAL = {"<|user|>": 121, "<|assistant|>": 122, "<|eot|>": 124, "<|eos|>": 125, "<|mask|>": 126}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llada")
    model = build_model(dict(TINY_CONFIGS["llada"]), device="cpu", dtype=torch.float32)
    model.load_state_dict(random_weights(model, 0))
    model.save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(120)} | SPECIAL
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, eos_token="<|eos|>", pad_token="<|eos|>", mask_token="<|mask|>"
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|eot|>"]}
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokenizer.save_pretrained(folder)
    return folder


def test_sample_writes_one_json_line_per_prompt(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "w1 w2 w3"}) + "\n" + json.dumps("w4") + "\n")
    out = tmp_path / "out.jsonl"
    args = [
        "sample", str(checkpoint), "--prompts-file", str(prompts), "--prompt", "w5 w6",
        "--steps", "8", "--gen-length", "8", "--block-length", "4", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["w5 w6", "w1 w2 w3", "w4"]
    for record in records:
        words = record["response"].split()
        assert 1 <= len(words) <= 8 and all(w.startswith("w") for w in words)


def test_sample_is_the_sampler_output(checkpoint, capsys):
    """The CLI decodes exactly what generate() returns for the chat-templated prompt."""
    from mosa.models import load_model
    from mosa.sampling import generate
    from mosa.text.prompts import load_tokenizer

    assert (
        main(["sample", str(checkpoint), "--prompt", "w7 w8", "--steps", "4", "--gen-length", "4"])
        == 0
    )
    record = json.loads(capsys.readouterr().out.strip())
    tokenizer = load_tokenizer(checkpoint)
    ids = tokenizer("<|user|> w7 w8 <|assistant|>", add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]
    out = generate(load_model(checkpoint), ids, steps=4, gen_length=4, block_length=4)
    assert record["response"] == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_sample_defaults_to_the_embedded_tiny_model(capsys):
    prompt = "what is 2 plus 3 ?"
    assert main(["sample", "--prompt", prompt, "--gen-length", "8", "--steps", "8"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["prompt"] == prompt and record["response"].strip()


def test_sample_rejects_bad_input(checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="no prompts"):
        main(["sample", str(checkpoint)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(SystemExit, match="line 1: not valid JSON"):
        main(["sample", str(checkpoint), "--prompts-file", str(bad)])
    with pytest.raises(ValueError, match="do not apply to LLaDA"):
        main(["sample", str(checkpoint), "--prompt", "w1", "--alg", "entropy"])
    with pytest.raises(ValueError, match="cuda_graphs=True needs: prompt must be on a CUDA"):
        main(["sample", str(checkpoint), "--prompt", "w1", "--device", "cpu", "--cuda-graphs"])
