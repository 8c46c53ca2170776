"""One MoE block's output under the published modeling code, for ``test_moe_layer.py``.

Runs in a separate interpreter whose transformers suits the published code (4.57)::

    python reference_moe_block.py {llada2|lladamoe} MODELING_PY CONFIG_JSON STATE OUTPUT

``MODELING_PY`` is a local copy of ``modeling_llada2_moe.py`` or ``modeling_lladamoe.py`` next
to its ``configuration_*.py``; ``CONFIG_JSON`` the config's keyword arguments; ``STATE`` a
safetensors file with the block's weights and the input ``hidden``; ``OUTPUT`` receives
``out``, the block's output in eval mode. Nothing here imports mosa.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from reference_logits import import_published
from safetensors.torch import load_file, save_file

BLOCKS = {
    "llada2": ("configuration_llada2_moe", "LLaDA2MoeConfig", "LLaDA2MoeSparseMoeBlock"),
    "lladamoe": ("configuration_lladamoe", "LLaDAMoEConfig", "LLaDAMoESparseMoeBlock"),
}


def main(family: str, modeling_py: str, config_json: str, state_file: str, output: str) -> None:
    config_module, config_class, block_class = BLOCKS[family]
    modeling = import_published(Path(modeling_py))
    configuration = sys.modules[f"published.{config_module}"]
    config = getattr(configuration, config_class)(**json.loads(Path(config_json).read_text()))
    state = load_file(state_file)
    hidden = state.pop("hidden")
    block = getattr(modeling, block_class)(config).to(hidden.dtype).eval()
    block.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = block(hidden)
    out = out[0] if isinstance(out, tuple) else out  # LLaDA2's block also returns its routing
    save_file({"out": out.contiguous()}, output)


if __name__ == "__main__":
    main(*sys.argv[1:])
