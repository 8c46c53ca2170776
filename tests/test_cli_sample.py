"""``mosa sample`` end to end on a tiny random checkpoint with its own word-level tokenizer."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mosa.cli import main
from mosa.models import FAMILIES, build_model

sys.path.insert(0, str(Path(__file__).parent / "models"))
from tiny_checkpoints import TINY_CONFIGS, random_weights  # noqa: E402

SPECIAL = {"<|user|>": 121, "<|assistant|>": 122, "<|eot|>": 124, "<|eos|>": 125, "<|mask|>": 126}


def write_checkpoint(folder: Path, family: str) -> Path:
    """A tiny random ``family`` checkpoint with a word-level tokenizer (w0..w119 and the tiny
    configs' special ids) and a chat template."""
    model = build_model(dict(TINY_CONFIGS[family]), device="cpu", dtype=torch.float32)
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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tiny-llada"), "llada")


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
    with pytest.raises(SystemExit, match="do not apply to LLaDA"):
        main(["sample", str(checkpoint), "--prompt", "w1", "--alg", "entropy"])
    args = ["sample", str(checkpoint), "--prompt", "w1", "--gen-length", "8", "--device", "cpu"]
    with pytest.raises(SystemExit, match="cuda_graphs=True needs: prompt must be on a CUDA"):
        main([*args, "--cuda-graphs", "on"])


def _copy_without(checkpoint, tmp_path, names):
    folder = tmp_path / "copy"
    shutil.copytree(checkpoint, folder, ignore=shutil.ignore_patterns(*names))
    return folder


def _one_line_exit(argv) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert isinstance(exited.value.code, str) and "\n" not in exited.value.code
    return exited.value.code


def test_sample_names_what_is_wrong_with_the_folder(checkpoint, tmp_path):
    """One line naming the real problem, where transformers and torch gave tracebacks about
    sentencepiece or a shape mismatch."""
    no_tokenizer = _copy_without(checkpoint, tmp_path, ["tokenizer*", "special_tokens_map.json"])
    message = _one_line_exit(["sample", str(no_tokenizer), "--prompt", "w1"])
    assert message.startswith(f"mosa sample: no tokenizer files in {no_tokenizer}")
    config = json.loads((checkpoint / "config.json").read_text())
    del config["d_model"]
    (no_tokenizer / "config.json").write_text(json.dumps(config))
    shutil.copy(checkpoint / "tokenizer.json", no_tokenizer)
    message = _one_line_exit(["sample", str(no_tokenizer), "--prompt", "w1"])
    assert f"{no_tokenizer / 'config.json'} lacks d_model, which every llada" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_sample_without_cuda_says_so(checkpoint):
    message = _one_line_exit(["sample", str(checkpoint), "--prompt", "w1", "--device", "cuda"])
    assert message == (
        "mosa sample: device 'cuda': CUDA is not available on this machine; use the CPU "
        "(device 'cpu', --device cpu)"
    )
    message = _one_line_exit(["sample", str(checkpoint), "--prompt", "w1", "--device", "gpu"])
    assert "device 'gpu' is not a torch device" in message


@pytest.mark.parametrize("threshold", ["1.5", "-0.5", "nan"])
def test_sample_refuses_a_threshold_outside_0_1_before_loading(tmp_path, threshold):
    not_a_model = tmp_path / "not-a-model"  # the check comes before the model is read
    args = ["sample", str(not_a_model), "--prompt", "w1", "--threshold", threshold]
    with pytest.raises(
        SystemExit, match=r"^--threshold: threshold must be a confidence in \(0, 1\]"
    ):
        main(args)


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("afile/out.jsonl", r".*/afile is a file, not a folder; give another path"),
        ("a_folder", r"is a folder; give a file path, e.g. .*a_folder/responses.jsonl"),
    ],
)
def test_sample_refuses_an_unwritable_out_before_loading(tmp_path, out, message):
    (tmp_path / "afile").write_text("")
    (tmp_path / "a_folder").mkdir()
    not_a_model = tmp_path / "not-a-model"  # the check comes before the model is read
    args = ["sample", str(not_a_model), "--prompt", "w1", "--out", str(tmp_path / out)]
    with pytest.raises(SystemExit, match=r"^--out .*: " + message):
        main(args)


