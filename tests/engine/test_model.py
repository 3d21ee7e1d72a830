"""e2e/make_model.py: the same seed gives byte-identical files, and what it writes is a usable model."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Final

import pytest

from engine import harness

pytestmark = pytest.mark.engine

MAKE_MODEL: Final = harness.REPO_DIR / "e2e" / "make_model.py"
# Runs in the engine venv (torch, transformers), offline (HF_HUB_OFFLINE=1): three models in one process,
# then the tokenizer checks.
SCRIPT: Final = """
import importlib.util, json, pathlib, sys
spec = importlib.util.spec_from_file_location("make_model", sys.argv[1])
mm = importlib.util.module_from_spec(spec); spec.loader.exec_module(mm)
out = pathlib.Path(sys.argv[2])
digests = {name: mm.write_model(out / name, seed) for name, seed in (("a", 7), ("b", 7), ("c", 8))}
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(str(out / "a"))
text = "Continuous batching admits new requests, 42 times!"
ids = tok(text, add_special_tokens=False)["input_ids"]
messages = [{"role": "user", "content": "hi"}]
chat = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
print(json.dumps({"digests": digests, "roundtrip": tok.decode(ids), "tokens": len(ids), "chat": chat}))
"""


@pytest.fixture(scope="module")
def generated(
    engine_install: harness.EngineInstall, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    out = tmp_path_factory.mktemp("models")
    result = subprocess.run(
        [str(engine_install.python), "-c", SCRIPT, str(MAKE_MODEL), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def test_same_seed_gives_byte_identical_files(generated: dict[str, object]) -> None:
    digests = generated["digests"]
    assert isinstance(digests, dict)
    assert digests["a"] == digests["b"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        digests["a"]
    )
    # Another seed: other weights, the same tokenizer (it is trained on fixed text, not drawn).
    assert digests["c"]["model.safetensors"] != digests["a"]["model.safetensors"]
    assert digests["c"]["tokenizer.json"] == digests["a"]["tokenizer.json"]


def test_installed_model_is_what_the_generator_writes(engine_install: harness.EngineInstall) -> None:
    meta = json.loads((engine_install.model / "chipfit-model.json").read_text())
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256((engine_install.model / name).read_bytes()).hexdigest() == digest, name
    config = json.loads((engine_install.model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention


def test_tokenizer_round_trips_text_and_renders_chat(generated: dict[str, object]) -> None:
    assert generated["roundtrip"] == "Continuous batching admits new requests, 42 times!"
    # Trained merges: fewer tokens than bytes.
    assert isinstance(generated["tokens"], int) and generated["tokens"] < len("Continuous batching admits")
    assert generated["chat"] == "<s><|user|>hi<|end|><|assistant|>"
