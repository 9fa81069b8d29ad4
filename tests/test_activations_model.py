"""Model loading and hooking, on tiny random-init GPT-2 and Llama models saved to disk."""

from __future__ import annotations

import pytest
import torch
from activations_helpers import gpt2_dir, llama_dir  # noqa: F401  (fixtures)

from saezoo.activations.model import default_hook, find_blocks, hooked_activations, load_model, resolve_hook
from saezoo.errors import UsageError

BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers"}


@pytest.fixture(params=["gpt2", "llama"])
def loaded(request, gpt2_dir, llama_dir):  # noqa: F811
    directory = gpt2_dir if request.param == "gpt2" else llama_dir
    model, tokenizer = load_model(str(directory))
    return request.param, model, tokenizer


def test_load_model_float32_eval(loaded):
    _, model, tokenizer = loaded
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.bos_token == "<bos>"


def test_load_unknown_model_says_what_was_tried(tmp_path):
    with pytest.raises(UsageError) as err:
        load_model(str(tmp_path / "no-such-model"))
    message = str(err.value)
    assert "not a registered model" in message and "smollm2-135m" in message
    assert "local directory or hub id" in message


def test_default_hook_is_middle_block(loaded):
    arch, model, _ = loaded
    name, blocks = find_blocks(model)
    assert name == BLOCKS[arch] and len(blocks) == 4
    assert default_hook(model) == f"{BLOCKS[arch]}.2"


def test_activations_equal_hidden_states(loaded):
    arch, model, _ = loaded
    ids = torch.randint(4, 20, (3, 16))
    for layer in (0, 1, 2):
        acts = hooked_activations(model, f"{BLOCKS[arch]}.{layer}", ids)
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states
        assert acts.dtype == torch.float32 and acts.shape == (3, 16, 32)
        # hidden_states[0] is the embedding output; [i + 1] is block i's output.
        torch.testing.assert_close(acts, hidden[layer + 1])


def test_forward_stops_after_hook(loaded):
    arch, model, _ = loaded
    _, blocks = find_blocks(model)
    calls = []
    handles = [blocks[i].register_forward_hook(lambda *_, i=i: calls.append(i)) for i in range(4)]
    handles.append(model.get_output_embeddings().register_forward_hook(lambda *_: calls.append("head")))
    try:
        hooked_activations(model, f"{BLOCKS[arch]}.1", torch.randint(4, 20, (2, 8)))
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]


def test_unknown_hook_lists_candidates(loaded):
    arch, model, _ = loaded
    with pytest.raises(UsageError) as err:
        resolve_hook(model, f"{BLOCKS[arch]}.7")
    message = str(err.value)
    assert all(f"{BLOCKS[arch]}.{i}" in message for i in range(4))
    assert "did you mean" in message


def test_activations_can_enter_autograd(loaded):
    # Harvested under inference mode, but an SAE must be able to train on them.
    arch, model, _ = loaded
    acts = hooked_activations(model, f"{BLOCKS[arch]}.1", torch.randint(4, 20, (2, 8)))
    weight = torch.zeros(32, 4, requires_grad=True)
    (acts @ weight).square().sum().backward()
    assert weight.grad is not None
