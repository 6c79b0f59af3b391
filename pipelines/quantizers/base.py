"""The quantizer contract: one class per scheme, registered under one key.

A quantizer validates its parameters (pydantic, unknown keys rejected),
checks that its library can run here, writes a checkpoint into a directory,
and knows how to load that checkpoint back. Everything else (calibration
data, layer errors, timing, manifests) is done once for all schemes by the
quantize stage.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from pipelines.errors import QevalError, UnsupportedHere


class Params(BaseModel):
    """Base for scheme parameters; a typo is an error that names the field."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class QuantizeRequest:
    """What a quantizer gets: the base model, its settings and where to save."""

    source: str  # local directory or Hub id of the base model
    revision: str | None
    dtype: str  # the sweep's compute dtype: what the quantizer loads and computes in
    device: str  # "cpu" or "cuda"
    params: Any  # the quantizer's validated Params
    ignore: list[str]  # exact module names to keep in high precision
    calibration: Any | None  # pipelines.quantizers.calibration.CalibrationSet for calibrating schemes
    out_dir: Path  # save the checkpoint (and tokenizer) here
    n_gpus: int = 1
    trust_remote_code: bool = False  # the model recipe's field; every from_pretrained of the model reads it
    storage_dtype: str | None = None  # the checkpoint's own precision; the baseline is saved in it


@dataclass
class QuantizeOutcome:
    """What a quantizer reports back for quantize.json."""

    backend: str  # kernel or format that will run the checkpoint
    format: str  # checkpoint format (gptq, awq-gemm, bitsandbytes, torchao, compressed-tensors, dense)
    backend_losses: dict[str, float] = field(default_factory=dict)  # per-layer loss the library reports
    notes: list[str] = field(default_factory=list)
    # Engines other than transformers: what the engine reports (version, type, bits per weight,
    # sizes) for quantize.json, and per-tensor errors it measured itself (layer_errors.LayerError).
    engine_info: dict[str, Any] | None = None
    layer_errors: list[Any] = field(default_factory=list)


class Quantizer:
    """Base class. Subclasses set the class attributes and implement ``quantize``.

    The stages read a scheme's behaviour only from these attributes, never from
    its name, so a new scheme needs no stage edit.
    """

    key: ClassVar[str]
    library: ClassVar[str]  # distribution name, for its version
    # What runs the checkpoint: "transformers" (loaded with ``load``) or "llama.cpp" (a GGUF
    # file; the stages evaluate and benchmark it through pipelines.llamacpp's build).
    engine: ClassVar[str] = "transformers"
    ParamsModel: ClassVar[type[Params]] = Params
    # Checkpoint format written (the scheme table of docs/schemes.md shows it).
    format: ClassVar[str] = "dense"
    # Weight bits of the stored layers; None where not fixed by the class (see weight_bits).
    bits: ClassVar[int | None] = None
    # The reference every scheme is judged against (no layer errors, no compression).
    is_reference: ClassVar[bool] = False
    # Evaluates a checkpoint someone else quantized: nothing is written, the recipe's
    # ``source`` is the checkpoint, and there is no base model to compare layers with.
    prequantized: ClassVar[bool] = False
    # Fits on calibration windows (GPTQ, AWQ, SmoothQuant); the calibration settings
    # then belong to the stage key.
    calibrates: ClassVar[bool] = False
    # The quantize stage reloads the checkpoint and scores each layer against the base model.
    measures_layer_errors: ClassVar[bool] = True
    stores_compressed: ClassVar[bool] = True
    # Divides layer inputs by scales folded into the op before (AWQ, SmoothQuant);
    # the layer report then adds a fitted figure beside the raw one.
    folds_input_scales: ClassVar[bool] = False
    install_hint: ClassVar[str] = "pip install -e ."
    # The checkpoint's config carries its compute dtype (bitsandbytes, torchao): load forces none.
    loads_in_saved_dtype: ClassVar[bool] = False
    # The dtypes the library's quantize step (calibration and packing) accepts (None: any). Where the
    # sweep's is not one of them, the scheme quantizes in the storage dtype (else the first listed)
    # and records why; its checkpoint is still loaded, evaluated and served in the sweep's dtype.
    quantize_dtypes: ClassVar[tuple[str, ...] | None] = None
    quantize_dtypes_reason: ClassVar[str] = ""
    # For `qeval plan`'s time estimate (pipelines.execution.estimate): the time of this scheme's
    # layers relative to dense ones in the compute dtype, for prefill-like work and for decoding,
    # and its calibration's cost (fixed seconds at the embedded model's size, and forward passes
    # per calibration token). Fitted on the embedded model on 2 cores; docs/compute.md.
    prefill_cost: ClassVar[float] = 1.0
    decode_cost: ClassVar[float] = 1.0
    calibration_fixed_s: ClassVar[float] = 0.0
    calibration_passes: ClassVar[float] = 0.0

    def emulated_on(self, device: str, checkpoint_format: str | None = None) -> bool:
        """True where ``device`` runs a dequantized stand-in of the scheme's real kernel.

        Quality numbers stay real; speed and memory are not those of the target
        kernel. ``checkpoint_format`` is the format the quantize stage found; only
        a prequantized checkpoint's answer depends on it. Default: the library's
        own kernel runs wherever it loads.
        """
        return False

    def weight_bits(self, params: Params) -> int | None:
        """Bits per stored weight under ``params`` (None: not a fixed-width weight format)."""
        return getattr(params, "bits", None) or self.bits

    def library_version(self) -> str:
        try:
            return metadata.version(self.library)
        except metadata.PackageNotFoundError as exc:
            raise UnsupportedHere(
                f"scheme {self.key!r} needs {self.library}, which is not installed: {self.install_hint}"
            ) from exc

    def parse_params(self, raw: dict[str, Any], where: str) -> Params:
        from pipelines.recipes import validate

        return validate(self.ParamsModel, raw, where)

    def check_environment(self, device: str, params: Params) -> None:
        """Raise UnsupportedHere when the library or the hardware cannot run this scheme."""
        self.library_version()

    def check_model(self, params: Params, layer_shapes: dict[str, tuple[int, int]]) -> None:
        """Raise QevalError when the parameters cannot apply to this model's layers."""

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        raise NotImplementedError

    def load(self, checkpoint: str, device: str, dtype: str, n_gpus: int = 1, *, trust_remote_code: bool = False):
        """Load a checkpoint this quantizer wrote; default: plain transformers in ``dtype``."""
        from pipelines.quantizers.loading import load_checkpoint, torch_dtype

        forced = {} if self.loads_in_saved_dtype else {"dtype": torch_dtype(dtype)}
        return load_checkpoint(checkpoint, device, n_gpus, trust_remote_code=trust_remote_code, **forced)