LONG_PROMPT = " ".join(f"w{i % 100}" for i in range(70))  # 72 tokens with the chat template


def test_sample_refuses_a_prompt_too_long_for_the_model_before_sampling(checkpoint, monkeypatch):
    sampler = FAMILIES["llada"].sampler.replace(":", ".")  # the LLaDA sampler's dotted path
    monkeypatch.setattr(sampler, lambda *_, **__: pytest.fail("sampled"))
    args = [
        "sample",
        str(checkpoint),
        "--prompt",
        "w1",
        "--prompt",
        LONG_PROMPT,
        "--batch-size",
        "1",
    ]
    message = (
        r"the prompt \(72 tokens\) and gen_length \(8\) need 80 positions, more than the "
        r"model's max_sequence_length \(64\); .*--truncate-prompt left"
    )
    with pytest.raises(SystemExit, match=message):
        main([*args, "--gen-length", "8"])


def test_sample_truncate_prompt_left_keeps_the_end_of_the_prompt(checkpoint, capsys):
    from mosa.models import load_model
    from mosa.sampling import generate
    from mosa.text.prompts import load_tokenizer

    args = ["sample", str(checkpoint), "--prompt", LONG_PROMPT, "--gen-length", "8"]
    with pytest.warns(UserWarning, match="prompt of 72 tokens truncated to its last 56"):
        assert main([*args, "--truncate-prompt", "left"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    tokenizer = load_tokenizer(checkpoint)
    ids = tokenizer(f"<|user|> {LONG_PROMPT} <|assistant|>", add_special_tokens=False)["input_ids"]
    kept = torch.tensor([ids[-56:]])
    out = generate(load_model(checkpoint), kept, steps=8, gen_length=8, block_length=8)
    assert record["prompt"] == LONG_PROMPT
    assert record["response"] == tokenizer.decode(out[0, 56:], skip_special_tokens=True)


@pytest.mark.parametrize(
    "template, problem",
    [
        ('{{ raise_exception("no system prompts here") }}', "no system prompts here"),
        ("{% for x in %}{{ x }}{% endfor %}", "TemplateSyntaxError"),
    ],
    ids=["raises", "does-not-parse"],
)
def test_sample_names_a_chat_template_that_fails(checkpoint, tmp_path, template, problem):
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "chat_template.jinja").write_text(template)
    argv = ["sample", str(folder), "--prompt", "w7 w8", "--steps", "4", "--gen-length", "4"]
    with pytest.raises(SystemExit) as failed:
        main(argv)
    message = str(failed.value)
    assert message.startswith("mosa sample: the chat template of ") and "\n" not in message
    assert problem in message and "--no-chat-template" in message
    assert main([*argv, "--no-chat-template"]) == 0


@pytest.mark.parametrize("family", ["llada_moe", "llada2"])
def test_sample_runs_the_moe_families_through_their_samplers(tmp_path, family, capsys):
    """LLaDA-MoE through LLaDA's generate, LLaDA2 through block_generate (whose default block
    length stays when --gen-length does not divide it): the CLI decodes what they return."""
    from mosa.models import load_model
    from mosa.text.prompts import load_tokenizer

    folder = write_checkpoint(tmp_path / family, family)
    args = ["sample", str(folder), "--prompt", "w7 w8", "--gen-length", "6", "--steps", "6"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out.strip())
    tokenizer = load_tokenizer(folder)
    ids = tokenizer("<|user|> w7 w8 <|assistant|>", add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]
    model = load_model(folder)
    options = {"steps": 6} if FAMILIES[family].block_diffusion else {"steps": 6, "block_length": 6}
    out = FAMILIES[family].sample(model, ids, None, gen_length=6, **options)
    assert record["response"] == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
