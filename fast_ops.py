"""Two PyTorch ops of the LeNet-type networks, computed by equivalent formulations that are faster here.

ae.py reads like the paper and calls these in one place per network; nothing else in the project needs to
know they exist. Each replaces one plain op and gives the same numbers (a test in test_all.py proves it):

  max_pool2(x)         replaces F.max_pool2d(x, 2). Exactly equal, values and gradients, ties included
                       (tests: test_ae_max_pool2_*). Why faster: on the CPU, F.max_pool2d also computes the
                       argmax indices its backward needs, even under no_grad; the maximum of the four
                       strided corners of each window does not. With autograd on the CPU, `MaxPool2` sends
                       each window's gradient to its first maximum through three 0/1 masks.
  up2_deconv(deconv, x) replaces deconv(up2(x)), nearest-neighbour upsampling followed by a 5x5 stride-1
                       transposed convolution (padding 2 or 3). Equal up to float rounding (test:
                       test_ae_fused_upsample_equals_plain_layers). Why faster: on an upsampled image each
                       output pixel reads only 3x3 distinct input pixels, so the 5x5 kernel collapses, per
                       output phase, to a 3x3 kernel on the small image: 9/25 of the multiply-adds and no
                       upsampled copy in memory.

The switch: `with fast_ops.plain_ops():` (or POOL = UPSAMPLE = False) gives back the plain PyTorch ops
everywhere, e.g. to compare or to debug; `python bench.py` times both sides in one run. results/README.md,
section 6 (Speed, "Kept"), measures what each op gains, on MNIST and CIFAR-10.
"""
import contextlib

import torch
import torch.nn.functional as F

POOL = True        # False: F.max_pool2d(x, 2)
UPSAMPLE = True    # False: deconv(up2(x))


@contextlib.contextmanager
def plain_ops():
    """Inside this block every network uses the plain PyTorch ops (F.max_pool2d, deconv(up2(x)))."""
    global POOL, UPSAMPLE
    saved = POOL, UPSAMPLE
    POOL = UPSAMPLE = False
    try:
        yield
    finally:
        POOL, UPSAMPLE = saved


# ---------------------------------------------------------------------------------------------------
# 2x2 max pooling without argmax indices
# ---------------------------------------------------------------------------------------------------

def window_corners(x):
    """The four corners of every 2x2 window, as strided views: top-left, top-right, bottom-left, bottom-right."""
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


def is_greater(u, v):
    """1.0 where u > v, else 0.0, in float arithmetic (CPU comparisons that output bool are slower)."""
    return torch.sign(torch.relu(u - v))


class MaxPool2(torch.autograd.Function):
    """F.max_pool2d(x, 2) for even H and W, forward and backward, without argmax indices.

    Forward: the maximum of the four corners of each window. Backward: each window's gradient goes to its
    first maximum in row-major order (top-left, top-right, bottom-left, bottom-right), exactly where
    F.max_pool2d's saved indices send it, ties included (finite x; MNIST's background makes many ties).
    The forward keeps three 0/1 masks of a quarter of x's size: the maximum is in the bottom row, the right
    one of the top pair is greater, the right one of the bottom pair is greater.
    """

    @staticmethod
    def forward(ctx, x):
        a, b, c, d = window_corners(x)
        top, bottom = torch.maximum(a, b), torch.maximum(c, d)
        ctx.save_for_backward(is_greater(bottom, top), is_greater(b, a), is_greater(d, c))
        ctx.shape = x.shape
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx, g):
        in_bottom, right_top, right_bottom = ctx.saved_tensors
        g_bottom = g * in_bottom                                 # the window's gradient if its max is below
        g_top = g - g_bottom                                     # else here (g - g = 0 exactly)
        grad = g.new_empty(ctx.shape)                            # every element is written below
        a, b, c, d = window_corners(grad)
        torch.mul(g_top, right_top, out=b)
        torch.sub(g_top, b, out=a)
        torch.mul(g_bottom, right_bottom, out=d)
        torch.sub(g_bottom, d, out=c)
        return grad


def max_pool2(x):
    """= F.max_pool2d(x, 2): the maximum of each 2x2 window, stride 2 (odd H or W: last row/column dropped).

    Without autograd: the maximum of the four strided corners. With autograd on the CPU and even sizes:
    `MaxPool2`. Elsewhere (other devices, whose kernels are not the slow one; odd sizes): F.max_pool2d.
    """
    if not POOL:
        return F.max_pool2d(x, 2)
    if torch.is_grad_enabled() and x.requires_grad:
        even = x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0
        return MaxPool2.apply(x) if even and x.device.type == "cpu" else F.max_pool2d(x, 2)
    H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    a, b, c, d = window_corners(x[..., :H, :W])
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))


# ---------------------------------------------------------------------------------------------------
# Nearest upsampling + transposed convolution as one small convolution and a pixel shuffle
# ---------------------------------------------------------------------------------------------------

def up2(x):
    """Nearest-neighbour upsampling by 2 in H and W: (B, C, H, W) -> (B, C, 2H, 2W)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


# Row d of PHASE[a] sums the 5 kernel taps that, for output rows 2i + a, read input row i + d - 1 of the
# (not upsampled) image (d = 0, 1, 2).
PHASE = torch.tensor([[[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]],     # a = 0 (even rows)
                      [[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]],    # a = 1 (odd rows)
                     dtype=torch.float32)


def up2_deconv(deconv, x):
    """= deconv(up2(x)) for a 5x5, stride-1, bias-free ConvTranspose2d with padding 2 or 3.

    A stride-1 transposed convolution is a convolution with the kernel flipped and its in/out channels
    swapped (padding k-1-p = 2 for p = 2). On a nearest-upsampled image, output pixel (2i+a, 2j+b) reads
    only 3x3 distinct pixels of x around (i, j), so the 5x5 kernel collapses, for each of the four phases
    (a, b), to a 3x3 kernel: the sum of the taps that land on the same pixel of x. One conv2d with
    4 * C_out channels on x computes all phases; pixel_shuffle interleaves them into (2H, 2W). Padding 3
    (MNIST's deconv2, 16 -> 14) is padding 2's output with one pixel cropped on each side.
    """
    p = deconv.padding[0]
    if not UPSAMPLE or deconv.kernel_size != (5, 5) or p not in (2, 3):
        return deconv(up2(x))
    K = deconv.weight.transpose(0, 1).flip(2, 3)                              # (C_out, C_in, 5, 5) as conv
    P = PHASE.to(K)
    K4 = torch.einsum("adu,oiuv,bev->oabide", P, K, P)                        # (C_out, 2, 2, C_in, 3, 3)
    y = F.conv2d(x, K4.reshape(-1, K.shape[1], 3, 3), padding=1)              # (B, 4 C_out, H, W)
    y = F.pixel_shuffle(y, 2)                                                 # (B, C_out, 2H, 2W)
    return y if p == 2 else y[:, :, 1:-1, 1:-1]                               # padding 3: crop to 2H - 2
