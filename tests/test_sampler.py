"""The sampling loop: per-image seeding, CFG, guidance placement, DDPM/DDIM, variance types."""
import copy

import pytest
import torch

from mgd_ray.method import (GaussianDiffusion, GuidanceParams, ManifoldGuidance, NoGuidance, dit_model_fn,
                            image_seed, sample)

SHAPE = (4, 4, 4)
D = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: OpenMP start-up dominates on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_dit():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    m = DiTTransformer2DModel(sample_size=4, patch_size=2, in_channels=4, out_channels=8, num_layers=1,
                              num_attention_heads=2, attention_head_dim=8, num_embeds_ada_norm=3)
    return dit_model_fn(m.double().eval())


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion().respaced(8)


def _linear_model(x, t, y):
    """A deterministic eps/variance model depending on x, t and y (eps 4 + variance 4 channels)."""
    s = (t.double() / 1000).view(-1, 1, 1, 1)
    lab = (y.double() + 1).view(-1, 1, 1, 1)
    eps = 0.5 * torch.tanh(x) * lab + 0.1 * s
    return torch.cat([eps, torch.tanh(x * s)], dim=1).to(x.dtype)


def _guide(B, seeds_offset=0, basis="expected", lam_mode=0.1):
    g = torch.Generator().manual_seed(42)
    c = torch.randn(3, D, generator=g)[seeds_offset:seeds_offset + B]
    nbrs = (c.unsqueeze(1) + torch.randn(3, 10, D, generator=g)[seeds_offset:seeds_offset + B]).double()
    return ManifoldGuidance(c.double(), nbrs, GuidanceParams(basis=basis, t_stop=3, lam_mode=lam_mode, K=6))


@pytest.mark.parametrize("basis", ["expected", "noised", "reference"])
def test_batch_equals_single_runs(tiny_dit, diffusion, basis):
    labels, seeds = torch.tensor([0, 2, 1]), [image_seed(0, 0, j) for j in range(3)]
    kw = dict(null_label=3, cfg_scale=4.0, dtype=torch.float64)
    batch = sample(tiny_dit, diffusion, labels, seeds, SHAPE, guidance=_guide(3, basis=basis), **kw)
    for b in range(3):
        single = sample(tiny_dit, diffusion, labels[b:b + 1], seeds[b:b + 1], SHAPE,
                        guidance=_guide(1, b, basis=basis), **kw)
        assert torch.allclose(batch[b:b + 1], single, rtol=1e-9, atol=1e-9)
    assert torch.isfinite(batch).all()


def test_same_seed_same_output_different_seed_differs(tiny_dit, diffusion):
    labels = torch.tensor([1, 1])
    kw = dict(null_label=3, dtype=torch.float64)
    a = sample(tiny_dit, diffusion, labels, [5, 6], SHAPE, **kw)
    b = sample(tiny_dit, diffusion, labels, [5, 6], SHAPE, **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])
    c = sample(tiny_dit, diffusion, labels, [5, 7], SHAPE, **kw)
    assert torch.equal(a[0], c[0]) and not torch.allclose(a[1], c[1])


def test_zero_guidance_equals_plain_cfg(diffusion):
    labels, seeds = torch.tensor([0, 1, 2]), [1, 2, 3]
    kw = dict(null_label=3, dtype=torch.float64)
    plain = sample(_linear_model, diffusion, labels, seeds, SHAPE, **kw)
    assert torch.equal(plain, sample(_linear_model, diffusion, labels, seeds, SHAPE, guidance=NoGuidance(), **kw))
    for basis in ("expected", "noised"):   # guidance draws from its own generators: sampling noise unchanged
        zero = sample(_linear_model, diffusion, labels, seeds, SHAPE, guidance=_guide(3, basis=basis, lam_mode=0), **kw)
        assert torch.equal(plain, zero)
        on = sample(_linear_model, diffusion, labels, seeds, SHAPE, guidance=_guide(3, basis=basis), **kw)
        assert not torch.allclose(plain, on)


class _Recorder:
    """Adds a constant vector at the last step only and records the StepInfo it saw."""

    def __init__(self, e):
        self.e, self.steps = e, []

    def is_on(self, step):
        self.steps.append(step)
        return step.t_index == 0

    def __call__(self, x_t, x0_hat, step):
        return self.e.expand_as(x_t)


