"""Per-block replacements of the DiT's block loop (what skip-layer guidance and block caches plug into)."""
from __future__ import annotations

import copy

import torch

from dit_support import make_inputs, make_model
from steadydancer_core.model import TINY


def test_pass_through_replacement_equals_plain_forward_and_sees_the_documented_args():
    model = make_model()
    inputs = make_inputs()
    seen: list[dict] = []

    def pass_through(args, extra):
        seen.append({k: (tuple(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in args.items() if k != "pe"})
        return extra["original_block"](args)

    with torch.no_grad():
        plain = model(**inputs)
        replaced = model(**inputs, block_replacements={0: pass_through, 1: pass_through})
    torch.testing.assert_close(replaced, plain, rtol=0, atol=0)
    b, _, t, h, w = inputs["x"].shape
    tokens = (t + 2) * (h // 2) * (w // 2)  # video frames + ref_x + ref_c, 2x2 patches
    assert seen == [{"img": (b, tokens, TINY.dim), "txt": (b, 257 + TINY.text_len, TINY.dim),
                     "vec": (b, 6, TINY.dim), "context_img_len": 257}] * 2


def test_skipping_a_block_equals_the_model_without_that_block():
    model = make_model()
    inputs = make_inputs()
    without_last = copy.deepcopy(model)
    without_last.blocks = torch.nn.ModuleList(list(model.blocks)[:-1])
    with torch.no_grad():
        skipped = model(**inputs, block_replacements={TINY.num_layers - 1: lambda args, extra: args})
        expected = without_last(**inputs)
        plain = model(**inputs)
    torch.testing.assert_close(skipped, expected, rtol=0, atol=0)
    assert not torch.allclose(skipped, plain)
