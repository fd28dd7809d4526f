"""The guided filter as a trainable layer (Eqs. 6-10): the filter itself, finite-difference gradients,
the gradients reaching alpha and beta, and the step-2 loss through it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgwsss.losses import guided_segmentation_loss, segmentation_loss
from sgwsss.refine.guided_filter import guided_filter
from sgwsss.refine.guided_layer import guided_filter_coefficients, guided_filter_layer


def _photo(voc_root, size=48):
    """A real photograph's top-left crop, float64 in [0, 1]: (1, 3, size, size)."""
    from PIL import Image

    from sgwsss.data import read_split, resolve_root

    voc = resolve_root(voc_root)
    name = read_split(voc, "train")[0]
    img = np.asarray(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"), dtype=np.float64) / 255
    return torch.from_numpy(img[:size, :size]).permute(2, 0, 1)[None].contiguous()


@pytest.mark.parametrize("channels", [3, 1])
def test_layer_is_the_packages_guided_filter(voc_root, channels):
    guide = _photo(voc_root)[:, :channels]
    src = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for radius, eps in ((3, 1e-2), (17, 1e-6)):
        want = guided_filter(guide, src, radius, eps)
        torch.testing.assert_close(guided_filter_layer(guide, src, radius, eps), want, rtol=0, atol=1e-9)
    # float32 on a photograph at the paper's eps: the per-image centring keeps it accurate
    got32 = guided_filter_layer(guide.float(), src.float(), 17, 1e-6)
    assert (got32.double() - want).abs().max() < 1e-3


def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    guide = torch.rand(1, 3, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    src = torch.randn(1, 2, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, p: guided_filter_layer(i, p, 2, 1e-2), (guide, src))
    grey = guide.detach()[:, :1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda i, p: guided_filter_layer(i, p, 3, 1e-3), (grey, src))
    assert torch.autograd.gradcheck(lambda p: guided_filter_coefficients(guide.detach(), p, 2, 1e-2), (src,))


def test_loss_reaches_alpha_and_beta_as_eqs_9_and_10_say():
    """dL/d alpha_p = I_p dL/dG_p (Eq. 9) and dL/d beta_p = dL/dG_p (Eq. 10), per class and guide channel."""
    g = torch.Generator().manual_seed(2)
    guide = torch.rand(2, 3, 12, 10, generator=g, dtype=torch.float64)
    src = torch.randn(2, 3, 12, 10, generator=g, dtype=torch.float64, requires_grad=True)
    out, alpha, beta = guided_filter_layer(guide, src, 2, 1e-3, return_coefficients=True)
    torch.testing.assert_close(out, (alpha * guide[:, None]).sum(2) + beta)  # Eq. 6
    alpha.retain_grad()
    beta.retain_grad()
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)  # dL/dG
    (out * upstream).sum().backward()
    torch.testing.assert_close(alpha.grad, guide[:, None] * upstream[:, :, None])
    torch.testing.assert_close(beta.grad, upstream)
    assert src.grad.abs().max() > 0  # and on through the closed-form coefficients to the input


def test_fused_filter_backward_is_the_gradient_through_the_coefficients(voc_root):
    """Step 2 runs the fused filter: its gradient must be the one that flows through Eqs. 9-10 here."""
    guide = _photo(voc_root, 40)
    g = torch.Generator().manual_seed(3)
    upstream = torch.randn(1, 5, 40, 40, generator=g, dtype=torch.float64)
    grads = []
    for fn in (guided_filter, guided_filter_layer):
        src = torch.randn(1, 5, 40, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64,
                          requires_grad=True)
        (fn(guide, src, 17, 1e-6) * upstream).sum().backward()
        grads.append(src.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-8)


def test_guided_segmentation_loss_and_the_step2_option(voc_root):
    from sgwsss.model import SGOutput
    from sgwsss.train import get_config
    from sgwsss.train.loop import step2_loss_fn

    image = _photo(voc_root, 32).float()
    g = torch.Generator().manual_seed(5)
    seg = torch.randn(1, 21, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 21, (1, 32, 32), generator=g)
    target[0, :4] = 255
    loss = guided_segmentation_loss(seg, image, target, radius=5, eps=1e-4)
    up = F.interpolate(seg, size=(32, 32), mode="bilinear", align_corners=False)
    want = segmentation_loss(guided_filter_layer(image.double(), up.double(), 5, 1e-4), target)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    plain_loss = float(segmentation_loss(seg.detach(), target))
    assert abs(float(loss.detach()) - plain_loss) > 1e-3  # the filter does change the loss
    loss.backward()
    assert seg.grad.abs().max() > 0
    out = SGOutput(seg.detach(), None, None, None)
    batch = {"image": image, "mask": target}
    cfg = get_config("smoke", budget=1.0, radius=5, eps=1e-4)
    plain = step2_loss_fn(cfg)(out, batch)[0]
    guided = step2_loss_fn(cfg.replace(step2_guided_filter=True))(out, batch)[0]
    assert float(plain) == pytest.approx(float(segmentation_loss(seg.detach(), target)))
    assert float(guided) == pytest.approx(float(loss.detach()))
    with pytest.raises(ValueError, match="image size"):
        guided_segmentation_loss(seg, image[..., :16], target)