def test_guidance_is_added_to_the_mean(diffusion):
    labels, seeds = torch.tensor([0, 1]), [1, 2]
    kw = dict(null_label=3, dtype=torch.float64)
    e = torch.linspace(-1, 1, D, dtype=torch.float64)
    rec = _Recorder(e)
    plain = sample(_linear_model, diffusion, labels, seeds, SHAPE, **kw)
    guided = sample(_linear_model, diffusion, labels, seeds, SHAPE, guidance=rec, **kw)
    assert torch.allclose((guided - plain).reshape(2, -1), e.expand(2, -1), atol=1e-12)
    s = rec.steps
    assert [st.t_index for st in s] == list(range(7, -1, -1)) and [st.i for st in s] == list(range(8))
    assert [st.t for st in s] == diffusion.timesteps.tolist()
    assert s[0].alpha_bar_t == pytest.approx(diffusion.alphas_cumprod[7])
    assert s[0].sigma_t.shape == (2, D) and len(s[0].generators) == 2


def test_cfg_variants_and_forward_count(diffusion):
    calls = []

    def model(x, t, y):
        calls.append((len(x), y.tolist()))
        return _linear_model(x, t, y)
    labels = torch.tensor([0, 1])
    x1 = sample(model, diffusion, labels, [1, 2], SHAPE, null_label=3, cfg_scale=1.0, dtype=torch.float64)
    assert len(calls) == 8 and all(n == 2 and y == [0, 1] for n, y in calls)       # no null batch
    calls.clear()
    x4 = sample(model, diffusion, labels, [1, 2], SHAPE, null_label=3, cfg_scale=4.0, dtype=torch.float64)
    assert len(calls) == 8 and all(n == 4 and y == [0, 1, 3, 3] for n, y in calls)
    xa = sample(model, diffusion, labels, [1, 2], SHAPE, null_label=3, cfg_scale=4.0, cfg_channels="all",
                dtype=torch.float64)
    assert not torch.allclose(x1, x4) and not torch.allclose(x4, xa)
    # first3 leaves channel 3's eps to the conditional half: with cfg_scale = 1 both agree exactly
    from mgd_ray.method import cfg_combine
    out = torch.randn(4, 8, 2, 2)
    comb = cfg_combine(out, 2, 4.0, n_eps=3)
    assert torch.equal(comb[:, 3:], out[:2, 3:])
    assert torch.allclose(comb[:, :3], out[2:, :3] + 4.0 * (out[:2, :3] - out[2:, :3]))


def test_ddim_and_variance_types(tiny_dit):
    labels, seeds = torch.tensor([0, 2]), [3, 4]
    kw = dict(null_label=3, dtype=torch.float64)
    d = GaussianDiffusion().respaced("ddim5")
    a = sample(tiny_dit, d, labels, seeds, SHAPE, sampler="ddim", **kw)
    b = sample(tiny_dit, d, labels, [30, 40], SHAPE, sampler="ddim", **kw)
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    assert torch.equal(a, sample(tiny_dit, d, labels, seeds, SHAPE, sampler="ddim", **kw))
    noisy = sample(tiny_dit, d, labels, seeds, SHAPE, sampler="ddim", eta=1.0, **kw)
    assert not torch.allclose(a, noisy)
    d8 = GaussianDiffusion().respaced(8)
    outs = {v: sample(tiny_dit, d8, labels, seeds, SHAPE, variance_type=v, **kw)
            for v in ("learned_range", "fixed_small", "fixed_large")}
    assert all(torch.isfinite(o).all() for o in outs.values())
    assert not torch.allclose(outs["learned_range"], outs["fixed_small"])
    x, traj = sample(tiny_dit, d8, labels, seeds, SHAPE, return_trajectory=True, **kw)
    assert traj.shape == (9, 2, *SHAPE) and torch.equal(traj[-1], x)


def test_float32_matches_float64_start(tiny_dit, diffusion):
    """The initial noise is drawn in float32 for every dtype: runs in both precisions agree."""
    labels, seeds = torch.tensor([0]), [9]
    x64 = sample(tiny_dit, diffusion, labels, seeds, SHAPE, null_label=3, dtype=torch.float64)
    assert x64.dtype == torch.float64
    with pytest.raises(ValueError, match="cfg_channels"):
        sample(tiny_dit, diffusion, labels, seeds, SHAPE, null_label=3, cfg_channels="some")


