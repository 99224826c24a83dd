"""Evaluation core: students, augmentation, hard-label protocol, metrics, real-data classifier.

All pure torch/numpy, no Ray; the whole file runs in seconds on 2 CPU cores.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mgd_ray.eval import classifier as clf
from mgd_ray.eval.augment import (cutmix, cutmix_loss, dsa_grey, dsa_grey_theta, make_augment,
                                  rgb_augment, rrc_theta)
from mgd_ray.eval.metrics import (distribution_report, diversity, fid, mean_l2,
                                  mmd2_rbf_unbiased, prdc, prior_fidelity,
                                  prior_fidelity_per_class, representativeness)
from mgd_ray.eval.students import build_student
from mgd_ray.eval.train import (TrainConfig, eval_epochs, lr_at, lr_milestones, pad_to,
                                protocol_epochs, to_float_images, train_and_evaluate)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP spin-waiting with 2 threads costs
    5-10x the CPU time of these tiny models."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------- students
@pytest.mark.parametrize("name,size,channels", [
    ("convnet3", 28, 1), ("convnet3", 32, 3), ("convnetd4", 32, 3),
    ("convnet6", 28, 1), ("convnet6", 32, 3), ("convnet6", 64, 3),
    ("resnetap10", 28, 1), ("resnetap10", 32, 3), ("resnetap10", 64, 3),
    ("resnet18", 28, 1), ("resnet18", 32, 3), ("resnet18", 64, 3),
])
def test_student_shapes(name, size, channels):
    m = build_student(name, channels, 7, size, width=8)  # narrow: shapes do not depend on width
    with torch.no_grad():
        out = m(torch.randn(2, channels, size, size))
        emb = m.embed(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert emb.shape == (2, m.feat_dim)


def test_protocol_widths():
    assert build_student("convnet3", 1, 10, 28).feat_dim == 128 * 3 * 3  # 28 -> 14 -> 7 -> 3
    assert build_student("resnetap10", 3, 10, 32).feat_dim == 512
    n18 = sum(p.numel() for p in build_student("resnet18", 3, 10, 32).parameters())
    assert 11.1e6 < n18 < 11.3e6  # the usual CIFAR ResNet-18 size


def test_student_architecture_details():
    m = build_student("convnet3", 1, 10, 28, width=8)
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 3
    assert build_student("convnet6", 3, 10, 224, width=8).feat_dim == 8 * 3 * 3  # 224/2^6
    ap = build_student("resnetap10", 3, 10, 128, width=8)
    with torch.no_grad():
        assert ap(torch.randn(1, 3, 128, 128)).shape == (1, 10)  # ImageNet stem
    convs = [x for x in ap.modules() if isinstance(x, nn.Conv2d)]
    assert all(c.stride == (1, 1) for c in convs[1:])  # downsampling only by average pooling
    assert any(isinstance(x, nn.AvgPool2d) for x in ap.modules())
    r18 = build_student("resnet18", 3, 10, 32, width=8)
    assert sum(isinstance(x, nn.Conv2d) and x.kernel_size == (3, 3) for x in r18.modules()) == 17
    assert any(isinstance(x, nn.Conv2d) and x.stride == (2, 2) for x in r18.modules())


@pytest.mark.parametrize("name", ["convnet3", "convnet6", "resnetap10", "resnet18"])
def test_students_use_instance_norm_only(name):
    m = build_student(name, 3, 10, 32, width=8)
    norms = [x for x in m.modules() if isinstance(x, nn.GroupNorm)]
    assert norms and all(n.num_groups == n.num_channels and n.affine for n in norms)
    assert not any(isinstance(x, (nn.BatchNorm2d, nn.LayerNorm)) for x in m.modules())
    n_conv = sum(isinstance(x, nn.Conv2d) for x in m.modules())
    assert len(norms) == n_conv  # every conv (incl. shortcuts) is followed by instance norm


def test_unknown_student_lists_choices():
    with pytest.raises(ValueError, match="resnetap10"):
        build_student("vgg11", 3, 10, 32)


# ---------------------------------------------------------------- schedule
def test_protocol_epochs_rule():
    assert protocol_epochs(1, 10, 32) == 3000
    assert protocol_epochs(10, 10, 32) == 2000
    assert protocol_epochs(11, 10, 32) == 1500
    assert protocol_epochs(50, 10, 224) == 1500
    assert protocol_epochs(51, 10, 224) == 1000
    assert protocol_epochs(200, 10, 224) == 1000
    assert protocol_epochs(1, 100, 32) == 2000
    assert protocol_epochs(10, 100, 32) == 1333
    assert protocol_epochs(50, 1000, 224) == 1000
    assert protocol_epochs(1, 10, 28) == protocol_epochs(50, 10, 28) == 1000
    with pytest.raises(ValueError):
        protocol_epochs(0, 10, 32)


def test_lr_schedule_milestones():
    assert lr_milestones(300) == [200, 250]
    assert lr_at(0, 300, 0.01) == 0.01 and lr_at(199, 300, 0.01) == 0.01
    assert lr_at(200, 300, 0.01) == pytest.approx(0.002)
    assert lr_at(249, 300, 0.01) == pytest.approx(0.002)
    assert lr_at(250, 300, 0.01) == pytest.approx(0.0004)
    assert lr_at(299, 300, 0.01) == pytest.approx(0.0004)


def test_eval_points():
    pts = eval_epochs(1000, 100)
    assert len(pts) == 100 and pts[0] == 10 and pts[-1] == 1000
    assert eval_epochs(3, 100) == [1, 2, 3]
    pts = eval_epochs(1333, 100)
    assert pts[-1] == 1333 and pts[-2] == 1326 and len(pts) == 103  # every 13th + the last


# ---------------------------------------------------------------- augmentation
@pytest.mark.parametrize("mode,channels,size", [("dsa-grey", 1, 28), ("rgb", 3, 32)])
def test_augment_shape_range_determinism(mode, channels, size):
    x = torch.rand(16, channels, size, size) * 2 - 1
    aug = make_augment(mode, flip=True)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, x)


def test_augment_fill_and_flip_flag():
    black = -torch.ones(8, 1, 28, 28)
    assert torch.allclose(dsa_grey(black, torch.Generator().manual_seed(0)), black)
    g = torch.Generator().manual_seed(0)
    det = lambda th: th[:, 0, 0] * th[:, 1, 1] - th[:, 0, 1] * th[:, 1, 0]  # noqa: E731
    assert (det(dsa_grey_theta(256, 28, g, flip=False)) > 0).all()
    assert (det(dsa_grey_theta(256, 28, g, flip=True)) < 0).any()
    assert (det(rrc_theta(256, g, flip=False)) > 0).all()
    assert (det(rrc_theta(256, g, flip=True)) < 0).any()
    th = rrc_theta(256, g, flip=True)  # the crop window never leaves the image
    assert (th[:, 0, 2].abs() + th[:, 0, 0].abs() <= 1 + 1e-6).all()
    assert (th[:, 1, 2].abs() + th[:, 1, 1].abs() <= 1 + 1e-6).all()
    area = (th[:, 0, 0] * th[:, 1, 1]).abs()
    assert area.min() >= 0.5 - 1e-6 and area.max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="dsa-grey"):
        rgb_augment(black, g)
    with pytest.raises(ValueError, match="none"):
        make_augment("autoaugment", True)


def test_cutmix_mixing_math():
    n = 32
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 16, 16).contiguous()
    y = torch.arange(n)
    xm, ya, yb, lam = cutmix(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(ya, y) and 0 <= lam <= 1
    moved = yb != ya
    assert moved.any()
    for i in torch.nonzero(moved).flatten():
        own = (xm[i] == float(ya[i])).float().mean()
        other = (xm[i] == float(yb[i])).float().mean()
        assert own == pytest.approx(lam) and other == pytest.approx(1 - lam)
    logits = torch.randn(n, n)
    soft = lam * F.one_hot(ya, n).float() + (1 - lam) * F.one_hot(yb, n).float()
    assert cutmix_loss(logits, ya, yb, lam) == pytest.approx(float(F.cross_entropy(logits, soft)), rel=1e-5)
    lams = [cutmix(x, y, torch.Generator().manual_seed(s))[3] for s in range(300)]
    # lam0 ~ U(0,1); boxes clipped at the border make the corrected lam larger on average
    assert min(lams) < 0.35 and max(lams) > 0.95 and 0.5 < np.mean(lams) < 0.85


# ---------------------------------------------------------------- data helpers
def test_to_float_images_and_pad():
    u = np.array([[[0, 255], [127, 128]]], dtype=np.uint8)  # (1,2,2) grey
    t = to_float_images(u)
    assert t.shape == (1, 1, 2, 2) and t.min() == -1 and t.max() == 1
    nhwc = np.zeros((2, 5, 5, 3), dtype=np.uint8)
    assert to_float_images(nhwc).shape == (2, 3, 5, 5)
    assert to_float_images(torch.zeros(2, 3, 5, 5, dtype=torch.uint8)).shape == (2, 3, 5, 5)
    with pytest.raises(TypeError):
        to_float_images(np.zeros((1, 4, 4), dtype=np.float32))
    p = pad_to(torch.zeros(2, 1, 28, 28), 32)
    assert p.shape == (2, 1, 32, 32)
    assert p[:, :, :2].eq(-1).all() and p[:, :, 2:30, 2:30].eq(0).all()


# ---------------------------------------------------------------- training protocol
def _toy(n_per_class: int, seed: int, size: int = 16, classes: int = 10):
    """10 classes of distinct smooth fixed patterns (4x4 noise upsampled) plus pixel noise."""
    coarse = torch.randn(classes, 1, 4, 4, generator=torch.Generator().manual_seed(123))
    protos = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = protos[y] + 0.5 * torch.randn(len(y), 1, size, size, generator=g)
    return x.clamp(-1, 1), y


_TOY_CFG = dict(student="convnet3", width=16, epochs=8, n_evals=8, augment="none", cutmix=False,
                batch_size=16, lr=0.05)


def test_train_reaches_high_accuracy_and_reports_schedule():
    xtr, ytr = _toy(8, seed=1)
    xte, yte = _toy(10, seed=2)
    seen, epochs = [], []
    cfg = TrainConfig(**{**_TOY_CFG, "epochs": 12, "n_evals": 12, "augment": "dsa-grey",
                         "cutmix": True})  # the protocol's augmentation and CutMix
    res = train_and_evaluate(xtr, ytr, xte, yte, 10, cfg, report=seen.append,
                             on_epoch=lambda done, total: epochs.append((done, total)))
    assert epochs == [(e, 12) for e in range(1, 13)]  # progress after every epoch
    assert res["final_acc"] >= 0.9 and res["best_acc"] >= res["final_acc"]
    assert res["epochs"] == 12 and [e for e, _ in res["history"]] == list(range(1, 13))
    assert res["protocol"] == "hard-label" and res["protocol_version"] == "1"
    assert res["ipc"] == 8 and res["n_train"] == 80 and res["augment"] == "dsa-grey"
    lrs = [m["lr"] for m in seen]  # milestones of 12 epochs: 8 and 10
    assert lrs == pytest.approx([0.05] * 8 + [0.01] * 2 + [0.002] * 2)
    assert [m["acc"] for m in seen] == [a for _, a in res["history"]]


def test_uint8_test_pixels_give_the_same_accuracy():
    """The pipeline ships evaluation pixels as uint8 (NHWC, from the object store) and makes them
    float one batch at a time: the same accuracies as the whole float32 test set up front."""
    xtr, ytr = _toy(8, seed=1)
    xte, yte = _toy(10, seed=2)
    u8 = ((xte + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    cfg = TrainConfig(**{**_TOY_CFG, "eval_batch_size": 7})
    as_float = train_and_evaluate(xtr, ytr, to_float_images(u8), yte, 10, cfg)
    as_uint8 = train_and_evaluate(xtr, ytr, u8, yte, 10, cfg)
    assert as_float["final_acc"] >= 0.8
    assert as_uint8["history"] == as_float["history"]


@pytest.mark.parametrize("aug,channels", [("dsa-grey", 1), ("rgb", 3)])
def test_uint8_train_pixels_are_made_float_per_batch_as_before(monkeypatch, aug, channels):
    """Train and test sets given as uint8 (NHWC, the pipeline's way) are held as uint8 and made float
    one batch at a time on the device: the augmentation and the model see exactly the floats that
    ``to_float_images`` of the whole set gives (the way before), so the run is the same."""
    from mgd_ray.eval import train as train_mod
    g = torch.Generator().manual_seed(5)
    u8 = torch.randint(0, 256, (40, 16, 16, channels), generator=g, dtype=torch.uint8)
    ytr = torch.arange(10).repeat_interleave(4)
    te = torch.randint(0, 256, (30, 16, 16, channels), generator=g, dtype=torch.uint8)
    yte = torch.arange(10).repeat_interleave(3)
    real_make, real_tf = train_mod.make_augment, train_mod.to_float_images

    def run(x_train, x_test):
        seen, converted = [], []

        def make(name, flip):
            fn = real_make(name, flip)
            return lambda x, gen: (seen.append(x.clone()), fn(x, gen))[1]

        def tf(x, layout="auto"):
            converted.append((x.dtype, tuple(x.shape)))
            return real_tf(x, layout)
        monkeypatch.setattr(train_mod, "make_augment", make)
        monkeypatch.setattr(train_mod, "to_float_images", tf)
        cfg = TrainConfig(**{**_TOY_CFG, "epochs": 3, "n_evals": 3, "augment": aug, "cutmix": True,
                             "eval_batch_size": 7})
        return train_and_evaluate(x_train, ytr, x_test, yte, 10, cfg), seen, converted

    before, seen_f, _ = run(to_float_images(u8), to_float_images(te))   # whole sets float32 up front
    after, seen_u, conv = run(u8, te)                                     # uint8 held, float per batch
    assert len(seen_u) == len(seen_f) == 3 * 3
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(seen_u, seen_f))
    assert after["history"] == before["history"] and after["augment"] == aug
    # only batches were converted (train batches of 16, test batches of 7), never a whole set
    assert conv and all(d == torch.uint8 and s[0] <= 16 for d, s in conv)


def test_shuffled_labels_stay_near_chance():
    xtr, ytr = _toy(8, seed=1)
    xte, yte = _toy(10, seed=2)
    ytr = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(9))]
    res = train_and_evaluate(xtr, ytr, xte, yte, 10, TrainConfig(**_TOY_CFG))
    assert res["final_acc"] <= 0.35


def test_train_deterministic_with_augment_and_cutmix():
    xtr, ytr = _toy(3, seed=1)
    xte, yte = _toy(2, seed=2)
    cfg = TrainConfig(**{**_TOY_CFG, "epochs": 2, "augment": "dsa-grey", "cutmix": True})
    wrapped = []
    a = train_and_evaluate(xtr, ytr, xte, yte, 10, cfg,
                           model_wrapper=lambda m: wrapped.append(m) or m)
    b = train_and_evaluate(xtr, ytr, xte, yte, 10, cfg)
    assert len(wrapped) == 1 and isinstance(wrapped[0], nn.Module)
    assert a["history"] == b["history"] and a["augment"] == "dsa-grey"
    with pytest.raises(ValueError, match="labels"):
        train_and_evaluate(xtr, ytr + 10, xte, yte, 10, cfg)


# ---------------------------------------------------------------- metrics
def test_fid_identical_and_shifted_gaussians():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 4))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    mu = np.array([1.0, -2.0, 0.5, 0.0])
    y = rng.standard_normal((4000, 4)) + mu
    assert fid(x, y) == pytest.approx(float(mu @ mu), abs=0.15)  # same cov -> ||mu1-mu2||^2
    # closed form with different covariances: 1-D N(0,1) vs N(0,4) -> (1-2)^2 = 1
    a, b = rng.standard_normal((20000, 1)), 2 * rng.standard_normal((20000, 1))
    assert fid(a, b) == pytest.approx(1.0, abs=0.05)
    # singular synthetic covariance (N_syn < F) stays finite and agrees with scipy's sqrtm
    small = rng.standard_normal((5, 16))
    d = fid(rng.standard_normal((500, 16)), small)
    assert np.isfinite(d) and d > 0
    from scipy.linalg import sqrtm
    r, s = rng.standard_normal((300, 3)), rng.standard_normal((300, 3)) * 1.5 + 0.3
    c1, c2 = np.cov(r, rowvar=False), np.cov(s, rowvar=False)
    ref = ((r.mean(0) - s.mean(0)) ** 2).sum() + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert fid(r, s) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError):
        fid(x[:1], x)


def test_mmd2_unbiased():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((300, 5)), rng.standard_normal((300, 5))
    same = mmd2_rbf_unbiased(x, y)
    assert abs(same) < 0.01
    assert mmd2_rbf_unbiased(x, y + 1.0) > 0.1
    # brute-force reference on a tiny example with a fixed bandwidth
    a, b = rng.standard_normal((6, 2)), rng.standard_normal((4, 2)) + 0.5
    k = lambda u, v: np.exp(-((u[:, None] - v[None]) ** 2).sum(-1) / 2.0)  # noqa: E731  sigma=1
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    ref = ((kaa.sum() - np.trace(kaa)) / 30 + (kbb.sum() - np.trace(kbb)) / 12 - 2 * kab.mean())
    assert mmd2_rbf_unbiased(a, b, bandwidth=1.0) == pytest.approx(ref, rel=1e-9)


def test_prdc_sanity():
    rng = np.random.default_rng(2)
    r = rng.standard_normal((200, 8))
    same = prdc(r, r, k=5)
    assert same["precision"] == 1 and same["recall"] == 1 and same["coverage"] == 1
    assert 0.8 < same["density"] < 1.6
    far = prdc(r, r[:50] + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # fakes on a corner of the real manifold: precise but low recall/coverage
    corner = r[np.argsort(r[:, 0])[:20]]
    part = prdc(r, corner, k=5)
    assert part["precision"] == 1 and part["coverage"] < 0.3
    with pytest.raises(ValueError, match="lower k"):
        prdc(r, r[:3], k=5)


def test_diversity_representativeness_fidelity_by_hand():
    syn = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert diversity(syn) == pytest.approx(1 - math.cos(math.pi / 4))
    assert diversity(np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(0.0)
    real = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert representativeness(real, np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)
    assert representativeness(real, np.array([[3.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)
    assert mean_l2(np.zeros((3, 2)), np.full((2, 2), [3.0, 4.0])) == pytest.approx(5.0)
    assert prior_fidelity([0, 1, 2, 2], [0, 1, 1, 2]) == pytest.approx(0.75)
    per = prior_fidelity_per_class([0, 1, 2, 2], [0, 1, 1, 2], 4)
    assert per[:3] == [1.0, 0.5, 1.0] and math.isnan(per[3])


def test_distribution_report():
    rng = np.random.default_rng(3)
    real, syn = rng.standard_normal((500, 6)), rng.standard_normal((4, 6))
    rep = distribution_report(real, syn, pred_syn=[0, 1, 1, 0], labels_syn=[0, 1, 0, 0],
                              num_classes=2, max_real=300)
    assert rep["n_real"] == 300 and rep["n_syn"] == 4 and rep["prdc_k"] == 3
    for key in ("fid", "mean_l2", "mmd2_rbf_unbiased", "diversity", "representativeness",
                "precision", "recall", "density", "coverage"):
        assert np.isfinite(rep[key]), key
    assert rep["prior_fidelity"] == 0.75 and rep["prior_fidelity_per_class"] == [2 / 3, 1.0]


# ---------------------------------------------------------------- real-data classifier
def test_classifier_train_save_load(tmp_path):
    xtr, ytr = _toy(6, seed=1)
    xte, yte = _toy(3, seed=2)
    model, acc = clf.train_classifier(xtr, ytr, xte, yte, epochs=12, seed=0,
                                      widths=[8, 16, 16], feat_dim=16, batch_size=16, lr=0.1)
    assert acc >= 0.8 and model.record["test_acc"] == acc
    f = clf.features(model, xte)
    assert f.shape == (len(xte), 16) and (f >= 0).all()
    assert clf.predict(model, xte).shape == (len(xte),)
    clf.save(model, tmp_path / "c")
    back = clf.load(tmp_path / "c")
    assert torch.allclose(clf.logits(back, xte), clf.logits(model, xte))
    assert back.record["test_acc"] == acc and back.config["widths"] == [8, 16, 16]
    with pytest.raises(FileNotFoundError, match="classifier.json"):
        clf.load(tmp_path / "missing")


# ---------------------------------------------------------------- soft-label protocol
class _ProtoTeacher(nn.Module):
    """A fixed 'real-data' teacher: logits = −‖x − prototype_k‖² of the toy classes (one weight to watch)."""

    def __init__(self, size: int = 16):
        super().__init__()
        coarse = torch.randn(10, 1, 4, 4, generator=torch.Generator().manual_seed(123))
        self.protos = nn.Parameter(F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False))

    def forward(self, x):
        return -((x.unsqueeze(1) - self.protos.unsqueeze(0)) ** 2).flatten(2).sum(-1)


_SOFT_CFG = dict(_TOY_CFG, protocol="soft-label", epochs=20, n_evals=2)   # no augmentation: the toy teacher
                                                                          # is only right on clean toy images


def test_soft_label_learns_the_teacher_not_the_labels():
    """Labels shuffled: hard-label training stays near chance (test above); soft-label training follows
    the frozen teacher on every augmented, CutMixed batch and scores high. Fails if hard labels were used."""
    xtr, ytr = _toy(8, seed=1)
    xte, yte = _toy(10, seed=2)
    ytr = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(9))]
    teacher = _ProtoTeacher()
    teacher.train()
    before = teacher.protos.detach().clone()
    res = train_and_evaluate(xtr, ytr, xte, yte, 10, TrainConfig(**_SOFT_CFG), teacher=teacher)
    assert res["final_acc"] >= 0.8, res["history"]
    assert res["protocol"] == "soft-label" and res["optimizer"]["name"] == "AdamW"
    assert res["optimizer"]["lr"] == 1e-3 and res["optimizer"]["weight_decay"] == 0.01
    # frozen: eval mode, no gradients, weights unchanged
    assert not teacher.training and not teacher.protos.requires_grad and torch.equal(teacher.protos, before)


def test_teacher_labels_every_augmented_cutmixed_batch():
    """The teacher sees exactly the student's training inputs (after augmentation and CutMix)."""
    xtr, ytr = _toy(4, seed=1)
    seen = {"student": [], "teacher": []}
    teacher = _ProtoTeacher()
    teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].clone()))

    def wrap(model):
        model.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].clone()) if m.training else None)
        return model
    cfg = TrainConfig(**dict(_SOFT_CFG, epochs=2, augment="dsa-grey", cutmix=True))
    train_and_evaluate(xtr, ytr, xtr, ytr, 10, cfg, teacher=teacher, model_wrapper=wrap)
    assert len(seen["student"]) == len(seen["teacher"]) == 2 * 3                     # 40 images, batch 16
    assert all(torch.equal(a, b) for a, b in zip(seen["student"], seen["teacher"]))
    assert not any(torch.equal(a, xtr[:len(a)]) for a in seen["teacher"])            # augmented, not raw


