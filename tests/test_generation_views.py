"""Group views during generation: `.generated` fires on decoding steps only, and sees the
generated token's residual (checked against the parent hook's value at that position)."""

import torch

from hf_reference import TINY_VARIANTS, make_inputs

VARIANT = TINY_VARIANTS[0]


def test_generated_view_fires_on_steps_only_with_the_new_positions(hf_thinker, hooked_model):
    hf, model = hf_thinker(VARIANT), hooked_model(VARIANT)
    batch = model.prepare(**make_inputs(hf.config, "audio_video", batch=2, seed=3))
    seen_view, seen_parent = [], []
    name = "blocks.1.hook_resid_post"

    def view_hook(x, hook):
        seen_view.append((hook.ctx["start_pos"], x.clone()))

    def parent_hook(x, hook):
        seen_parent.append((hook.ctx["start_pos"], x.clone()))

    out = model.generate(batch, max_new_tokens=4, fwd_hooks=[(name, parent_hook), (name + ".generated", view_hook)])
    assert out.tokens.shape == (2, 4)
    # prefill (start 0) plus 3 decoding steps for the parent; the view skips the prefill
    assert [s for s, _ in seen_parent] == [0] + [batch.shape[1] + i for i in range(3)]
    assert [s for s, _ in seen_view] == [batch.shape[1] + i for i in range(3)]
    for (_, v), (_, p) in zip(seen_view, seen_parent[1:]):
        assert v.shape == (2, 1, model.cfg.d_model)
        torch.testing.assert_close(v, p, rtol=0, atol=0)
    assert all(not hp.fwd_hooks for hp in model.hook_points())
