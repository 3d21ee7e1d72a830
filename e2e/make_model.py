"""Writes a tiny random-weight Llama model that vLLM can serve, from code, deterministically.

Run it with the engine virtualenv's python (it needs torch, transformers and tokenizers, which the project's
own .venv does not carry): `$(e2e/install-engine.sh --python) e2e/make_model.py OUT_DIR`.

Nothing is downloaded: the byte-level BPE tokenizer is trained here on the text below, the weights are drawn
from a seeded generator, and every file is written so the same seed gives byte-identical files (checked by
tests/engine/test_model.py). The model is a real Llama architecture (grouped-query attention, RoPE, SwiGLU)
at a toy size, so the engine's loader, scheduler, KV cache and metrics do real work; its text is nonsense.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import tempfile

# Architecture: small enough to load in seconds on a CPU, big enough that prefill and decode take
# measurable time. 2 KV heads of 64 dims in 4 layers at bf16 = 2 KiB of KV cache per token.
HIDDEN_SIZE = 256
INTERMEDIATE_SIZE = 688
NUM_LAYERS = 4
NUM_HEADS = 4
NUM_KV_HEADS = 2
# Long enough for any max-model-len chipfit renders for the example services (RoPE has no parameters, so a
# long context costs nothing until the KV cache holds it).
MAX_POSITION_EMBEDDINGS = 131072
VOCAB_SIZE = 2048
DEFAULT_SEED = 20261129
SERVED_NAME = "chipfit-tiny-llama"

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# A chat template in the Hugging Face format (Jinja over `messages`), so /v1/chat/completions works.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# Training text for the tokenizer: plain English about serving LLMs, repeated with variations so BPE
# finds merges. Deterministic by construction (no randomness, fixed order).
_CORPUS_SENTENCES = (
    "The operator places large language model inference on a mixed fleet of accelerators.",
    "Each service states its time to first token and inter token latency objectives.",
    "A replica runs one serving engine with tensor parallelism across its devices.",
    "Continuous batching admits new requests while others decode, so latency rises with load.",
    "The key value cache grows with every token and limits how many sequences run at once.",
    "Prefill reads the whole prompt; decode writes one token per step for every running sequence.",
    "Prometheus scrapes the engine metrics endpoint and the dashboards plot the histograms.",
    "The cheapest placement that meets every objective wins, and the rest of the fleet stays free.",
    "Quick brown foxes jump over lazy dogs while numbers like 0 1 2 3 4 5 6 7 8 9 count along.",
    "Hello, how are you today? I am fine, thank you. What would you like to know about the weather?",
)


def corpus() -> list[str]:
    """The tokenizer's training text."""
    lines: list[str] = []
    for round_index in range(8):
        for i, sentence in enumerate(_CORPUS_SENTENCES):
            lines.append(f"{sentence} ({round_index}.{i})")
            lines.append(sentence.lower())
            lines.append(sentence.upper())
    return lines


def build_tokenizer() -> object:
    """A byte-level BPE tokenizer trained on `corpus()` (every byte is representable: no unknown text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[BOS, EOS, UNK, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def write_model(out_dir: pathlib.Path, seed: int) -> dict[str, str]:
    """Writes config, weights, tokenizer and generation config into out_dir; returns file -> sha256."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    raw = build_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    vocab_size = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.do_sample = False
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    files = sorted(p for p in out_dir.iterdir() if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path, help="folder to write (replaced atomically)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    out: pathlib.Path = args.out_dir
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written into a sibling temporary folder, then renamed: a reader never sees a half-written model.
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    digests = write_model(tmp, args.seed)
    meta = {"seed": args.seed, "served_name": SERVED_NAME, "sha256": digests}
    (tmp / "chipfit-model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o755)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
