"""Memory measurements: resident weight bytes of dense, tied and packed models; KV bytes; peaks."""

from __future__ import annotations

import pytest


def _load(path, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs.setdefault("dtype", torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _linear_weight_numel(model) -> int:
    import torch

    return sum(m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n != "lm_head")


def test_weights_bytes_of_a_dense_model_is_its_parameters_and_buffers(tiny_llama_dir):
    import torch

    from evals.memory import weights_bytes

    model = _load(tiny_llama_dir)
    expected = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers())
    assert weights_bytes(model) == expected
    # bf16 halves the fp32 checkpoint: the count follows the dtype actually held.
    fp32 = _load(tiny_llama_dir, dtype=torch.float32)
    assert weights_bytes(fp32) - _tensor_bytes(fp32.buffers()) == 2 * _tensor_bytes(model.parameters())


def test_weights_bytes_counts_tied_embeddings_once():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from evals.memory import input_embedding_bytes_unread, weights_bytes

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    per_name = _tensor_bytes(p for _, p in model.named_parameters(remove_duplicate=False))
    embedding_bytes = 512 * 64 * 2
    total = weights_bytes(model)
    assert total == per_name - embedding_bytes + _tensor_bytes(model.buffers())
    # Tied: decode reads the whole table through lm_head, so nothing is left unread.
    assert input_embedding_bytes_unread(model) == 0


def test_untied_input_embedding_is_reported_unread(tiny_llama_dir):
    from evals.memory import input_embedding_bytes_unread

    model = _load(tiny_llama_dir)
    vocab, hidden = model.model.embed_tokens.weight.shape
    assert input_embedding_bytes_unread(model) == vocab * hidden * 2


def test_torchao_float8_weights_are_smaller_than_get_memory_footprint_says(tiny_llama_dir):
    """The documented trap: get_memory_footprint() reports the bf16 size of torchao weights."""
    from torchao.quantization import Float8WeightOnlyConfig
    from transformers import TorchAoConfig

    from evals.memory import measure_memory, weights_bytes

    dense = _load(tiny_llama_dir)
    dense_bytes = weights_bytes(dense)
    quant = _load(tiny_llama_dir, quantization_config=TorchAoConfig(Float8WeightOnlyConfig()), device_map="cpu")
    record = measure_memory(quant, tiny_llama_dir)
    assert record["get_memory_footprint_bytes"] == dense_bytes
    # Linear weights go from 2 bytes to 1 byte each, plus small per-row scales.
    halved = dense_bytes - _linear_weight_numel(dense)
    assert halved <= record["weights_bytes"] < halved + 0.02 * dense_bytes
    assert record["weights_bytes"] < record["get_memory_footprint_bytes"]


def test_nf4_counts_packed_data_and_block_scales(tiny_llama_dir):
    import torch
    from transformers import BitsAndBytesConfig

    from evals.memory import weights_bytes

    dense_bytes = weights_bytes(_load(tiny_llama_dir))
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_compute_dtype=torch.bfloat16)
    quant = _load(tiny_llama_dir, quantization_config=config, device_map="cpu")
    counted = weights_bytes(quant)
    assert counted < 0.7 * dense_bytes
    # get_memory_footprint() sees the packed uint8 data but not the fp32 absmax per 64-block.
    absmax_bytes = sum(
        m.weight.quant_state.shape.numel() // 64 * 4
        for m in quant.modules() if type(m).__name__ == "Linear4bit"
    )
    assert counted - quant.get_memory_footprint() >= absmax_bytes > 0


def test_kv_bytes_per_token_matches_hand_computation():
    import torch
    from transformers import LlamaConfig

    from evals.memory import MemoryMeasurementError, kv_bytes_per_token

    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims.
    smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, head_dim=64, intermediate_size=1536)
    assert kv_bytes_per_token(smollm2, torch.bfloat16) == 2 * 30 * 3 * 64 * 2 == 23040
    assert kv_bytes_per_token(smollm2, "float32") == 46080
    # No head_dim and no num_key_value_heads: hidden / heads and plain multi-head attention.
    mha = LlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=512)
    mha.num_key_value_heads = None
    assert kv_bytes_per_token(mha, "torch.float16") == 2 * 4 * 8 * 32 * 2
    with pytest.raises(MemoryMeasurementError, match="unknown dtype"):
        kv_bytes_per_token(smollm2, "bfloat17")


def test_measure_memory_record(tiny_llama_dir):
    from evals.memory import measure_memory

    model = _load(tiny_llama_dir)
    record = measure_memory(model, tiny_llama_dir)
    assert record["disk_bytes"] == sum(p.stat().st_size for p in tiny_llama_dir.rglob("*") if p.is_file())
    assert record["kv_bytes_per_token"] == 2 * 2 * 2 * 32 * 2
    assert record["peak_rss_bytes"] > record["weights_bytes"] > 0
    assert record["get_memory_footprint_bytes"] == record["weights_bytes"]
    assert record["cuda_peak_allocated_bytes"] is None and record["cuda_peak_reserved_bytes"] is None
    assert measure_memory(model, None)["disk_bytes"] is None


def test_peak_rss_follows_a_reset():
    import torch

    from evals.memory import peak_rss_bytes, reset_peak_memory

    try:
        open("/proc/self/clear_refs", "w").close()
    except OSError:
        pytest.skip("peak RSS cannot be reset here")
    reset_peak_memory()
    before = peak_rss_bytes()
    block = torch.ones(64 * 2**20, dtype=torch.uint8)  # touched pages are resident
    del block
    assert peak_rss_bytes() >= before + 60 * 2**20


def _touch_mib(n: int):
    import torch

    return torch.ones(n * 2**20, dtype=torch.uint8)  # touched pages are resident


def test_peak_rss_covers_the_block_only():
    from evals.memory import PeakRSS

    with PeakRSS() as big:
        block = _touch_mib(96)
        del block
    if not big.exact:
        pytest.skip("peak RSS cannot be reset here; the sampled path is tested below")
    with PeakRSS() as small:
        pass
    assert big.peak_bytes >= small.peak_bytes + 90 * 2**20  # the second block started from a reset


def test_peak_rss_samples_where_the_kernel_peak_cannot_be_reset(monkeypatch):
    import time

    import evals.memory as memory

    monkeypatch.setattr(memory, "_reset_rss_high_water_mark", lambda: False)
    with memory.PeakRSS(interval_s=0.01) as sampled:
        block = _touch_mib(96)
        time.sleep(0.2)  # the sampler sees the block
        del block
    assert not sampled.exact
    import psutil

    assert sampled.peak_bytes >= psutil.Process().memory_info().rss + 60 * 2**20


def test_quantize_stage_measures_peak_memory_with_the_same_tool():
    import evals.memory
    from pipelines.stages import quantize

    assert quantize.PeakRSS is evals.memory.PeakRSS


def test_measure_memory_rejects_a_missing_checkpoint(tmp_path, tiny_llama_dir):
    from evals.memory import MemoryMeasurementError, measure_memory

    with pytest.raises(MemoryMeasurementError, match="does not exist"):
        measure_memory(_load(tiny_llama_dir), tmp_path / "missing")