def check_group_size(group_size: int, layer_shapes: dict[str, tuple[int, int]], scheme: str) -> None:
    """Every quantized layer's input width must be a multiple of the group size."""
    if group_size in (-1, 0):
        return
    bad = {name: shape[1] for name, shape in layer_shapes.items() if shape[1] % group_size}
    if bad:
        widths = sorted(set(bad.values()))
        divisors = [g for g in (128, 64, 32, 16) if all(w % g == 0 for w in widths)]
        fix = f"use group_size {divisors[0]}" if divisors else "use group_size -1 (per channel)"
        example = next(iter(bad))
        raise QevalError(
            f"{scheme}: group_size {group_size} does not divide the input width of {len(bad)} layers "
            f"(e.g. {example}: {bad[example]}). {fix}, e.g. in the model recipe's scheme_overrides."
        )


def match_ignore(patterns: list[str], names: list[str], *, allow_unmatched: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Expand ignore patterns (exact names, globs, or ``re:`` regexes) to module names.

    A pattern that matches nothing is an error (it is almost always a typo),
    except ``lm_head``, which is ignored by default and absent from some models.
    """
    matched: list[str] = []
    for pattern in patterns:
        if pattern.startswith("re:"):
            rx = re.compile(pattern[3:])
            hits = [n for n in names if rx.search(n)]
        else:
            hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits and pattern not in allow_unmatched:
            sample = ", ".join(names[:4])
            raise QevalError(
                f"ignore pattern {pattern!r} matches no linear layer. Layer names look like: {sample}, ... "
                "Use an exact name, a glob (model.layers.*.mlp.down_proj) or 're:<regex>'."
            )
        matched.extend(h for h in hits if h not in matched)
    return matched


def save_tokenizer(request: QuantizeRequest, out_dir: Path | None = None) -> None:
    """Save the base model's tokenizer beside the checkpoint (later stages load it from there)."""
    from pipelines.quantizers.loading import load_tokenizer

    tokenizer = load_tokenizer(request.source, request.revision, trust_remote_code=request.trust_remote_code)
    tokenizer.save_pretrained(out_dir or request.out_dir)
