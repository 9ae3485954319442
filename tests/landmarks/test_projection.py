import pytest
import torch
from torch import nn

from landmarks.hourglass import LandmarkHourglass, paper_config
from landmarks.projection import (
    ProjectedConv2d,
    adapter_state_dict,
    build_adapted,
    expected_adapter_shapes,
    fold,
    load_adapter_state,
)
from tests.factories import randomize_adapter, randomize_batchnorm


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_identity_adapter_reproduces_core_exactly(tiny_core):
    adapted = build_adapted(tiny_core, tiny_core.config.num_landmarks, init_head_from_core=True).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(adapted(x), tiny_core(x))


def test_identity_adapter_reproduces_paper_core():
    torch.manual_seed(0)
    core = LandmarkHourglass(paper_config(14))
    randomize_batchnorm(core, torch.Generator().manual_seed(3))
    core.eval()
    adapted = build_adapted(core, 14, init_head_from_core=True).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(adapted(x), core(x))


@pytest.mark.parametrize("targets", ["all", "3x3"])
def test_fold_matches_projected_network(tiny_core, targets):
    adapted = build_adapted(tiny_core, 7, targets=targets)
    randomize_adapter(adapted)
    adapted.eval()
    folded = fold(tiny_core, adapter_state_dict(adapted))
    assert not any(isinstance(m, ProjectedConv2d) for m in folded.modules())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert _rel_err(folded(x), adapted(x)) < 1e-5


def test_fold_matches_projected_paper_network():
    torch.manual_seed(0)
    core = LandmarkHourglass(paper_config(14)).eval()
    adapted = build_adapted(core, 10)
    randomize_adapter(adapted, seed=5)
    adapted.eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert _rel_err(fold(core, adapter_state_dict(adapted))(x), adapted(x)) < 1e-5


def test_only_adapter_parameters_get_gradients(tiny_core):
    adapted = build_adapted(tiny_core, 4).train()
    adapted(torch.rand(2, 3, 32, 32)).square().mean().backward()
    adapter_keys = set(adapter_state_dict(adapted))
    for name, p in adapted.named_parameters():
        if name in adapter_keys:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    frozen = [n for n, _ in adapted.named_parameters() if ".base_layer." in n]
    assert frozen and all(".base_layer." not in k for k in adapter_keys)
    # the core handed in is untouched
    assert all(not isinstance(m, ProjectedConv2d) for m in tiny_core.modules())


def test_official_variant_projects_3x3_only_and_frees_the_rest(tiny_core):
    adapted = build_adapted(tiny_core, 4, targets="3x3")
    projected = [m for m in adapted.modules() if isinstance(m, ProjectedConv2d)]
    assert projected and all(m.base_layer.kernel_size == (3, 3) for m in projected)
    free = [m for m in adapted.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    assert any(m.kernel_size == (7, 7) for m in free)  # the stem trains freely


def test_adapter_state_round_trip_and_shapes(tiny_core):
    adapted = build_adapted(tiny_core, 6)
    randomize_adapter(adapted)
    state = adapter_state_dict(adapted)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_adapter_shapes(tiny_core.config, 6, "all")
    fresh = build_adapted(tiny_core, 6)
    load_adapter_state(fresh, state)
    for k, v in adapter_state_dict(fresh).items():
        assert torch.equal(v, state[k])
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state(fresh, {k: v for k, v in state.items() if k != "head.bias"})


def test_init_head_from_core(tiny_core):
    with pytest.raises(ValueError, match="K <="):
        build_adapted(tiny_core, 9, init_head_from_core=True)
    adapted = build_adapted(tiny_core, 3, init_head_from_core=True).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        # a 3-channel conv may take another kernel path than the 5-channel one: equal up to rounding
        torch.testing.assert_close(adapted(x), tiny_core(x)[:, :3], rtol=1e-5, atol=1e-6)
