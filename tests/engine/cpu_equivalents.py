"""The one place where a rendered vLLM command line for an accelerator pod becomes one this machine can run.

The operator renders `vllm serve MODEL --flag=value ...` for a GPU (or Inferentia) pod; this machine has
a CPU, no model hub and shared cores. Every flag the renderer emits is either kept verbatim (it is what the
tests check: lengths, batch and chunk limits, dtype, served name, quantization) or mapped here, with why:

- MODEL (a Hugging Face repo) -> the generated tiny model: no hub is reachable; a Llama all the same.
- --host=0.0.0.0 -> --host=127.0.0.1: tests serve on loopback only.
- --port=8000 -> a free port: several engines and work trees share the machine.
- --tensor-parallel-size=N -> 1: one CPU "device"; N > 1 on CPU needs an OpenMP core group per rank,
  and this machine has 2 cores.
- --kv-transfer-config (NixlConnector) -> dropped: it needs the nixl package, UCX and a peer engine;
  the rendered line is parse-checked with it.
- --quantization=fp8 -> dropped: vLLM's CPU build has no FP8 kernels (serving fails in
  `_C::static_scaled_fp8_quant`); the rendered line is parse-checked with it. The weights run in --dtype.
- (nothing) -> --enforce-eager added: no graph compilation, so start-up is ~2x faster on CPU.

Flags not in this list pass through unchanged, so a new rendered flag is exercised by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

LOOPBACK: Final = "127.0.0.1"
# Flags left out of the line this machine runs (parse-checked on the rendered line only).
_DROPPED_FLAGS: Final = ("--kv-transfer-config",)
# Exact arguments left out (the flag with other values would pass through).
_DROPPED_ARGS: Final = ("--quantization=fp8",)
ADDED_FLAGS: Final = ("--enforce-eager",)


def _name(arg: str) -> str:
    return arg.split("=", 1)[0]


def vllm_cpu_args(args: Sequence[str], *, model_dir: str, port: int | str) -> tuple[str, ...]:
    """The arguments after `vllm serve` for this CPU, from the rendered container args (see the table)."""
    if not args or args[0].startswith("-"):
        raise ValueError(f"a rendered vLLM command line starts with the model, got {list(args[:1])}")
    if any(a.startswith("--") and "=" not in a for a in args[1:]):
        # The renderer writes --flag=value throughout; a bare flag would be a boolean this table misses.
        bare = [a for a in args[1:] if a.startswith("--") and "=" not in a]
        raise ValueError(f"unexpected bare flags {bare}: map them in tests/engine/cpu_equivalents.py")
    out = [model_dir]
    for arg in args[1:]:
        name = _name(arg)
        if name in _DROPPED_FLAGS or arg in _DROPPED_ARGS:
            continue
        if name == "--host":
            out.append(f"--host={LOOPBACK}")
        elif name == "--port":
            out.append(f"--port={port}")
        elif name == "--tensor-parallel-size":
            out.append("--tensor-parallel-size=1")
        else:
            out.append(arg)
    return (*out, *ADDED_FLAGS)