def test_last_step_has_no_noise(diffusion):
    labels, seeds = torch.tensor([0, 1]), [1, 2]
    x, traj = sample(_linear_model, diffusion, labels, seeds, SHAPE, null_label=3, cfg_scale=1.0,
                     dtype=torch.float64, return_trajectory=True)
    x1 = traj[-2]
    out = _linear_model(x1, torch.full((2,), int(diffusion.timesteps[-1])), labels)
    mean, _, _, _ = diffusion.p_mean_variance(x1, 0, out, "learned_range")
    assert torch.allclose(x, mean, atol=1e-12)
    # ... while an earlier step does add noise
    x2 = traj[-3]
    out = _linear_model(x2, torch.full((2,), int(diffusion.timesteps[-2])), labels)
    mean, _, _, _ = diffusion.p_mean_variance(x2, 1, out, "learned_range")
    assert not torch.allclose(x1, mean, atol=1e-3)


class _ConstGuidance:
    """Adds a small constant (1e-3, below bfloat16's resolution near |x| ~ 1) to every step's mean."""

    def is_on(self, step):
        return True

    def __call__(self, x_t, x0_hat, step):
        return torch.full_like(x_t, 1e-3)


def test_bf16_model_keeps_float32_state_and_guidance(diffusion):
    """A bfloat16 DiT (as on GPU) only runs the model call in bfloat16: the state, the schedule and
    the guidance stay float32, so a small guidance term moves the sample as it does with a float32
    model (a bfloat16 state rounds it away)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    m = DiTTransformer2DModel(sample_size=4, patch_size=2, in_channels=4, out_channels=8, num_layers=1,
                              num_attention_heads=2, attention_head_dim=8, num_embeds_ada_norm=3).eval()
    labels, seeds = torch.tensor([0, 1, 2, 0, 1, 2]), [11, 12, 13, 14, 15, 16]
    kw = dict(null_label=3, cfg_scale=1.5)
    shift = {}
    for name, model, dtype in (("fp32", m, torch.float32), ("bf16", copy.deepcopy(m).to(torch.bfloat16),
                                                                torch.bfloat16)):
        fn = dit_model_fn(model)
        base = sample(fn, diffusion, labels, seeds, SHAPE, dtype=dtype, **kw)
        guided = sample(fn, diffusion, labels, seeds, SHAPE, dtype=dtype, guidance=_ConstGuidance(), **kw)
        assert base.dtype == torch.float32
        shift[name] = (guided - base).double()
    ref = shift["fp32"]
    assert ref.abs().mean() > 1e-3                     # the guidance does move a float32 run
    # the bfloat16-model run moves every element, on average as far as the float32 run (a bfloat16
    # state leaves ~95 % of the elements exactly unchanged and the mean shift ~10x too small)
    assert (shift["bf16"] == 0).double().mean() < 0.05
    assert torch.allclose(shift["bf16"].mean(), ref.mean(), rtol=0.25)


@pytest.mark.parametrize("basis", ["members", "noised", "reference"])
def test_step_loop_reads_nothing_back(diffusion, basis):
    """The sampling loop, guidance included, makes no tensor -> Python read (on a GPU each would be
    a host synchronisation per step); only the diffusion's host-side schedule tables are read.
    The guarded run gives the same latents as an unguarded one."""
    from tests.test_guidance import no_host_reads

    labels, seeds = torch.tensor([0, 2, 1]), [7, 8, 9]
    kw = dict(null_label=3, cfg_scale=4.0, dtype=torch.float64)
    ref = sample(_linear_model, diffusion, labels, seeds, SHAPE, guidance=_guide(3, basis=basis), **kw)
    tables = [*diffusion._t.values(), diffusion.timesteps]
    guide = _guide(3, basis=basis)
    with no_host_reads(tables):
        out = sample(_linear_model, diffusion, labels, seeds, SHAPE, guidance=guide, **kw)
        with pytest.raises(AssertionError, match="host read"):
            guide.last_stats                                   # a logger's read is the one that syncs
    assert torch.equal(out, ref)
    assert guide.last_stats["g_mode_norm"] > 0