def test_soft_label_loss_schedule_and_epochs():
    from mgd_ray.eval import soft_label
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    T = 20.0
    p_t = F.softmax(t / T, 1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    assert soft_label.soft_label_loss(s, t, T) == pytest.approx(float(manual), rel=1e-5)
    assert float(soft_label.soft_label_loss(t, t, T)) == pytest.approx(0.0, abs=1e-7)
    assert soft_label.cosine_lr(0, 300, 1e-3) == 1e-3 and soft_label.cosine_lr(150, 300, 1e-3) == pytest.approx(5e-4)
    assert soft_label.cosine_lr(299, 300, 1e-3) < 1e-7
    assert protocol_epochs(10, 10, 28, "soft-label") == 300 and protocol_epochs(10, 10, 28) == 1000
    xtr, ytr = _toy(2, seed=1)
    with pytest.raises(soft_label.TeacherError, match="teacher"):
        train_and_evaluate(xtr, ytr, xtr, ytr, 10, TrainConfig(**_SOFT_CFG))


def test_teacher_loading_and_clear_errors(tmp_path):
    from mgd_ray.config import JobError, job_from_dict
    from mgd_ray.eval import soft_label
    from mgd_ray.pipeline.evaluate import load_job_teacher, teacher_dir
    with pytest.raises(soft_label.TeacherError, match="evaluate.teacher"):
        soft_label.load_teacher(tmp_path)
    job = job_from_dict({}, ["evaluate.protocol=soft-label", f"evaluate.teacher={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_job_teacher(job)
    assert load_job_teacher(job_from_dict({})) is None                      # hard-label: no teacher
    # the shipped prior's classifier is the default teacher, frozen
    job = job_from_dict({}, ["evaluate.protocol=soft-label"])
    assert teacher_dir(job).endswith("classifier")
    t = load_job_teacher(job)
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    with pytest.raises(soft_label.TeacherError, match="im_size teacher 8 vs data 16"):
        soft_label.check_teacher(t, 1, 10, 16)
    # a student-architecture teacher (the ImageNet jobs' ResNet-18 format)
    from safetensors.torch import save_file
    net = build_student("resnet18", 3, 5, 32, width=8)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "teacher.safetensors"))
    (tmp_path / "teacher.json").write_text('{"student": "resnet18", "channels": 3, "num_classes": 5, '
                                           '"im_size": 32, "width": 8}')
    t = soft_label.load_teacher(tmp_path)
    assert t(torch.zeros(2, 3, 32, 32)).shape == (2, 5) and not t.training
    # config: a hub generator has no shipped classifier -> the teacher must be named
    with pytest.raises(JobError, match="needs evaluate.teacher"):
        job_from_dict({}, ["model.generator=facebook/DiT-XL-2-256", "evaluate.protocol=soft-label"])
    with pytest.raises(JobError, match="temperature"):
        job_from_dict({}, ["evaluate.protocol=soft-label", "evaluate.temperature=0"])
